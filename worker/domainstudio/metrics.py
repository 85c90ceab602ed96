"""Fidelity and diversity metrics: proxy versions on the Fashion-MNIST classifier, real ones on
local ImageNet weights.

Proxy metrics (every name and printed label says "proxy"): the paper's formulas with the
shipped ``MetricNet`` in place of Inception / AlexNet. Their numbers compare methods on this
data set; they are not comparable with published FID or LPIPS values.

* proxy-FID / proxy-KID: Frechet distance / kernel inception distance of penultimate features.
* proxy LPIPS: per layer, unit-normalise each pixel's channel vector, take squared
  differences summed over channels, average over pixels; sum over the three conv stages
  (LPIPS with all linear weights equal to one).
* proxy Intra-LPIPS: the paper's diversity measure (from Ojha et al., CDC): assign each
  sample to the nearest training shot, average the pairwise distance inside each cluster,
  average over clusters.

The real metrics (FID on pytorch-fid's Inception, LPIPS on AlexNet with the ``lpips``
package's linear layers) live in ``real_metrics`` and need weight files on disk.
"""

from __future__ import annotations

import numpy as np
import torch

from .metric_net import LPIPS_LAYERS, MetricNet, load_metric_net

_EPS = 1e-10


# ---------------------------------------------------------------- distribution distances

def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) equals the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2), which avoids a non-symmetric matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors as [N, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def fid_from_features(f1, f2) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def kid_from_features(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (Binkowski et al.): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3,
    averaged over random subsets as in torch-fidelity and clean-fid. Returns (mean, std)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(len(f1), len(f2), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng, d = np.random.default_rng(seed), f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- proxy LPIPS

def lpips_distance_matrix(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor],
                          channel_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """[Na, Nb] LPIPS-style distances from per-layer features [N, C, H, W] of two image sets.

    Per layer: unit-normalise over channels, then sum_c w_c (a - b)^2 averaged over pixels
    (w_c = 1 for the proxy; LPIPS's learned non-negative 1x1 weights for the real one). With
    a' = sqrt(w) a this is (|a'|^2 + |b'|^2 - 2 a'.b') / (H W) on flattened maps, one matrix
    product per layer; float64 keeps identical images at 0 to ~1e-12. Summed over layers.
    """
    total = None
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b, strict=True)):
        hw = fa.shape[2] * fa.shape[3]
        a, b = _unit_channels(fa).double(), _unit_channels(fb).double()
        if channel_weights is not None:
            w = channel_weights[i].double().clamp_min(0).sqrt().view(1, -1, 1, 1)
            a, b = a * w, b * w
        a, b = a.flatten(1), b.flatten(1)
        d = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T) / hw
        total = d if total is None else total + d
    return total.clamp_min(0)


def _unit_channels(f: torch.Tensor) -> torch.Tensor:
    """LPIPS's normalize_tensor: each pixel's channel vector divided by its norm."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + _EPS)


def intra_cluster_distance(dist_to_shots: torch.Tensor, pairwise: torch.Tensor) -> dict:
    """The Intra-LPIPS recipe on precomputed distances.

    ``dist_to_shots`` [N, K]: sample-to-shot distances; each sample joins its nearest shot.
    ``pairwise`` [N, N]: sample-to-sample distances. Each cluster scores the mean over its
    pairs i < j; the result is the mean over all K clusters. A cluster with fewer than two
    members has no pairs: it scores 0 (no diversity around that shot; the original code
    would give NaN) and is counted in ``sparse_clusters``.
    """
    assign = dist_to_shots.argmin(1)
    scores, sizes = [], []
    for k in range(dist_to_shots.shape[1]):
        members = torch.nonzero(assign == k).flatten()
        sizes.append(len(members))
        if len(members) < 2:
            scores.append(0.0)
            continue
        sub = pairwise[members][:, members]
        iu = torch.triu_indices(len(members), len(members), offset=1)
        scores.append(sub[iu[0], iu[1]].mean().item())
    return {"intra_lpips": float(np.mean(scores)), "cluster_scores": scores,
            "cluster_sizes": sizes, "sparse_clusters": sum(s < 2 for s in sizes)}


# ---------------------------------------------------------------- the proxy metric set

class ProxyMetrics:
    """Proxy-FID, proxy-KID and proxy Intra-LPIPS on the shipped Fashion-MNIST classifier.

    Images are tensors [N, 1, 32, 32] in [-1, 1] (the diffusion model's own range).
    """

    def __init__(self, net: MetricNet | None = None, batch_size: int = 500):
        self.net = net or load_metric_net()
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Penultimate features [N, 128] and the LPIPS layers, computed in batches."""
        out: dict[str, list] = {k: [] for k in ("penultimate", *LPIPS_LAYERS)}
        for i in range(0, len(images), self.batch_size):
            f = self.net.forward_all(images[i:i + self.batch_size].float())
            for k in out:
                out[k].append(f[k])
        return {k: torch.cat(v) for k, v in out.items()}

    def fid(self, images, reference) -> float:
        return fid_from_features(self.features(images)["penultimate"], self.features(reference)["penultimate"])

    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.features(a), self.features(b)
        return lpips_distance_matrix([fa[k] for k in LPIPS_LAYERS], [fb[k] for k in LPIPS_LAYERS])

    def intra_lpips(self, samples: torch.Tensor, shots: torch.Tensor) -> dict:
        fs, ft = self.features(samples), self.features(shots)
        layers = lambda f: [f[k] for k in LPIPS_LAYERS]  # noqa: E731
        return intra_cluster_distance(lpips_distance_matrix(layers(fs), layers(ft)),
                                      lpips_distance_matrix(layers(fs), layers(fs)))

    def evaluate(self, samples: torch.Tensor, reference: torch.Tensor, shots: torch.Tensor,
                 reference_features: torch.Tensor | None = None) -> dict:
        """All proxy figures for one sample set; pass ``reference_features`` to reuse them."""
        pen = self.features(samples)["penultimate"]
        ref = reference_features if reference_features is not None else self.features(reference)["penultimate"]
        kid, kid_std = kid_from_features(pen, ref)
        intra = self.intra_lpips(samples, shots)
        return {"proxy_fid": fid_from_features(pen, ref), "proxy_kid": kid, "proxy_kid_std": kid_std,
                "proxy_intra_lpips": intra["intra_lpips"],
                "proxy_cluster_sizes": intra["cluster_sizes"],
                "proxy_sparse_clusters": intra["sparse_clusters"]}
