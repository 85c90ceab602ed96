"""Peak memory of one training step of a demo model on the CPU, against the web app's estimate.

    python benchmarks/step_memory.py [--model builtin:fmnist-ddpm-32] [--configs 2/4/32 2/4/64 ...]

Why: the web app refuses, at creation, a run whose training step would not fit in a
worker (``app/runlimits.py``: an estimate from the settings and the model's size, without
torch). Its constants were fitted on the demo model's measured peaks; this measures them
again, so that a retrained or resized demo model re-checks the fit
(``tests/security/test_abuse.py::test_the_memory_estimate_matches_the_demo_model_measurements``
holds the figures).

Each configuration BATCH/S/PIXELS (photos per step, similarity samples, training
resolution) runs in a fresh Python process: the core's ``adapt()``, full mode, one step, on
ten Fashion-MNIST sneakers, no previews or checkpoints; the process's peak resident set
(``VmHWM``, imports and model included, as the estimate counts them) is its figure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DEFAULT_CONFIGS = ("2/4/32", "2/4/64", "2/4/128", "8/4/64", "10/4/64", "2/16/64")


def _config(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 3 or not all(v.isdigit() and int(v) > 0 for v in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: write BATCH/S/PIXELS, e.g. 2/4/64")
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:fmnist-ddpm-32",
                   help="a builtin spec or a local model folder whose size the web app can read")
    p.add_argument("--configs", nargs="+", type=_config, default=list(DEFAULT_CONFIGS), help="BATCH/S/PIXELS each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process's configuration
    p.add_argument("--photos", type=Path, default=None, help=argparse.SUPPRESS)  # and its photos
    return p.parse_args(argv)


def write_photos(folder: Path) -> None:
    """Ten sneakers as PNG files: the child reads these, not the whole dataset (which would
    add its own ~50 MB to the peak, which a worker does not hold)."""
    from PIL import Image

    from worker.domainstudio import fmnist

    shots, _ = fmnist.draw_shots(7, 10, 0)
    for i, x in enumerate(fmnist.to_uint8(shots)):
        Image.fromarray(x).save(folder / f"sneaker-{i}.png")


def one_step(model: str, config: str, photos_dir: Path, threads: int) -> int:
    """Run one training step in this process; its peak RSS in MB."""
    import torch
    from PIL import Image

    from worker.domainstudio.adapt import adapt
    from worker.domainstudio.config import AdaptConfig

    torch.set_num_threads(threads)
    batch, samples, pixels = (int(v) for v in config.split("/"))
    photos = [Image.open(path).convert("L") for path in sorted(photos_dir.glob("*.png"))]
    settings = AdaptConfig(base_model=model, mode="full", steps=1, batch_size=batch, num_similarity_samples=samples,
                           resolution=pixels, preview_every=0, checkpoint_every=1000, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        adapt(settings, photos, Path(out) / "run")
    return peak_rss_mb()


def peak_rss_mb() -> int:
    """This process's resident-set high-water mark. Not ru_maxrss: Linux carries that over
    from the parent's memory at the exec, so a large parent (a test run) would read as ours."""
    from benchmarks._measure import _rss_kib

    return _rss_kib("VmHWM") // 1024


def measure(model: str, config: str, photos_dir: Path, threads: int) -> int:
    child = subprocess.run([sys.executable, __file__, "--model", model, "--threads", str(threads), "--one", config,
                            "--photos", str(photos_dir)], check=True, capture_output=True, text=True)
    return json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps({"peak_mb": one_step(args.model, args.one, args.photos, args.threads)}))
        return
    from app.runlimits import estimate_mb, model_facts

    facts = model_facts(args.model)
    if facts is None:
        sys.exit(f"--model {args.model}: the web app cannot size this model from its files "
                 "(a builtin spec or a local diffusers folder with safetensors weights is needed)")
    print(f"{args.model}: {facts.unet_params:,} UNet parameters")
    print(f"{'batch/S/px':>12} {'measured MB':>12} {'estimated MB':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="step-memory-") as photos_dir:
        write_photos(Path(photos_dir))
        for config in args.configs:
            batch, samples, pixels = (int(v) for v in config.split("/"))
            measured = measure(args.model, config, Path(photos_dir), args.threads)
            estimated = estimate_mb(facts, {"mode": "full", "batch_size": batch, "num_similarity_samples": samples,
                                            "resolution": pixels})
            print(f"{config:>12} {measured:>12,} {estimated:>13,.0f} {estimated / measured:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
