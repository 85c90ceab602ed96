"""Gradient norm of each loss term against the timestep, on the demo model.

    python benchmarks/term_gradients.py [--shots-class 7] [--samples 4] [--repeats 3]

Why: x0_hat divides by sqrt(abar_t), so terms on predicted clean images can swamp
L_simple at large t. This measures, for S noisy sneakers sharing one t, the norm of the
gradient of L_simple, L_img, L_hf and L_hfmse with respect to the UNet's weights, after a
few plain fine-tuning steps (so that the adapted model and the frozen source differ). It
printed the figures behind the core's per-term timestep gates (README, "Where we differ").
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.domainstudio import fmnist  # noqa: E402
from worker.domainstudio.diffusion import predicted_clean  # noqa: E402
from worker.domainstudio.losses import domainstudio_terms  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402

TIMESTEPS = (10, 50, 100, 200, 300, 400, 600, 800, 950)


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


def warm_up(unet, scheduler, shots: torch.Tensor, steps: int, generator: torch.Generator) -> None:
    """A few plain fine-tuning steps, so the adapted model differs from the source."""
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    for _ in range(steps):
        t = torch.randint(0, 1000, (len(shots),), generator=generator)
        noise = torch.randn(shots.shape, generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(shots, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()


def term_norms(unet, source, scheduler, shots, t_value: int, s: int, generator) -> dict[str, float]:
    params = [p for p in unet.parameters() if p.requires_grad]
    x0 = shots[torch.randperm(len(shots), generator=generator)[:s]]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.full((s,), t_value)
    x_t = scheduler.add_noise(x0, noise, t)
    pred = unet(x_t, t).sample
    with torch.no_grad():
        pred_source = source(x_t, t).sample
    abar = scheduler.alphas_cumprod[t]
    adapted = predicted_clean(pred, x_t, abar, "epsilon")
    original = predicted_clean(pred_source, x_t, abar, "epsilon")
    terms = domainstudio_terms(adapted, original, x0, s, generator)
    norms = {"simple": grad_norm(F.mse_loss(pred, noise), params)}
    norms.update({k: grad_norm(terms[k], params) for k in ("img", "hf", "hfmse")})
    return norms


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots-class", type=int, default=7)
    p.add_argument("--samples", type=int, default=4, help="S noisy photos sharing one t")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warm-up", type=int, default=30, help="plain steps before measuring")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base = load_base_model("builtin:fmnist-ddpm-32")
    unet = base.unet.float().train()
    source = copy.deepcopy(unet).eval().requires_grad_(False)
    shots, _ = fmnist.draw_shots(args.shots_class, 10, 0)
    g = torch.Generator().manual_seed(0)
    warm_up(unet, base.scheduler, shots, args.warm_up, g)
    print(f"{'t':>4}  " + "  ".join(f"{k:>9}" for k in ("simple", "img", "hf", "hfmse")) + "   (gradient norms, mean of repeats)")
    for t_value in TIMESTEPS:
        rows = [term_norms(unet, source, base.scheduler, shots, t_value, args.samples, g) for _ in range(args.repeats)]
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(f"{t_value:>4}  " + "  ".join(f"{mean[k]:9.4g}" for k in ("simple", "img", "hf", "hfmse")), flush=True)


if __name__ == "__main__":
    main()
