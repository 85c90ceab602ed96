"""The training state to resume from may come from object storage (a run resumed on
another worker): it is read with torch.load(weights_only=True), so that a crafted file
cannot run code on the worker; states written before (numpy RNG state as an array) still load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.domainstudio.errors import ModelError
from worker.domainstudio.training import load_state, rng_state, save_atomic, set_rng_state

RAN = []


def run_code(what: str) -> None:
    RAN.append(what)


class Payload:
    def __reduce__(self):
        return (run_code, ("code ran",))


def test_a_crafted_training_state_is_refused_without_running_code(tmp_path):
    torch.save({"step": 1, "weights": {}, "x": Payload()}, tmp_path / "state.pt")
    with pytest.raises(ModelError, match="unreadable"):
        load_state(tmp_path / "state.pt")
    assert RAN == []
    torch.load(tmp_path / "state.pt", weights_only=False)  # what the loader used to do
    assert RAN == ["code ran"]


def test_the_training_state_round_trips_with_its_random_states(tmp_path):
    generator = torch.Generator().manual_seed(3)
    save_atomic({"step": 7, "weights": {"w": torch.ones(2)}, "rng": rng_state(generator)}, tmp_path / "s.pt")
    expected = (np.random.rand(), torch.rand(1, generator=generator).item())
    state = load_state(tmp_path / "s.pt")
    set_rng_state(generator, state["rng"])
    assert state["step"] == 7 and (np.random.rand(), torch.rand(1, generator=generator).item()) == expected
    # a state written before this change kept numpy's RNG state as an array: it still loads
    old = {"step": 8, "rng": {**rng_state(generator), "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.pt")
    assert load_state(tmp_path / "old.pt")["step"] == 8
