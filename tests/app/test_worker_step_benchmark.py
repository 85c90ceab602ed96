"""benchmarks/worker_step.py runs end to end (the tiny model, a few steps), so the
measurement of the worker's step time against the core's cannot rot."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from web_helpers import ROOT

pytestmark = pytest.mark.slow


def test_worker_step_benchmark_prints_both_figures_and_their_ratio():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOMAINSTUDIO_")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "worker_step.py"), "--steps", "4",
                          "--base-model", "builtin:tiny-ddpm", "--timeout", "300"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    summary = re.search(r"per step: worker ([\d.]+) s, core ([\d.]+) s .* worker/core ([\d.]+)x; "
                        r"worker run end to end (\d+) s", out.stdout)
    assert summary, out.stdout
    worker, core, ratio, whole = map(float, summary.groups())
    assert worker > 0 and core > 0 and ratio == pytest.approx(worker / core, abs=0.01) and whole > 0
