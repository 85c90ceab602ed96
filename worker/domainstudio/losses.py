"""The DomainStudio losses as pure functions (spec: shared/METHOD.md).

Shapes are [B, C, H, W] unless stated. Every function here is differentiable and free of
model code, so it can be tested on hand-worked 2x2 tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_S = 0.5  # (1/sqrt(2))^2: the product of two 1-D Haar taps
# Cross-correlation filters (torch conv2d), rows = y, columns = x.
_LH = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) * _S
_HL = torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) * _S
_HH = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) * _S
# LH + HL + HH folded into one filter: a 2x2 block [[a, b], [c, d]] maps to (-a-b-c+3d)/2.
_HIGH = _LH + _HL + _HH


def haar_high_frequency(x: torch.Tensor) -> torch.Tensor:
    """High-frequency part of a one-level Haar transform, ``LH(x) + HL(x) + HH(x)``.

    Depthwise 2x2 convolution with stride 2 and no padding, one filter per channel.
    [B, C, H, W] -> [B, C, H/2, W/2]. A constant image maps to 0.
    """
    if x.dim() != 4:
        raise ValueError(f"haar_high_frequency expects [B, C, H, W], got shape {tuple(x.shape)}")
    channels = x.shape[1]
    weight = _HIGH.to(device=x.device, dtype=x.dtype).expand(channels, 1, 2, 2)
    return F.conv2d(x, weight, stride=2, groups=channels)


def _similarity_log_probs(v: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax of the cosine similarities of S vectors to the other S-1.

    v: [S, D] -> [S, S-1]; row i holds j != i in increasing j.
    """
    s = v.shape[0]
    sim = F.cosine_similarity(v.unsqueeze(1), v.unsqueeze(0), dim=-1)  # [S, S]
    off_diagonal = ~torch.eye(s, dtype=torch.bool, device=v.device)
    return F.log_softmax(sim[off_diagonal].view(s, s - 1), dim=1)


def pairwise_similarity_loss(
    adapted: torch.Tensor,
    source: torch.Tensor,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """KL(source || adapted) of the pairwise cosine-similarity distributions.

    For S samples from each model (flattened to vectors), ``p_i = softmax_j(cos(v_i, v_j))``
    over j != i. Returns ``mean over the S*(S-1) entries of p_s * (log p_s - log p_a)``,
    i.e. ``KLDivLoss(reduction="mean")(log p_a, p_s)``. The source side is detached:
    gradients reach the adapted samples only.

    adapted, source: [B, ...] with the same shape. ``num_samples`` picks S of the B at
    random (the same indices on both sides); None uses the whole batch.
    """
    if adapted.shape != source.shape:
        raise ValueError(f"adapted {tuple(adapted.shape)} and source {tuple(source.shape)} differ in shape")
    batch = adapted.shape[0]
    s = batch if num_samples is None else min(int(num_samples), batch)
    if s < 2:
        raise ValueError(
            f"the pairwise similarity loss needs at least 2 samples, got {s} "
            f"(batch of {batch}, num_samples={num_samples})"
        )
    if s < batch:
        idx = torch.randperm(batch, generator=generator, device="cpu")[:s].to(adapted.device)
        adapted, source = adapted[idx], source[idx]
    log_p_a = _similarity_log_probs(adapted.reshape(s, -1).float())
    with torch.no_grad():
        log_p_s = _similarity_log_probs(source.detach().reshape(s, -1).float())
    return (log_p_s.exp() * (log_p_s - log_p_a)).mean()


def high_frequency_mse(pred_x0: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((hf(pred_x0) - hf(x0))^2)``: pulls the adapted model's detail towards the photos.

    ``mask`` [B, 1, H, W] (1 = photo): only Haar blocks wholly on the photo count (a block
    that straddles the photo's edge would pull towards the edge against the padding)."""
    block_mask = None if mask is None else -F.max_pool2d(-mask, 2)
    return masked_mse(haar_high_frequency(pred_x0).float(), haar_high_frequency(x0).float(), block_mask)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the places the mask keeps: ``sum(m * (pred - target)^2) / sum(m)``
    per channel, with ``mask`` [B, 1, H, W] in [0, 1] (0 = padding or transparent: left out,
    fractions weigh edge cells); None = plain MSE. For 2x2 inputs with mask [[1, 0], [0, 0]]
    only the top-left difference counts."""
    if mask is None:
        return F.mse_loss(pred, target)
    weight = mask.to(pred.dtype).expand_as(pred)
    return (weight * (pred - target) ** 2).sum() / weight.sum().clamp_min(1e-8)


def latent_mask(mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A pixel mask [B, 1, H, W] at latent size: each latent cell weighs the share of photo
    pixels it covers (a cell wholly on padding or transparency weighs 0)."""
    if mask is None:
        return None
    return F.adaptive_avg_pool2d(mask, size)


def loss_terms(
    *,
    simple: torch.Tensor,
    img: torch.Tensor | None = None,
    hf: torch.Tensor | None = None,
    hfmse: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    l_img: float = 4.0,
    l_hf: float = 4.0,
    l_hfmse: float = 1.0,
    prior_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The named terms of one step and their weighted total.

    ``total = simple + prior_weight*prior + l_img*img + l_hf*hf + l_hfmse*hfmse``; a term
    that did not apply this step (None) counts as 0 and is reported as 0, so every step
    logs the same six names: simple, img, hf, hfmse, prior, total.
    """
    zero = simple.new_zeros(())
    terms = {
        "simple": simple,
        "img": zero if img is None else img,
        "hf": zero if hf is None else hf,
        "hfmse": zero if hfmse is None else hfmse,
        "prior": zero if prior is None else prior,
    }
    terms["total"] = (
        terms["simple"]
        + prior_weight * terms["prior"]
        + l_img * terms["img"]
        + l_hf * terms["hf"]
        + l_hfmse * terms["hfmse"]
    )
    return terms


def domainstudio_terms(
    adapted_x0: torch.Tensor,
    source_x0: torch.Tensor,
    target_x0: torch.Tensor,
    num_samples: int | None,
    generator: torch.Generator | None = None,
    target_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """L_img, L_hf and L_hfmse on predicted clean images of the samples the terms apply to.

    adapted_x0/source_x0: predictions of the adapted and the source model for the same
    noisy inputs (or, unpaired, for the class batch); target_x0: the photos themselves, and
    target_mask where they are padded or transparent (left out of L_hfmse). The pairwise terms need 2 samples: with fewer they are None (not a silent 0: the
    caller reports them as not applied).
    """
    hfmse = high_frequency_mse(adapted_x0, target_x0, target_mask)
    n = min(adapted_x0.shape[0], source_x0.shape[0])
    if n < 2:
        return {"img": None, "hf": None, "hfmse": hfmse}
    s = n if num_samples is None else min(num_samples, n)
    # Same random subset for both pairwise terms, so they describe the same samples.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()) if generator is not None else None
    img = pairwise_similarity_loss(adapted_x0[:n], source_x0[:n], s, _gen(seed))
    hf = pairwise_similarity_loss(
        haar_high_frequency(adapted_x0[:n]), haar_high_frequency(source_x0[:n]), s, _gen(seed)
    )
    return {"img": img, "hf": hf, "hfmse": hfmse}


def _gen(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator().manual_seed(seed)
