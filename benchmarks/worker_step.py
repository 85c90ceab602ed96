"""Per-step time of a run in the app's worker against the core alone, in one script.

    python benchmarks/worker_step.py [--steps 40] [--photos 10] [--threads 0]
    python benchmarks/worker_step.py --steps 300 --gallery 64   # a whole Quick run, end to end

The same run twice, interleaved (core, worker, core):

* **core**: ``adapt()`` called in this process with the run's stored settings, no progress
  reporting, no previews, no checkpoints (as ``benchmarks/fewshot.py`` calls it);
* **worker**: the embedded default's real path: a SQLite database, the local-folder object
  store and a Celery worker process started exactly as ``scripts/run`` starts it, a run
  created through the web app's service with the Quick preset (steps lowered), its photo
  set uploaded through the upload service.

Seconds per step come from the same clock for both (the core's elapsed time at each
progress event, the worker's from the run's loss-history points), over the training steps
only, so loading the model and the photos does not count. Prints both and their ratio, and
the worker run's whole time as its report counts it (queue, photos, training, saving, the
gallery's wait and the gallery of ``--gallery`` images).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="training steps of each run")
    p.add_argument("--photos", type=int, default=10, help="photos in the set (Fashion-MNIST sneakers)")
    p.add_argument("--photo-size", type=int, default=256, help="pixel size of the uploaded photos")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of both runs (DOMAINSTUDIO_TORCH_THREADS; 0: the setting's default)")
    p.add_argument("--gallery", type=int, default=1, help="images in the worker run's gallery (64: the app's default)")
    p.add_argument("--base-model", default="", help="default: the first of DOMAINSTUDIO_BASE_MODELS (the demo model)")
    p.add_argument("--timeout", type=float, default=1800, help="give up on the worker run after this many seconds")
    return p.parse_args(argv)


def photo_files(n: int, size: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    from worker.domainstudio import fmnist

    shots, indices = fmnist.draw_shots(7, n, 0)
    files = []
    for array, index in zip(fmnist.to_uint8(shots), indices):
        buf = io.BytesIO()
        Image.fromarray(array, mode="L").resize((size, size), Image.LANCZOS).convert("RGB").save(buf, "PNG")
        files.append((f"sneaker-{index}.png", buf.getvalue()))
    return files


def seconds_per_step(points: list[tuple[int, float]]) -> float:
    """(step, elapsed seconds) pairs -> seconds per step between the first and the last."""
    points = sorted(points)
    (s0, t0), (s1, t1) = points[0], points[-1]
    if s1 <= s0:
        raise RuntimeError(f"too few progress points to time: {points}")
    return (t1 - t0) / (s1 - s0)


def make_run(settings, steps: int, photos: list[tuple[str, bytes]], gallery: int = 1):
    """A team, a photo set with the photos and a queued Quick run, through the services."""
    from app.db import make_engine, make_sessionmaker
    from app.jobs import JobQueue
    from app.migrate import upgrade
    from app.services.auth import sign_up
    from app.services.photosets import add_photos, create_photo_set
    from app.services.runs import start_run
    from app.storage import make_storage
    from worker.celery_app import make_celery

    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with make_sessionmaker(engine)() as db:
        user = sign_up(db, f"bench{time.time_ns()}@example.com", "benchmark-password", "Benchmark")
        ps = create_photo_set(db, user.team_id, "Sneakers", "sneaker")
        add_photos(db, make_storage(settings), settings, user.team_id, ps.id, photos)
        run = start_run(db, JobQueue(make_celery(settings)), settings, user.team_id, ps.id, preset="quick",
                        base_model=settings.base_model_list[0], expert={"steps": steps}, gallery_size=gallery)
        run_id, run_settings = run.id, dict(run.settings)
    return engine, run_id, run_settings


def worker_run(settings, steps: int, photos, timeout: float, gallery: int = 1) -> tuple[float, dict, float]:
    """Seconds per training step of the run in a Celery worker started as scripts/run
    does, its settings, and its whole time once its gallery is done (the report's total)."""
    from sqlalchemy import select

    from app.db import make_sessionmaker
    from app.embedded import WORKERS, prepare_broker, start_worker
    from app.models import Run
    from app.services.runs import total_seconds

    prepare_broker(settings)
    engine, run_id, run_settings = make_run(settings, steps, photos, gallery)
    procs = [start_worker(settings, name, "WARNING") for name in WORKERS]  # as scripts/run starts them
    try:
        deadline = time.monotonic() + timeout
        while True:
            with make_sessionmaker(engine)() as db:
                run = db.scalar(select(Run).where(Run.id == run_id))
                if run.status in ("failed", "canceled") or "gallery" in (run.stage_times or {}):
                    break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the worker run did not finish (status {run.status}, step {run.step})")
            time.sleep(0.5)
        if run.status != "succeeded":
            raise RuntimeError(f"the worker run {run.status}: {run.error}")
        points = [(p["step"], p["elapsed"]) for p in run.loss_history if p.get("elapsed") is not None]
        return seconds_per_step(points), run_settings, total_seconds(run.stage_times)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        engine.dispose()


def core_run(run_settings: dict, photos, out: Path) -> float:
    """Seconds per training step of the same run with the core alone (fewshot.py's way)."""
    from PIL import Image

    from worker.domainstudio import AdaptConfig, adapt

    config = AdaptConfig.from_dict({**run_settings, "preview_every": 0,
                                    "checkpoint_every": run_settings["steps"]})
    images = [Image.open(io.BytesIO(data)) for _, data in photos]
    points = []
    adapt(config, images, out, progress=lambda e: points.append((e.step, e.elapsed_seconds)))
    return seconds_per_step(points)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="worker-step-"))
    os.environ.update(DOMAINSTUDIO_DATA_DIR=str(data), DOMAINSTUDIO_LOG_LEVEL="WARNING",
                      DOMAINSTUDIO_MIN_PHOTOS=str(min(args.photos, 10)))
    if args.base_model:
        os.environ["DOMAINSTUDIO_BASE_MODELS"] = args.base_model
    if args.threads:
        os.environ["DOMAINSTUDIO_TORCH_THREADS"] = str(args.threads)
    import torch

    from app.settings import get_settings

    settings = get_settings()
    photos = photo_files(args.photos, args.photo_size)
    torch.set_num_threads(settings.resolved_torch_threads)  # what the worker uses (worker.tasks)
    print(f"{args.steps} steps, {args.photos} photos of {args.photo_size} px, torch threads: "
          f"{torch.get_num_threads()}, cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}", flush=True)
    core = [core_run(_quick_settings(settings, args.steps), photos, data / "core-1")]
    print(f"core   {core[0]:.3f} s/step", flush=True)
    worker, run_settings, whole = worker_run(settings, args.steps, photos, args.timeout, args.gallery)
    print(f"worker {worker:.3f} s/step; the whole run with its gallery of {args.gallery}: {whole:.0f} s", flush=True)
    core.append(core_run(run_settings, photos, data / "core-2"))
    print(f"core   {core[1]:.3f} s/step", flush=True)
    mean_core = sum(core) / len(core)
    print(f"\nper step: worker {worker:.3f} s, core {mean_core:.3f} s (mean of two), "
          f"worker/core {worker / mean_core:.2f}x; worker run end to end {whole:.0f} s", flush=True)
    shutil.rmtree(data, ignore_errors=True)
    return 0


def _quick_settings(settings, steps: int) -> dict:
    """The settings the web app stores for a Quick run of the demo model."""
    from app.presets import build_settings

    return build_settings("quick", settings.base_model_list[0], "sneaker", {"steps": steps}, settings.device)


if __name__ == "__main__":
    sys.exit(main())
