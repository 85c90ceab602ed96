"""benchmarks/gpu.py --smoke: the GPU benchmark's own code on the CPU at tiny shapes, so the
script cannot rot between the times a GPU is lent."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("a: diffusers-style DreamBooth LoRA", "b: ours, DreamBooth LoRA", "c: ours, DomainStudio LoRA",
         "c3: ours, DomainStudio LoRA, VAE decode chunk 3", "d: ours, DomainStudio full UNet")


def test_gpu_benchmark_smoke_measures_every_row_and_writes_the_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the timeout only stops a hung run: the smoke takes ~30 s on an idle 2-core machine
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert report["smoke"] is True and report["device"] == "cpu"
    steps = {(r["family"], r["variant"]): r for r in report["steps"]}
    assert set(steps) == {(family, name) for family in ("sd15", "sdxl") for name in STEPS}
    for name in STEPS:  # every SD-1.5-shaped row is measured: time, memory, largest batch
        row = steps["sd15", name]
        assert row["step_s"] > 0 and row["total_gib"] > 0 and row["largest_batch"] in (1, 2), row
    assert steps["sdxl", STEPS[0]]["step_s"] > 0  # the SDXL-shaped UNet with its added time ids trains
    for name in STEPS[1:]:  # ours on SDXL: measured once the core has an SDXL path, else said so
        row = steps["sdxl", name]
        assert (row["step_s"] or 0) > 0 or row["note"].startswith("not measured: the core has no SDXL path yet"), row
    # full fine-tuning holds AdamW state for every UNet weight: more than LoRA
    assert steps["sd15", STEPS[4]]["total_gib"] > steps["sd15", STEPS[1]]["total_gib"]
    sampling = {(r["family"], r["sampler"]): r for r in report["sampling"]}
    assert sampling["sd15", "diffusers pipeline call"]["images_per_s"] > 0
    assert sampling["sd15", "ours (sample_with)"]["images_per_s"] > 0
    assert sampling["sdxl", "diffusers pipeline call"]["images_per_s"] > 0
    table = (tmp_path / "gpu-smoke.md").read_text()
    assert "SMOKE" in table and "Targets:" in table and "x time" in table
    assert table.strip() in done.stdout  # printed and written: the same table
