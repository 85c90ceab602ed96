"""Adaptation of the builtin tiny DDPM: steps, checkpoints, resume, progress, cancel, bad input."""
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from worker.domainstudio import AdaptConfig, Canceled, InputError, ModelError, adapt, sample
from worker.domainstudio.training import STATE_FILE


def tiny(**kw):
    values = dict(base_model="builtin:tiny-ddpm", steps=2, batch_size=4, preview_every=0,
                  checkpoint_every=100, ds_max_timestep=1000)
    values.update(kw)
    return AdaptConfig(**values)


def unet_weights(run):
    return load_file(run / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def test_two_steps_produce_a_loadable_checkpoint_with_all_terms(photos, tmp_path):
    events = []
    result = adapt(tiny(preview_every=2, num_previews=2), photos, tmp_path / "run", progress=events.append)
    assert result.steps == 2 and result.mode == "full" and result.kind == "unconditional"
    assert [e.step for e in events] == [1, 2] and all(e.total == 2 for e in events)
    assert set(events[0].losses) == {"simple", "img", "hf", "hfmse", "prior", "total"}
    # With every t admitted, all four terms are active on a batch of 4.
    assert all(events[-1].losses[k] > 0 for k in ("simple", "hfmse"))
    # KL of two nearly equal distributions after one update: tiny, and may round below 0
    assert all(events[-1].losses[k] != 0 for k in ("img", "hf"))
    assert events[0].previews is None and len(events[1].previews) == 2
    assert events[1].eta_seconds == pytest.approx(0.0)
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert info["base_model"] == "builtin:tiny-ddpm" and info["steps"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["l_img"] == 4.0 and config["l_hf"] == 4.0 and config["l_hfmse"] == 1.0  # official weights
    images = sample(tmp_path / "run", 2, steps=2)
    assert images[0].image.size == (32, 32) and images[0].model == str(tmp_path / "run")


def test_the_pairwise_terms_act_on_every_step_and_the_hf_mse_only_below_its_gate(photos, tmp_path):
    # HF-MSE gate t < 1 (t == 0 essentially never drawn): only the pairwise terms, which
    # have S noisy photos of their own on every step, are non-zero.
    events = []
    adapt(tiny(ds_max_timestep=1, steps=3), photos, tmp_path / "run", progress=events.append)
    assert all(e.losses["hfmse"] == 0 for e in events)
    assert all(abs(e.losses["img"]) > 0 and abs(e.losses["hf"]) > 0 for e in events[1:])


def test_resume_continues_at_the_saved_step_with_the_same_state(photos, tmp_path):
    adapt(tiny(steps=4), photos, tmp_path / "straight")
    first = adapt(tiny(steps=2), photos, tmp_path / "resumed")
    assert first.steps == 2
    second = adapt(tiny(steps=4), photos, tmp_path / "resumed")
    assert second.resumed_from == 2 and second.steps == 4
    assert torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=False)["step"] == 4
    a, b = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_saves_the_state_and_the_rerun_finishes_identically(photos, tmp_path):
    adapt(tiny(steps=4), photos, tmp_path / "straight")

    def crash(event):
        if event.step == 3:
            raise RuntimeError("worker lost")
    with pytest.raises(RuntimeError):
        adapt(tiny(steps=4), photos, tmp_path / "crashed", progress=crash)
    assert torch.load(tmp_path / "crashed" / STATE_FILE, weights_only=False)["step"] == 3
    assert not (tmp_path / "crashed" / "checkpoint.json").exists()
    result = adapt(tiny(steps=4), photos, tmp_path / "crashed")
    assert result.resumed_from == 3
    a, b = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "crashed")
    assert all(torch.equal(a[k], b[k]) for k in a)


class GiveUpTurn(Exception):
    """What the worker raises from should_stop when a run gives its turn (worker/turns.py)."""


