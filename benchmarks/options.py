"""What each memory and speed option of AdaptConfig costs or saves, measured on this machine.

One DomainStudio LoRA step (the terms on every step) of the core's trainer on a
Stable-Diffusion-shaped model with random weights, per option, interleaved round-robin in
one process (benchmarks/gpu.py's CoreStep); then sampling images/s at fp32 and in half
precision. On a CPU the 'small' shapes (64 px) are the default; on a GPU use --size sd15.

Usage: python benchmarks/options.py [--size tiny|small|sd15] [--device cpu|cuda] [--rounds 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import PeakMemory, timed  # noqa: E402
from benchmarks.gpu import PROMPT, CoreStep, components, core_base, held_bytes, quiet_libraries  # noqa: E402

# option -> the settings that differ from the core's defaults (DomainStudio LoRA, terms on every step)
OPTIONS = {
    "defaults": {},
    "mixed_precision=bf16": {"mixed_precision": "bf16"},
    "attention=classic": {"attention": "classic"},
    "vae_decode_chunk=3": {"vae_decode_chunk": 3},
    "gradient_checkpointing=off": {"gradient_checkpointing": False},
    "gradient_accumulation_steps=2 (batch 1)": {"gradient_accumulation_steps": 2},
    "defaults, again (the noise of this table)": {},
}


def seconds(fn, device: torch.device) -> float:
    """Wall time on a GPU; on the CPU the process's CPU time, which other processes on a
    shared machine disturb far less than the wall clock (run with OMP_NUM_THREADS=1)."""
    if device.type != "cpu":
        return timed(fn, device)
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def build(c, device, pool, name: str):
    from worker.domainstudio.training import set_attention

    settings = dict(mode="lora", ds_max_timestep=1000, **OPTIONS[name])
    parts = copy.deepcopy(c)
    set_attention((parts["unet"], parts["vae"]), settings.get("attention", "sdpa"))  # as adapt() does
    return CoreStep(parts, device, pool, len(pool) // 2, **settings)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("tiny", "small", "sd15"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="photos per step (as many class images)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_libraries()
    device = torch.device(args.device)
    c = components(args.size, device)
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(2 * args.batch, 3, c["resolution"], c["resolution"], generator=g) * 2 - 1
    steps = {name: build(c, device, pool, name) for name in OPTIONS}
    batch_of = {name: 1 if "accumulation" in name else args.batch for name in OPTIONS}
    for name, variant in steps.items():
        variant.step(batch_of[name])
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, variant in steps.items():
            times[name].append(seconds(lambda: variant.step(batch_of[name]), device))
    print(f"DomainStudio LoRA step, '{args.size}' shapes ({c['resolution']} px), batch {args.batch}+{args.batch}, "
          f"{device}, torch threads {torch.get_num_threads()}, median of {args.rounds} interleaved rounds, "
          f"{'seconds of CPU time' if device.type == 'cpu' else 'wall seconds'}")
    print(f"{'option':42s} {'s/step':>8s} {'x time':>7s} {'step peak MiB':>14s} {'held MiB':>9s}")
    base = statistics.median(times["defaults"])
    for name, variant in steps.items():
        with PeakMemory(device) as peak:
            variant.step(batch_of[name])
        t = statistics.median(times[name])
        print(f"{name:42s} {t:8.3f} {t / base:7.2f} {peak.peak_bytes / 2**20:14.1f} {held_bytes(variant) / 2**20:9.1f}")
    del steps
    sampling(c, device, args)
    return 0


def sampling(c, device, args) -> None:
    from worker.domainstudio.sampling import sample_with

    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    bases = {"fp32": core_base(copy.deepcopy(c), "fp32"),
             str(half).replace("torch.", ""): core_base(copy.deepcopy(c), "half").to(device, half)}
    n, steps = 4, 10
    times = {name: [] for name in bases}
    for round_ in range(args.rounds + 1):
        for name, base in bases.items():
            spent = seconds(lambda: sample_with(base, n, prompt=PROMPT, steps=steps, batch_size=n, device=device), device)
            if round_:  # the first round warms up
                times[name].append(spent)
    print(f"sampling, {n} images per call, {steps} steps: " + ", ".join(
        f"{name} {n / statistics.median(t):.2f} images/s" for name, t in times.items()))


if __name__ == "__main__":
    sys.exit(main())
