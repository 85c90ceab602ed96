"""SDXL adaptation on the builtin tiny SDXL, and the kohya-format LoRA file beside the diffusers one."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from worker.domainstudio import AdaptConfig, ModelError, adapt, load_base_model, sample
from worker.domainstudio.kohya import KOHYA_FILE
from worker.domainstudio.text_to_image import LORA_FILE

PROMPT = "a photo of sks bottle"


def tiny(spec, **kw):
    values = dict(base_model=spec, steps=2, batch_size=3, num_class_images=3, preview_every=0,
                  checkpoint_every=100, ds_max_timestep=1000, class_word="bottle", learning_rate=5e-2)
    values.update(kw)
    return AdaptConfig(**values)


def render(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                output_type="np", height=32, width=32).images


def test_sdxl_unet_receives_both_text_encoders_and_the_added_time_ids():
    from worker.domainstudio.conditioning import encode_prompts

    base = load_base_model("builtin:tiny-sdxl")
    assert base.is_sdxl and base.text_encoder_2 is not None and base.resolution == 32
    cond = encode_prompts(base, [PROMPT, "a photo of bottle"], torch.device("cpu"), 32)
    # hidden states of both encoders side by side (32 + 48), pooled from the second, six time ids
    assert cond.hidden.shape == (2, 77, 80) and cond.pooled.shape == (2, 48)
    assert cond.time_ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert set(cond.unet_kwargs()["added_cond_kwargs"]) == {"text_embeds", "time_ids"}


def test_sdxl_lora_run_samples_and_loads_in_a_plain_sdxl_pipeline(photos, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    events = []
    result = adapt(tiny("builtin:tiny-sdxl"), photos, tmp_path / "run", progress=events.append)
    assert result.mode == "lora"
    assert len(list((tmp_path / "run" / "class_images").glob("class-*.png"))) == 3
    last = [e for e in events if e.stage == "training"][-1]
    assert all(last.losses[k] > 0 for k in ("simple", "prior", "img", "hf", "hfmse"))

    adapted = sample(tmp_path / "run", 1, prompt=PROMPT, steps=2, seed=3)
    plain = sample("builtin:tiny-sdxl", 1, prompt=PROMPT, steps=2, seed=3)
    assert adapted[0].image.size == (32, 32)
    assert adapted[0].image.tobytes() != plain[0].image.tobytes()

    # The file loads through diffusers' own SDXL pipeline and changes its output.
    pipe = load_base_model("builtin:tiny-sdxl").pipeline()
    assert isinstance(pipe, StableDiffusionXLPipeline)
    before = render(pipe)
    pipe.load_lora_weights(str(tmp_path / "run"), weight_name=LORA_FILE)
    assert any("lora" in k for k in pipe.unet.state_dict())
    assert np.abs(render(pipe) - before).max() > 1e-3


def test_sdxl_full_mode_saves_an_sdxl_pipeline_folder(photos, tmp_path):
    adapt(tiny("builtin:tiny-sdxl", mode="full"), photos, tmp_path / "run")
    index = json.loads((tmp_path / "run" / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    reloaded = load_base_model(str(tmp_path / "run" / "model"))
    assert reloaded.is_sdxl and reloaded.resolution == 32
    assert sample(tmp_path / "run", 1, prompt=PROMPT, steps=2)[0].image.size == (32, 32)


@pytest.mark.parametrize("spec", ["builtin:tiny-sd", "builtin:tiny-sdxl"])
def test_kohya_file_gives_the_same_images_as_the_diffusers_file(photos, tmp_path, spec):
    adapt(tiny(spec), photos, tmp_path / "run")
    with safe_open(str(tmp_path / "run" / KOHYA_FILE), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    downs = [k for k in keys if k.endswith(".lora_down.weight")]
    assert len(alphas) == len(downs) and all(float(a) == 8.0 for a in alphas.values())
    assert meta["ss_network_dim"] == "8" and meta["modelspec.trigger_phrase"] == "sks bottle"
    assert meta["ss_sd_model_name"] == spec and meta["ss_resolution"] == "(32, 32)"
    assert meta["ss_max_train_steps"] == "2"

    images = {}
    for name in (LORA_FILE, KOHYA_FILE):
        pipe = load_base_model(spec).pipeline()
        pipe.load_lora_weights(str(tmp_path / "run"), weight_name=name)  # the kohya file takes diffusers' kohya path
        images[name] = render(pipe, seed=5)
    plain = render(load_base_model(spec).pipeline(), seed=5)
    assert np.abs(images[LORA_FILE] - plain).max() > 1e-3, "the LoRA changes nothing: parity would prove nothing"
    np.testing.assert_allclose(images[KOHYA_FILE], images[LORA_FILE], atol=1e-5)


@pytest.mark.parametrize("pipeline,name", [("FluxPipeline", "Flux"), ("StableDiffusion3Pipeline", "Stable Diffusion 3"),
                                           ("SomeNewPipeline", "SomeNewPipeline")])
def test_models_without_a_unet_are_refused_with_the_supported_kinds(tmp_path, pipeline, name):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ModelError) as err:
        load_base_model(str(folder))
    text = str(err.value)
    assert f"is a {name} model" in text and "no UNet" in text
    assert "SDXL" in text and "Stable Diffusion 1.x and 2.x" in text and "single .safetensors" in text
