"""Adaptation of the builtin tiny Stable-Diffusion-shaped model: LoRA, full, paired, class images."""
import json

import pytest
import torch

from worker.domainstudio import AdaptConfig, adapt, load_base_model, sample
from worker.domainstudio.text_to_image import LORA_FILE


def tiny_sd(**kw):
    values = dict(base_model="builtin:tiny-sd", steps=2, batch_size=3, num_class_images=3,
                  preview_every=0, checkpoint_every=100, ds_max_timestep=1000, class_word="bottle")
    values.update(kw)
    return AdaptConfig(**values)


def test_lora_run_writes_a_small_file_that_a_plain_diffusers_pipeline_loads(photos, tmp_path):
    events = []
    result = adapt(tiny_sd(), photos, tmp_path / "run", progress=events.append)
    assert result.mode == "lora"
    stages = [e.stage for e in events]
    assert stages.count("class_images") >= 1 and stages[-1] == "training"
    training = [e for e in events if e.stage == "training"]
    assert all(training[-1].losses[k] > 0 for k in ("simple", "prior", "img", "hf", "hfmse"))
    lora = tmp_path / "run" / LORA_FILE
    assert lora.is_file() and lora.stat().st_size < 200_000
    assert len(list((tmp_path / "run" / "class_images").glob("class-*.png"))) == 3

    # A plain diffusers pipeline over the same base model takes the file as is.
    base = load_base_model("builtin:tiny-sd")
    pipe = base.pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path / "run"), weight_name=LORA_FILE)
    lora_keys = [k for k in pipe.unet.state_dict() if "lora" in k]
    assert lora_keys, "the LoRA layers were not attached"
    out = pipe("a photo of sks bottle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="pil", height=32, width=32)
    assert out.images[0].size == (32, 32)
    assert set(before) <= set(k.replace(".base_layer", "") for k in pipe.unet.state_dict())


def test_lora_samples_differ_from_the_base_and_reload_identically(photos, tmp_path):
    adapt(tiny_sd(learning_rate=5e-2), photos, tmp_path / "run")
    adapted_a = sample(tmp_path / "run", 2, prompt="a photo of sks bottle", steps=2, seed=3)
    adapted_b = sample(tmp_path / "run", 2, prompt="a photo of sks bottle", steps=2, seed=3)
    plain = sample("builtin:tiny-sd", 2, prompt="a photo of sks bottle", steps=2, seed=3)
    assert [a.image.tobytes() for a in adapted_a] == [b.image.tobytes() for b in adapted_b]
    assert adapted_a[0].image.tobytes() != plain[0].image.tobytes()


def test_class_images_are_generated_once_and_reused(photos, tmp_path):
    shared = tmp_path / "class-cache"
    adapt(tiny_sd(class_images_dir=str(shared)), photos, tmp_path / "a")
    stamps = {p.name: p.stat().st_mtime_ns for p in shared.glob("*.png")}
    events = []
    adapt(tiny_sd(class_images_dir=str(shared)), photos, tmp_path / "b", progress=events.append)
    assert {p.name: p.stat().st_mtime_ns for p in shared.glob("*.png")} == stamps
    assert not [e for e in events if e.stage == "class_images"]


@pytest.mark.parametrize("mode,source", [("full", "unpaired"), ("full", "paired"), ("lora", "paired")])
def test_full_and_paired_modes_train_and_save(photos, tmp_path, mode, source):
    events = []
    # A high learning rate so the adapted side has moved away from the source by step 2
    # (a fresh LoRA starts equal to its base: the pairwise terms are 0 at first).
    adapt(tiny_sd(mode=mode, source=source, learning_rate=5e-2), photos, tmp_path / "run", progress=events.append)
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert info["mode"] == mode
    if mode == "full":
        assert (tmp_path / "run" / "model" / "model_index.json").is_file()
    last = [e for e in events if e.stage == "training"][-1]
    assert last.losses["img"] > 0 and last.losses["hfmse"] > 0
    images = sample(tmp_path / "run", 1, prompt="a photo of sks bottle", steps=2)
    assert images[0].image.size == (32, 32)


def test_full_mode_save_then_load_gives_identical_samples(photos, tmp_path):
    from worker.domainstudio.checkpoints import load_for_sampling

    adapt(tiny_sd(mode="full"), photos, tmp_path / "run")
    first = sample(tmp_path / "run", 2, prompt="a photo", steps=2, seed=7)
    model = load_for_sampling(tmp_path / "run")
    second = sample(model, 2, prompt="a photo", steps=2, seed=7)
    assert [a.image.tobytes() for a in first] == [b.image.tobytes() for b in second]
