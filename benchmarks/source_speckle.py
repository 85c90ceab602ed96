"""How many of the demo source model's samples are speckled, by sampler and step count.

    python benchmarks/source_speckle.py [--n 128] [--runs dpmsolver++:25 ddim:50 ddim:50:150]
                                        [--weights var/ft/fmnist-ddpm-32.safetensors] [--seed 0]
                                        [--autoguidance 1 1.5 2] [--pairs]

Why: about a quarter of builtin:fmnist-ddpm-32's samples were speckled noise under
DPM-Solver++ (its first 3,000-step weights), which inflated every method's proxy metrics in
benchmarks/fewshot.py; this measures a retrain's candidate weights (--weights) and the
model's own sampler (sde-dpmsolver++) the same way. A run is SAMPLER:STEPS, or
ddim:STEPS:CUT, which samples with DDIM but stops at the first timestep below CUT and
returns the model's predicted clean image from there. If more steps give more speckle
and stopping early removes it, the model's noise prediction at small t is what is weak
(an undertrained source), not the sampler. Prints, per run, the share of samples whose
mean absolute Laplacian exceeds 0.5 ("rough"),
the median of that measure, and the share the shipped classifier is less than 60% sure of;
the first row gives the same figures for real images (test split, the seven classes the
model was trained on: textured clothes are rough too). Writes a grid of each run to --out.
Runs sample with the model's autoguidance (pretrain.AUTOGUIDANCE) unless --autoguidance names
the weights to compare (1: unguided); the ddim:STEPS:CUT runs are always unguided.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.domainstudio import fmnist  # noqa: E402
from worker.domainstudio.metric_net import UNSURE_BELOW, classify, load_metric_net  # noqa: E402
from worker.domainstudio.metrics import ProxyMetrics  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402
from worker.domainstudio.pretrain import load_fmnist_ddpm  # noqa: E402
from worker.domainstudio.sampling import sample_with  # noqa: E402

ROUGH = 0.5


def roughness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute 4-neighbour Laplacian per image (x in [-1, 1], [N, 1, H, W])."""
    c = x[:, :, 1:-1, 1:-1]
    lap = 4 * c - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return lap.abs().mean((1, 2, 3))


def sample_sampler(base, n: int, sampler: str, steps: int, seed: int = 0) -> torch.Tensor:
    images = sample_with(base, n, seed=seed, steps=steps, scheduler=sampler, batch_size=64)
    return fmnist.from_pil([g.image for g in images])


@torch.no_grad()
def sample_ddim_cut(base, n: int, steps: int, cut: int, seed: int = 0) -> torch.Tensor:
    """DDIM, but from the first timestep below ``cut`` straight to the predicted clean image."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(base.scheduler.config)
    scheduler.set_timesteps(steps)
    x = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
    abar = scheduler.alphas_cumprod
    for t in scheduler.timesteps:
        eps = base.unet(x, t).sample
        if t < cut:
            return ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def images_of(run: str, base, n: int, seed: int = 0) -> torch.Tensor:
    """"data" (1,000 real test images of the source classes), SAMPLER:STEPS or ddim:STEPS:CUT."""
    if run == "data":
        return fmnist.source_images("t10k")[:1000]
    sampler, steps, *cut = run.split(":")
    if cut:
        return sample_ddim_cut(base, n, int(steps), int(cut[0]), seed)
    return sample_sampler(base, n, sampler, int(steps), seed)


@torch.no_grad()
def hesitations(net, x: torch.Tensor) -> Counter:
    """For the images the classifier is unsure of, how often each pair of its two likeliest
    classes comes up ("shirt/T-shirt"): ambiguous clothes, or something no class fits."""
    probs = torch.cat([net(x[i:i + 500]).softmax(-1) for i in range(0, len(x), 500)])
    top2 = probs.topk(2, dim=-1)
    unsure = top2.values[:, 0] < UNSURE_BELOW
    return Counter("/".join(sorted(fmnist.CLASS_NAMES[c] for c in pair.tolist())) for pair in top2.indices[unsure])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="samples per run")
    p.add_argument("--runs", nargs="+", default=["dpmsolver++:10", "dpmsolver++:25", "dpmsolver++:50", "sde-dpmsolver++:25", "ddim:50",
                                                  "ddim:200", "ddim:50:60", "ddim:50:150", "ddim:50:300"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0,
                   help="image i is drawn from seed SEED + i: a candidate chosen on seed 0 is checked on "
                        "images it was not looked at on with a seed at least --n away (e.g. 100000)")
    p.add_argument("--out", type=Path, default=Path("var/source_speckle"))
    p.add_argument("--weights", type=Path, default=None,
                   help="exported weights to measure instead of the shipped ones (a retrain's candidate)")
    p.add_argument("--autoguidance", type=float, nargs="+", default=None, metavar="W",
                   help="autoguidance weights to sample each run at (1: unguided) [default: the model's own, "
                        "pretrain.AUTOGUIDANCE]; also prints each run's classifier-feature FID to the real images")
    p.add_argument("--pairs", action="store_true",
                   help="also print, per run, which two classes the classifier hesitates between on the unsure images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model("builtin:fmnist-ddpm-32")
    if args.weights:
        base.unet, base.scheduler = load_fmnist_ddpm(args.weights)
    base.unet.eval()
    net = load_metric_net().eval()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.autoguidance or [base.guidance_weight]
    fid = FID(net) if args.autoguidance else None
    print(f"{'run':<22} {'rough':>6} {'median':>7} {'unsure':>7} {'seconds':>7}" + ("     FID" if fid else ""))
    for run, w in [("data", None)] + [(r, w) for r in args.runs for w in weights]:
        started = time.monotonic()
        base.guidance_weight = w or 1.0
        x = images_of(run, base, args.n, args.seed)
        rough = roughness(x)
        unsure = classify(net, x)[1] < UNSURE_BELOW
        name = run if w is None or not args.autoguidance else f"{run}@{w:g}"
        print(f"{name:<22} {(rough > ROUGH).float().mean().item():>6.2f} {rough.median().item():>7.3f} "
              f"{unsure.float().mean().item():>7.3f} {time.monotonic() - started:>7.0f}"
              + (f" {fid(x):>7.2f}" if fid else ""), flush=True)
        if args.pairs:
            print("    unsure between: " + ", ".join(f"{pair} {n}" for pair, n in hesitations(net, x).most_common(6)))
        fmnist.image_grid(x[:64]).save(args.out / f"{name.replace(':', '-')}.png")


class FID:
    """Fréchet distance of the classifier's penultimate features to the real test images of the
    source classes (all 7,000; two halves of them are 8.8 apart at 512 images): it falls when the
    samples get more like the photos, and rises when guidance trades their variety or texture
    for the classifier's certainty, which the unsure share alone would not show."""

    def __init__(self, net):
        self.metrics = ProxyMetrics(net)
        self.real = fmnist.source_images("t10k")

    def __call__(self, x: torch.Tensor) -> float:
        return self.metrics.fid(x, self.real)


if __name__ == "__main__":
    main()
