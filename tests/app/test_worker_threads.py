"""A worker sets torch's CPU threads from DOMAINSTUDIO_TORCH_THREADS before a run or a
gallery; the default is half the cores (torch's one per core made each step 8-10x slower on
shared cores: benchmarks/worker_step.py)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from app.settings import Settings


def test_default_is_half_the_cores_and_the_setting_wins():
    assert Settings().resolved_torch_threads == max(1, (os.cpu_count() or 1) // 2)
    assert Settings(torch_threads=3).resolved_torch_threads == 3


def test_worker_applies_the_setting():
    from worker.tasks.env import use_torch_threads

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            use_torch_threads(SimpleNamespace(settings=Settings(torch_threads=n)))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
