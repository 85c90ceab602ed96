"""Single-file checkpoints (.safetensors / .ckpt in the original Stability layout): loaded
offline through diffusers' single-file code with our own configs; kinds detected; bad
files refused with what was expected."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.core.original_layout import to_original
from worker.domainstudio import AdaptConfig, ModelError, adapt, load_base_model, sample
from worker.domainstudio.model_kinds import model_kind
from worker.domainstudio.single_file import CONFIGS_ENV, PACKAGE_CONFIGS, clip_tokenizers

PROMPT = "a photo of sks bottle"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or resolve a name is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def write_single_file(tmp_path, monkeypatch, spec, family, suffix=".safetensors"):
    """The builtin tiny model as one original-layout file, and a configs folder for its
    family made from the same model's diffusers configs (as single_file_configs/ ships)."""
    base = load_base_model(spec)
    configs = tmp_path / "configs" / family
    base.pipeline().save_pretrained(configs)
    for weights in configs.rglob("*.safetensors"):
        weights.unlink()
    monkeypatch.setenv(CONFIGS_ENV, str(tmp_path / "configs"))
    path = tmp_path / f"model{suffix}"
    state = to_original(base)
    if suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path))
    return path, base


def render(base, seed=0):
    pipe = base.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                output_type="np", height=32, width=32).images


@pytest.mark.parametrize("spec,family,suffix", [("builtin:tiny-sd", "sd1", ".safetensors"),
                                                ("builtin:tiny-sdxl", "sdxl", ".safetensors"),
                                                ("builtin:tiny-sd", "sd1", ".ckpt")])
def test_single_file_loads_offline_as_the_same_model(tmp_path, monkeypatch, no_network, spec, family, suffix):
    path, original = write_single_file(tmp_path, monkeypatch, spec, family, suffix)
    if suffix == ".safetensors":
        assert model_kind(str(path)).family == family  # read from the header, without loading
    loaded = load_base_model(str(path))
    assert no_network == [], f"the single-file loader tried the network: {no_network}"
    assert loaded.family == family and loaded.resolution == 32 and loaded.is_text_to_image
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(loaded, name), getattr(original, name)
        if b is None:
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), name
        assert all(torch.equal(sa[k], sb[k]) for k in sb), f"{name} weights differ after the round trip"
    np.testing.assert_array_equal(render(loaded), render(original))


def test_a_single_file_base_model_adapts_and_its_lora_samples(tmp_path, monkeypatch, photos):
    path, _ = write_single_file(tmp_path, monkeypatch, "builtin:tiny-sd", "sd1")
    cfg = AdaptConfig(base_model=str(path), steps=2, batch_size=3, num_class_images=2, preview_every=0,
                      class_word="bottle", learning_rate=5e-2, ds_max_timestep=1000)
    adapt(cfg, photos, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert info["base_model"] == str(path) and info["base_fingerprint"].startswith("sha256:")
    adapted = sample(tmp_path / "run", 1, prompt=PROMPT, steps=2, seed=1)
    plain = sample(str(path), 1, prompt=PROMPT, steps=2, seed=1)
    assert adapted[0].image.tobytes() != plain[0].image.tobytes()


def test_bad_and_foreign_files_are_refused_with_what_was_expected(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        load_base_model(str(broken))

    unknown = tmp_path / "unknown.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(ModelError, match="expected the original single-file layout.*SD 1.x: cond_stage_model"):
        load_base_model(str(unknown))

    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, str(flux))
    with pytest.raises(ModelError, match="is a Flux checkpoint.*Supported kinds: .*SDXL"):
        model_kind(str(flux))

    inpainting = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 9, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(2, 2)},
              str(inpainting))
    with pytest.raises(ModelError, match="takes 9 input channels"):
        load_base_model(str(inpainting))

    with pytest.raises(ModelError, match="checkpoint file models/sd15.safetensors does not exist"):
        load_base_model("models/sd15.safetensors")  # not taken for a hub id

    picture = tmp_path / "photo.jpg"
    picture.write_bytes(b"jpeg")
    with pytest.raises(ModelError, match="not a checkpoint: give a .safetensors or .ckpt file"):
        load_base_model(str(picture))


def test_shipped_configs_describe_the_real_models():
    """Our configs stand in for the ones diffusers would download: their parameter counts
    are those of SD 1.5, SD 2.1 and SDXL base (built on the meta device: no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def millions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)

    expected = {"sd1": (859.52, 123.06), "sd2": (865.91, 340.39), "sdxl": (2567.46, 123.06)}
    for family, (unet_m, text_m) in expected.items():
        folder = PACKAGE_CONFIGS / family
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
            assert (millions(unet), millions(vae), millions(text)) == (unet_m, 83.65, text_m), family
            if family == "sdxl":
                bigg = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
                assert millions(bigg) == 694.66


def test_clip_tokenizer_is_built_offline_with_clips_own_ids():
    tokenizer = clip_tokenizers("sd1")["tokenizer"]
    assert len(tokenizer) == 49408
    # the ids CLIP's reference tokenizer gives "a photo of a cat"
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    second = clip_tokenizers("sdxl")["tokenizer_2"]
    assert second("a", padding="max_length", max_length=5).input_ids == [49406, 320, 49407, 0, 0]


def test_model_kinds_are_read_without_torch(tmp_path):
    """The web app lists base models with their kind; it never imports torch."""
    code = ("import sys; from worker.domainstudio.model_kinds import model_kind; "
            "k = model_kind('builtin:tiny-sdxl'); print(k.label); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(PACKAGE_CONFIGS.parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SDXL, builtin, 32 px"


def test_the_package_exports_adapt_the_function_whatever_was_imported_first():
    """Loading the submodule ``adapt`` (as other modules and tests do) leaves
    ``from worker.domainstudio import adapt`` the function, as the eager imports did."""
    code = ("from worker.domainstudio.adapt import _step; from worker.domainstudio import adapt, sample; "
            "import types; assert not isinstance(adapt, types.ModuleType), adapt; print(adapt.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(PACKAGE_CONFIGS.parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "adapt"


def test_the_torch_free_kinds_of_builtins_match_the_loaded_models():
    from worker.domainstudio import list_builtin_models

    for spec in list_builtin_models():
        kind, model = model_kind(spec), load_base_model(spec)
        assert (kind.family, kind.resolution) == (model.family, model.resolution), spec


def test_a_folder_kind_is_read_from_its_configs(tmp_path):
    load_base_model("builtin:tiny-sdxl").pipeline().save_pretrained(tmp_path / "sdxl")
    kind = model_kind(str(tmp_path / "sdxl"))
    assert (kind.family, kind.resolution, kind.source) == ("sdxl", 32, "folder")
    assert kind.label == "SDXL, folder, 32 px"
