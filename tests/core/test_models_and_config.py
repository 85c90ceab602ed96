"""Base-model loading from every source, and settings validation."""
import json
import time

import pytest

from worker.domainstudio import AdaptConfig, InputError, ModelError, describe, list_builtin_models, load_base_model


def test_builtin_models_load_with_their_kind():
    assert {"builtin:tiny-ddpm", "builtin:tiny-sd", "builtin:fmnist-ddpm-32"} <= set(list_builtin_models())
    ddpm = load_base_model("builtin:tiny-ddpm")
    sd = load_base_model("builtin:tiny-sd")
    assert (ddpm.kind, ddpm.resolution, ddpm.channels) == ("unconditional", 32, 3)
    assert (sd.kind, sd.resolution) == ("text-to-image", 32)
    assert sd.tokenizer("a photo of sks bottle").input_ids[0] == sd.tokenizer.bos_token_id


def test_builtin_weights_are_the_same_every_time():
    a = load_base_model("builtin:tiny-ddpm").unet.state_dict()
    b = load_base_model("builtin:tiny-ddpm").unet.state_dict()
    assert all((a[k] == b[k]).all() for k in a)


def test_unknown_builtin_lists_what_is_available():
    with pytest.raises(ModelError, match="available: builtin:tiny-ddpm"):
        load_base_model("builtin:stable-diffusion-9")


def test_hub_id_offline_fails_fast_and_says_to_give_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelError, match="local folder"):
        load_base_model("some-org/some-model")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("spec", ["builtin:tiny-ddpm", "builtin:tiny-sd"])
def test_local_diffusers_folders_load_like_real_user_models(tmp_path, spec):
    base = load_base_model(spec)
    base.pipeline().save_pretrained(tmp_path / "model")
    local = load_base_model(str(tmp_path / "model"))
    assert local.kind == base.kind and local.resolution == base.resolution
    assert describe(str(tmp_path / "model"))["kind"] == base.kind


def test_malformed_folders_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        load_base_model(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": [], "vae": [], "text_encoder": []}))
    with pytest.raises(ModelError, match="lacks the unet/ folder"):
        load_base_model(str(broken))
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_base_model(str(broken))


def test_settings_from_a_form_are_coerced_and_checked():
    config = AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", "steps": "12", "l_img": "0.5",
                                    "gradient_checkpointing": "false"})
    assert config.steps == 12 and config.l_img == 0.5 and config.gradient_checkpointing is False
    for bad, message in [
        ({"steps": -1}, "steps must be between"),
        ({"steps": 10**9}, "steps must be between"),
        ({"steps": "many"}, "steps must be a int"),
        ({"steps": 2.5}, "steps must be a int"),
        ({"l_img": float("nan")}, "l_img must be a float"),
        ({"mode": "half"}, "mode must be one of"),
        ({"num_similarity_samples": 2}, "between 3 and 64: .* always equal"),
        ({"max_grad_norm": -1}, "max_grad_norm must be between"),
        ({"colour": "red"}, "unknown setting"),
    ]:
        with pytest.raises(InputError, match=message):
            AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", **bad})
    with pytest.raises(InputError, match="base_model is required"):
        AdaptConfig.from_dict({})


def test_defaults_depend_on_the_kind_of_model():
    unconditional = AdaptConfig(base_model="x").resolved("unconditional", 10, 32)
    assert (unconditional.mode, unconditional.l_img, unconditional.l_hfmse, unconditional.learning_rate) == ("full", 4.0, 1.0, 1e-4)
    t2i = AdaptConfig(base_model="x").resolved("text-to-image", 3, 512)
    assert (t2i.mode, t2i.l_img, t2i.l_hf, t2i.l_hfmse, t2i.batch_size, t2i.steps) == ("lora", 2.0, 0.2, 0.1, 3, 800)
    full = AdaptConfig(base_model="x", mode="full").resolved("text-to-image", 10, 512)
    assert full.learning_rate == 5e-6
    # a model's own defaults for its mode win over the kind's; what the user set wins over both
    demo = {"lora": {"learning_rate": 1e-3}, "full": {"learning_rate": 1e-4}}
    assert AdaptConfig(base_model="x").resolved("text-to-image", 3, 32, demo).learning_rate == 1e-3
    assert AdaptConfig(base_model="x", mode="full").resolved("text-to-image", 3, 32, demo).learning_rate == 1e-4
    assert AdaptConfig(base_model="x", learning_rate=3e-4).resolved("text-to-image", 3, 32, demo).learning_rate == 3e-4
    # the DomainStudio terms' timestep gates differ by kind (README: why)
    assert (unconditional.ds_max_timestep, unconditional.pairwise_max_timestep) == (200, 300)
    assert (t2i.ds_max_timestep, t2i.pairwise_max_timestep, t2i.num_similarity_samples) == (500, 1000, 3)
