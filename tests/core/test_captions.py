"""Captions per photo: photo.txt beside photo.jpg, used after the trigger words, with
caption dropout; the trained prompts are recorded."""
import json

import pytest
import torch

from worker.domainstudio import AdaptConfig, InputError, adapt
from worker.domainstudio.data import load_photos


def tiny_sd(**kw):
    values = dict(base_model="builtin:tiny-sd", steps=2, batch_size=3, num_class_images=2, preview_every=0,
                  class_word="bottle", ds_max_timestep=1000)
    values.update(kw)
    return AdaptConfig(**values)


def test_caption_files_are_read_beside_the_photos_and_not_taken_for_photos(photos):
    (photos / "photo-0.txt").write_text("on a  wooden table,\n side view\n")
    (photos / "photo-2.txt").write_text("in the snow")
    loaded = load_photos(photos, 32, 3)
    assert loaded.names == ["photo-0.png", "photo-1.png", "photo-2.png", "photo-3.png"]  # no .txt "photo"
    assert loaded.warnings == []
    assert loaded.captions == ["on a wooden table, side view", "", "in the snow", ""]


def test_captions_reach_the_prompts_after_the_trigger_words(photos, tmp_path, monkeypatch):
    (photos / "photo-0.txt").write_text("on a wooden table")
    (photos / "photo-1.txt").write_text("in the snow")
    from worker.domainstudio import conditioning

    encoded = []
    real = conditioning.encode_prompts

    def spy(base, prompts, device, resolution):
        encoded.append(list(prompts))
        return real(base, prompts, device, resolution)

    monkeypatch.setattr("worker.domainstudio.text_to_image.encode_prompts", spy)
    result = adapt(tiny_sd(), photos, tmp_path / "run")
    expected = {"photo-0.png": "a photo of sks bottle, on a wooden table",
                "photo-1.png": "a photo of sks bottle, in the snow",
                "photo-2.png": "a photo of sks bottle", "photo-3.png": "a photo of sks bottle"}
    assert result.prompts == expected
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prompts"] == expected
    # one row per photo, then the caption-less instance prompt for dropout; then the class prompt
    assert encoded[0] == list(expected.values()) + ["a photo of sks bottle"]
    assert encoded[1] == ["a photo of bottle"]


@pytest.mark.parametrize("dropout,expected", [(0.0, [0, 1, 2, 3]), (1.0, [4, 4, 4, 4])])
def test_caption_dropout_swaps_in_the_prompt_without_caption(photos, tmp_path, dropout, expected):
    from worker.domainstudio.adapt import _make_trainer
    from worker.domainstudio.models import load_base_model

    (photos / "photo-0.txt").write_text("on a wooden table")
    base = load_base_model("builtin:tiny-sd")
    loaded = load_photos(photos, 32, 3)
    cfg = tiny_sd(caption_dropout=dropout).resolved(base.kind, 4, 32)
    trainer = _make_trainer(base, cfg, loaded, torch.device("cpu"), None, tmp_path / "run", None)
    rows = trainer._prompt_rows(torch.arange(4), torch.Generator().manual_seed(0))
    assert rows.tolist() == expected
    half = tiny_sd(caption_dropout=0.5).resolved(base.kind, 4, 32)
    trainer.cfg = half
    drawn = torch.cat([trainer._prompt_rows(torch.arange(4), torch.Generator().manual_seed(s)) for s in range(50)])
    assert 0.35 < (drawn == 4).float().mean().item() < 0.65


def test_caption_dropout_is_checked():
    with pytest.raises(InputError, match="caption_dropout must be between 0 and 1"):
        AdaptConfig.from_dict({"base_model": "builtin:tiny-sd", "caption_dropout": 1.5})
