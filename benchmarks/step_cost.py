"""Cost of one text-to-image training step: plain DreamBooth, official-style DomainStudio, ours.

All three run on the same Stable-Diffusion-shaped model (random weights), machine and
process, with the same cached photo latents and prompt embeddings, so the ratios show
what the DomainStudio terms add:

  (a) DreamBooth with prior preservation: one UNet forward over [instance; class].
  (b) official style: the UNet a second time for the DomainStudio terms, and every
      prediction (instance and class) VAE-decoded at full size with gradients, every step.
  (c) ours (the core's TextToImageTrainer): one UNet forward over [instance; class] with
      t per sample, plus S noisy photo latents of the DomainStudio terms' own (the adapted
      UNet with a graph, the source side without), decoding only those S, with gradient
      checkpointing of the VAE decoder. The terms run on every step.
UNet gradient checkpointing (--unet-checkpointing) is a memory/time trade that plain
DreamBooth has too: (a) and (c) use the same setting; (b) runs without, as the official code.

Usage: python benchmarks/step_cost.py [--size small|tiny|sd15] [--device cpu|cuda] [--rounds 5]
Prints step time and peak memory of (b) and (c) as ratios to (a).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import PeakMemory, interleave  # noqa: E402
from worker.domainstudio.conditioning import Conditioning  # noqa: E402
from worker.domainstudio.config import AdaptConfig  # noqa: E402
from worker.domainstudio.diffusion import predicted_clean, training_target  # noqa: E402
from worker.domainstudio.losses import domainstudio_terms  # noqa: E402
from worker.domainstudio.models import BaseModel  # noqa: E402
from worker.domainstudio.text_to_image import TextToImageTrainer  # noqa: E402
from worker.domainstudio.tiny import sd_components  # noqa: E402
from worker.domainstudio.training import autocast, autocast_dtype  # noqa: E402


def build(size: str, device: torch.device, batch: int, ds_max_timestep: int, l_weights: float, mode: str):
    c = sd_components(size)
    base = BaseModel(f"random:{size}", "text-to-image", c["unet"], c["scheduler"], c["resolution"], 3,
                     vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"])
    cfg = AdaptConfig(base_model="bench", mode=mode, ds_max_timestep=ds_max_timestep,
                      l_img=l_weights, l_hf=l_weights, l_hfmse=l_weights and 0.1,
                      mixed_precision="auto").resolved("text-to-image", batch, c["resolution"])
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, c["resolution"], c["resolution"], generator=g) * 2 - 1
    class_pixels = torch.rand(batch, 3, c["resolution"], c["resolution"], generator=g) * 2 - 1
    amp = autocast_dtype("auto", device)
    return TextToImageTrainer(base, cfg, device, pixels, class_pixels, amp), amp


def step_fn(trainer, index, lossfn):
    params = [p for _, p in trainer.named_params]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    generator = torch.Generator().manual_seed(1)

    def step():
        terms = lossfn(trainer, index, generator)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
    return step


def ours(trainer, index, generator):
    return trainer.losses(index, generator)


def official_style(trainer, index, generator):
    """Two UNet passes; decode every instance and class prediction with gradients."""
    b, dev = len(index), trainer.device
    lat = torch.cat([trainer._latents(trainer.instance_latents, index, generator),
                     trainer._latents(trainer.class_latents, index, generator)])
    noise = torch.randn(lat.shape, generator=generator).to(dev)
    t = torch.randint(0, 1000, (1,), generator=generator).to(dev).expand(2 * b)
    x_t = trainer.scheduler.add_noise(lat, noise, t)
    cond = Conditioning.cat([trainer.instance_cond.repeat(b), trainer.class_cond.repeat(b)]).unet_kwargs()
    with autocast(dev, trainer.amp_dtype):
        pred = trainer.unet(x_t, t, **cond).sample.float()  # DreamBooth pass
        pred2 = trainer.unet(x_t, t, **cond).sample.float()  # DomainStudio pass
    target = training_target(trainer.scheduler, lat, noise, t).float()
    loss = F.mse_loss(pred[:b], target[:b]) + F.mse_loss(pred[b:], target[b:])
    abar = trainer.alphas_cumprod[t]
    x0 = predicted_clean(pred2, x_t, abar, trainer.prediction_type)
    with autocast(dev, trainer.amp_dtype):
        decoded = trainer.vae.decode(x0 / trainer.scaling).sample.float()
    ds = domainstudio_terms(decoded[:b], decoded[b:], trainer.pixels[index], 3, generator)
    total = loss + 100 * ds["img"] + 100 * ds["hf"] + 0.1 * ds["hfmse"]
    return {"total": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("tiny", "small", "sd15"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="instance images per step (as many class images)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", default="full", choices=("full", "lora"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0 = torch's default)")
    parser.add_argument("--unet-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="UNet gradient checkpointing in (a) and (c) [default: off]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    index = torch.arange(args.batch)
    plain, _ = build(args.size, device, args.batch, 1000, 0.0, args.mode)
    official, _ = build(args.size, device, args.batch, 1000, 100.0, args.mode)
    official.unet.disable_gradient_checkpointing()
    ours_active, _ = build(args.size, device, args.batch, 1000, 100.0, args.mode)
    if not args.unet_checkpointing:
        plain.unet.disable_gradient_checkpointing()
        ours_active.unet.disable_gradient_checkpointing()
    variants = {
        "a: DreamBooth + prior": step_fn(plain, index, ours),
        "b: official-style DomainStudio": step_fn(official, index, official_style),
        "c: ours, terms active": step_fn(ours_active, index, ours),
    }
    for fn in variants.values():  # warm-up: allocator, kernels, optimizer state
        fn()
    times = interleave(variants, args.rounds, device)
    memory = {}
    for name, fn in variants.items():
        with PeakMemory(device) as peak:
            fn()
        memory[name] = peak.peak_bytes
    report(args, device, times, memory)
    return 0


def report(args, device, times, memory) -> None:
    base_t, base_m = times["a: DreamBooth + prior"], memory["a: DreamBooth + prior"]
    print(f"step cost, SD-shaped '{args.size}' model, {args.mode} UNet, batch {args.batch}+{args.batch}, "
          f"{device}, torch threads {torch.get_num_threads()}, median of {args.rounds} rounds")
    print(f"{'variant':34s} {'step s':>9s} {'x time':>7s} {'peak MiB':>9s} {'x memory':>9s}")
    for name in times:
        print(f"{name:34s} {times[name]:9.3f} {times[name] / base_t:7.2f} {memory[name] / 2**20:9.1f} "
              f"{memory[name] / max(base_m, 1):9.2f}")
    print(f"ratios to (a): official-style time x{times['b: official-style DomainStudio'] / base_t:.2f} "
          f"memory x{memory['b: official-style DomainStudio'] / max(base_m, 1):.2f}; "
          f"ours time x{times['c: ours, terms active'] / base_t:.2f} "
          f"memory x{memory['c: ours, terms active'] / max(base_m, 1):.2f}")


if __name__ == "__main__":
    sys.exit(main())
