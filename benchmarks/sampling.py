"""Our sampler against a plain diffusers pipeline call, same model, steps and batch size.

Ours draws each image from its own seeded generator (so an image does not depend on its
batch) and returns PIL images with metadata; the baseline is DDPMPipeline (unconditional)
or StableDiffusionPipeline (text-to-image) with the same DPM-Solver++ scheduler, called
with one generator. Run in one process, interleaved; prints time ratios ours / diffusers.

Usage: python benchmarks/sampling.py [--model builtin:tiny-ddpm] [--n 16] [--batch 8] [--steps 25]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import interleave  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402
from worker.domainstudio.sampling import make_scheduler, sample_with  # noqa: E402


def plain_pipeline(base, n, batch, steps, prompt, device):
    pipe = base.pipeline()
    pipe.scheduler = make_scheduler("dpmsolver++", base.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        for first in range(0, n, batch):
            size = min(batch, n - first)
            generator = torch.Generator(device=device).manual_seed(first)
            if base.is_text_to_image:
                pipe([prompt] * size, num_inference_steps=steps, generator=generator, output_type="pil",
                     height=base.resolution, width=base.resolution)
            else:
                pipe(batch_size=size, num_inference_steps=steps, generator=generator, output_type="pil")
    return run


def ours(base, n, batch, steps, prompt, device):
    def run():
        sample_with(base, n, prompt=prompt, seed=0, steps=steps, batch_size=batch, device=device)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-ddpm")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = load_base_model(args.model, device)
    base.unet.eval()
    prompt = "a photo of a bottle" if base.is_text_to_image else None
    variants = {
        "diffusers pipeline": plain_pipeline(base, args.n, args.batch, args.steps, prompt, device),
        "ours": ours(base, args.n, args.batch, args.steps, prompt, device),
    }
    with torch.no_grad():
        for fn in variants.values():
            fn()
        times = interleave(variants, args.rounds, device)
    print(f"sampling {args.n} images from {args.model}, batch {args.batch}, {args.steps} DPM-Solver++ steps, "
          f"{device}, torch threads {torch.get_num_threads()}, median of {args.rounds} rounds")
    for name, seconds in times.items():
        print(f"{name:20s} {seconds:8.3f} s  {seconds / args.n * 1000:8.1f} ms/image")
    print(f"ratio ours / diffusers: {times['ours'] / times['diffusers pipeline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