@pytest.mark.parametrize("stop_after", [3, 4])  # 4: right after a checkpoint (checkpoint_every=2)
def test_a_stop_from_should_stop_saves_the_state_once_and_resumes_identically(photos, tmp_path, caplog, monkeypatch,
                                                                             stop_after):
    adapt(tiny(steps=6), photos, tmp_path / "straight")
    steps = []

    def give_up() -> bool:
        if len(steps) >= stop_after:
            raise GiveUpTurn()
        return False
    caplog.set_level("INFO", logger="domainstudio.adapt")
    # the web app's log setup (app/logs.py, run by earlier tests in the same process) stops the
    # domainstudio loggers from propagating to caplog's root handler
    monkeypatch.setattr(logging.getLogger("domainstudio"), "propagate", True)
    with pytest.raises(GiveUpTurn):
        adapt(tiny(steps=6, checkpoint_every=2), photos, tmp_path / "turns", progress=lambda e: steps.append(e.step),
              should_stop=give_up)
    saves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run.checkpoint.saved")]
    # a checkpoint at step 2 (and 4); the stop saves step 3, or nothing again after step 4
    assert saves == ["run.checkpoint.saved step=2", f"run.checkpoint.saved step={stop_after}"]
    assert torch.load(tmp_path / "turns" / STATE_FILE, weights_only=False)["step"] == stop_after
    result = adapt(tiny(steps=6, checkpoint_every=2), photos, tmp_path / "turns", progress=lambda e: steps.append(e.step))
    assert result.resumed_from == stop_after and steps == [1, 2, 3, 4, 5, 6][:stop_after] + [*range(stop_after + 1, 7)]
    a, b = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "turns")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_returned_without_training_again(photos, tmp_path):
    adapt(tiny(), photos, tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.json").read_text()
    again = adapt(tiny(), photos, tmp_path / "run", progress=lambda e: pytest.fail("trained again"))
    assert again.steps == 2 and (tmp_path / "run" / "checkpoint.json").read_text() == before


def test_cancel_stops_within_one_step(photos, tmp_path):
    steps = []
    with pytest.raises(Canceled):
        adapt(tiny(steps=50), photos, tmp_path / "run", progress=lambda e: steps.append(e.step),
              should_stop=lambda: len(steps) >= 2)
    assert steps == [1, 2]


def test_too_few_photos_is_an_error_and_leaves_no_folder(tmp_path):
    from tests.core.conftest import make_photos

    folder = make_photos(tmp_path / "one", count=1)
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="at least 2 usable photos.*notes.txt"):
        adapt(tiny(), folder, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_files_are_skipped_with_a_warning_naming_them(photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    from PIL import Image
    Image.new("RGB", (16, 16)).save(photos / "thumb.png")
    result = adapt(tiny(), photos, tmp_path / "run")
    assert any("broken.jpg" in w and "not a readable image" in w for w in result.warnings)
    assert any("thumb.png" in w and "smaller" in w for w in result.warnings)


def test_resuming_with_another_base_model_is_refused(photos, tmp_path):
    adapt(tiny(steps=1), photos, tmp_path / "run")
    with pytest.raises(ModelError, match="another base model"):
        adapt(tiny(steps=4, base_model="builtin:tiny-sd", num_class_images=2), photos, tmp_path / "run")


def test_an_output_folder_with_other_files_is_not_touched(photos, tmp_path):
    out = tmp_path / "somebody-else"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="holds other files"):
        adapt(tiny(), photos, out)
    assert (out / "thesis.docx").read_text() == "precious"


def test_lora_on_an_unconditional_model_is_a_clear_error(photos, tmp_path):
    with pytest.raises(InputError, match="lora mode is for text-to-image"):
        adapt(tiny(mode="lora"), photos, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_asked_but_absent(photos, tmp_path):
    with pytest.raises(ModelError, match="no CUDA GPU"):
        adapt(tiny(device="cuda"), photos, tmp_path / "run")
    assert not (tmp_path / "run").exists()
