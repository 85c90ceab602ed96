"""Gradient norm of each text-to-image loss term against the timestep, on the demo model.

    python benchmarks/term_gradients_t2i.py [--warm-up 100] [--repeats 3] [--source unpaired]

Why: the DomainStudio terms act on VAE-decoded one-step predictions x0_hat, and their
weights (official: 100 / 100 / 0.1) were set for Stable Diffusion at 512 px. What a weight
means depends on how large a term's gradient is beside the DreamBooth loss's. This builds
the core's TextToImageTrainer (LoRA) on 10 sneakers for ``builtin:fmnist-sd-32``, trains
it a little with the DreamBooth loss (so the adapted side and the source side differ), then
measures, for S noisy photos sharing one t, the norm of the gradient of L_simple (DreamBooth,
same t), L_img, L_hf and L_hfmse with respect to the trainable weights, unweighted, and the
ratio of each to L_simple's. The weights of the core's text-to-image defaults come from it
(benchmarks/results/fewshot-t2i-tuning.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker.domainstudio import AdaptConfig, fmnist  # noqa: E402
from worker.domainstudio.data import load_photos  # noqa: E402
from worker.domainstudio.losses import masked_mse  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402
from worker.domainstudio.diffusion import training_target  # noqa: E402
from worker.domainstudio.text_to_image import TextToImageTrainer  # noqa: E402

TIMESTEPS = (10, 100, 200, 300, 500, 700, 900, 990)
TERMS = ("simple", "img", "hf", "hfmse")


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


def build_trainer(args) -> TextToImageTrainer:
    base = load_base_model("builtin:fmnist-sd-32")
    shots, _ = fmnist.draw_shots(7, 10, args.seed)
    photos = load_photos([_pil(a) for a in fmnist.to_uint8(shots)], base.resolution, base.channels)
    cfg = AdaptConfig(base_model=base.spec, class_word="shoe", class_prompt="a photo of a {class}", mode="lora",
                      source=args.source, num_similarity_samples=args.samples, ds_max_timestep=1000,
                      pairwise_max_timestep=1000, gradient_checkpointing=False, device="cpu")
    cfg = cfg.resolved(base.kind, len(photos.names), base.resolution)
    # the source side's class images: the base model's own "a photo of a shoe" samples
    from worker.domainstudio.sampling import sample_with

    class_pixels = torch.stack([_tensor(g.image) for g in sample_with(base, 16, prompt="a photo of a shoe", seed=1,
                                                                        resolution=32, device="cpu")])
    return TextToImageTrainer(base, cfg, torch.device("cpu"), photos.pixels, class_pixels, None)


def warm_up(trainer: TextToImageTrainer, steps: int, lr: float, generator: torch.Generator) -> None:
    """DreamBooth steps only, so the adapted LoRA differs from the source."""
    params = [p for _, p in trainer.named_params]
    opt = torch.optim.AdamW(params, lr)
    for _ in range(steps):
        index = torch.randint(0, len(trainer.instance_latents), (4,), generator=generator)
        loss = trainer.losses(index, generator)
        (loss["simple"] + loss["prior"]).backward()
        opt.step()
        opt.zero_grad()


def simple_at(trainer: TextToImageTrainer, t: int, s: int, generator: torch.Generator) -> torch.Tensor:
    """The DreamBooth loss on S photos, every one at t."""
    index = torch.randint(0, len(trainer.instance_latents), (s,), generator=generator)
    latents = trainer._latents(trainer.instance_latents, index, generator)
    noise = torch.randn(latents.shape, generator=generator)
    steps = torch.full((s,), t, dtype=torch.long)
    x_t = trainer.scheduler.add_noise(latents, noise, steps)
    cond = trainer.instance_cond.rows(trainer._prompt_rows(index, generator))
    pred = trainer.unet(x_t, steps, **cond.unet_kwargs()).sample
    return masked_mse(pred, training_target(trainer.scheduler, latents, noise, steps), None)


def measure(trainer: TextToImageTrainer, args, generator: torch.Generator) -> dict[int, dict[str, float]]:
    params = [p for _, p in trainer.named_params]
    table = {}
    for t in TIMESTEPS:
        sums = dict.fromkeys(TERMS, 0.0)
        for _ in range(args.repeats):
            terms = trainer._domainstudio(generator, timestep=t)
            terms["simple"] = simple_at(trainer, t, args.samples, generator)
            for name in TERMS:
                sums[name] += grad_norm(terms[name], params) / args.repeats
        table[t] = sums
        print(f"t={t}: " + "  ".join(f"{n} {sums[n]:.3g}" for n in TERMS), flush=True)
    return table


def report(table: dict[int, dict[str, float]], args) -> str:
    lines = [f"Gradient norms on the LoRA weights, source {args.source}, S={args.samples}, mean of {args.repeats} "
             f"(after {args.warm_up} DreamBooth steps at lr {args.lr}); ratio = term / L_simple, unweighted", "",
             "| t | L_simple | L_img | L_hf | L_hfmse | img/simple | hf/simple | hfmse/simple |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, g in table.items():
        lines.append(f"| {t} | {g['simple']:.3g} | {g['img']:.3g} | {g['hf']:.3g} | {g['hfmse']:.3g} "
                     f"| {g['img'] / g['simple']:.3g} | {g['hf'] / g['simple']:.3g} | {g['hfmse'] / g['simple']:.3g} |")
    return "\n".join(lines)


def _pil(array):
    from PIL import Image

    return Image.fromarray(array).convert("RGB")


def _tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=3, help="S, the similarity samples")
    p.add_argument("--source", choices=("unpaired", "paired"), default="unpaired")
    p.add_argument("--warm-up", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    trainer = build_trainer(args)
    warm_up(trainer, args.warm_up, args.lr, generator)
    print(report(measure(trainer, args, generator), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
