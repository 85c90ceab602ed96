"""What a turn given up costs (worker/turns.py): the same run straight, and in turns.

    python benchmarks/run_turns.py [--steps 60] [--turns 3] [--base-model builtin:fmnist-sd-32]

The demo model's Quick run (its stored settings as the web app builds them, steps lowered)
through the core, in this process, twice:

* **straight**: one ``adapt()`` call, as a run that keeps its worker;
* **in turns**: stopped ``--turns`` times at evenly spaced steps the way a run gives up its
  turn (an exception from should_stop: the core saves the training state), each turn a
  fresh ``adapt()`` call that loads the base model, the photos and the state again, as the
  next delivery on the same worker does.

The difference of the two wall times divided by the turns is the overhead of one turn:
state save, reload and model set-up. Copying the state to and from object storage comes on
top; the state's size is printed (the object store moves it once each way per turn). Also
checks that both end with the same weights (a turn changes nothing in what is learned).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks.worker_step import photo_files  # noqa: E402


class GiveUpTurn(Exception):
    """Stands for worker.turns.TurnOver (the core sees any exception from should_stop alike)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps of the run")
    p.add_argument("--turns", type=int, default=3, help="turns given up on the way")
    p.add_argument("--photos", type=int, default=10)
    p.add_argument("--base-model", default="builtin:fmnist-sd-32")
    return p.parse_args(argv)


def write_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for name, data in photo_files(n, 256):
        (folder / name).write_bytes(data)
    return folder


def run_settings(base_model: str, steps: int) -> dict:
    from app.presets import build_settings

    return {**build_settings("quick", base_model, "sneaker", {"steps": steps}, "cpu"),
            "preview_every": 0, "checkpoint_every": steps}


def same_start() -> None:
    """Both runs start from the same global RNG state (parts of the core draw from it)."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def straight(config, photos: Path, out: Path) -> float:
    from worker.domainstudio import adapt

    same_start()
    started = time.monotonic()
    adapt(config, photos, out)
    return time.monotonic() - started


def in_turns(config, photos: Path, out: Path, turns: int) -> float:
    """Stops at steps/(turns+1), 2*steps/(turns+1), ...; each turn a new adapt() call."""
    from worker.domainstudio import adapt

    stops = [config.steps * (n + 1) // (turns + 1) for n in range(turns)]
    done = []
    same_start()
    started = time.monotonic()
    for stop in stops + [None]:
        def should_stop(stop=stop) -> bool:
            if stop is not None and done and done[-1] >= stop:
                raise GiveUpTurn()
            return False
        try:
            adapt(config, photos, out, progress=lambda e: done.append(e.step) if e.stage == "training" else None,
                  should_stop=should_stop)
        except GiveUpTurn:
            pass
    return time.monotonic() - started


def unet_state(out: Path):
    import torch
    from safetensors.torch import load_file

    files = sorted(out.rglob("*.safetensors"))
    return {f"{f.relative_to(out)}:{k}": v for f in files for k, v in load_file(f).items()}, torch


def main(argv=None) -> int:
    args = parse_args(argv)
    from worker.domainstudio import AdaptConfig
    from worker.domainstudio.training import STATE_FILE

    config = AdaptConfig.from_dict(run_settings(args.base_model, args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = write_photos(tmp / "photos", args.photos)
        straight(AdaptConfig.from_dict({**config.to_dict(), "steps": 2}), photos, tmp / "warm")  # imports, caches
        t_straight = straight(config, photos, tmp / "straight")
        t_turns = in_turns(config, photos, tmp / "turns", args.turns)
        state_mb = (tmp / "turns" / STATE_FILE).stat().st_size / 1e6
        (a, torch), (b, _) = unet_state(tmp / "straight"), unet_state(tmp / "turns")
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    per_turn = (t_turns - t_straight) / args.turns
    print(f"{args.base_model}, Quick settings, {args.steps} steps: "
          f"straight {t_straight:.1f} s, with {args.turns} turns given up {t_turns:.1f} s: "
          f"{per_turn:.2f} s per turn ({per_turn / (t_straight / args.steps):.1f} steps' time); "
          f"training state {state_mb:.1f} MB; same weights: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
