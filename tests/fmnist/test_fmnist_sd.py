"""The text-to-image demo model builtin:fmnist-sd-32: its training (resumable, exported as a
diffusers folder), the shipped weights (offline, adapted in both modes, sampled) and whether
it draws what a prompt names, measured with the shipped classifier on a small sample."""
import random

import pytest
import torch

from worker.domainstudio import AdaptConfig, adapt, fmnist, metric_net, sample
from worker.domainstudio import pretrain_sd as psd
from worker.domainstudio.models import load_base_model


def _tiny_config(steps: int) -> psd.PretrainSDConfig:
    # the real architecture on a few images and batch 2: each step well under a second
    return psd.PretrainSDConfig(vae_steps=2, vae_batch_size=2, steps=steps, batch_size=2,
                                checkpoint_every=1, log_every=1, max_images=64)


def test_train_resume_and_export_a_pipeline_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = psd.pretrain_sd(_tiny_config(2), tmp_path / "state", tmp_path / "model")
    first = torch.load(tmp_path / "state" / "unet.pt", weights_only=False)
    assert first["step"] == 2
    psd.pretrain_sd(_tiny_config(3), tmp_path / "state", tmp_path / "model")
    again = torch.load(tmp_path / "state" / "unet.pt", weights_only=False)
    assert again["step"] == 3  # continued from step 2, did not start over
    assert any(not torch.equal(again["ema"][k], first["ema"][k]) for k in first["ema"])

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.vae.config.scaling_factor == pytest.approx(again["latent_scale"])
    image = pipe("a photo of a bag", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32) and image.mode == "RGB"


def test_captions_name_the_class_and_never_a_sneaker():
    rng, config = random.Random(0), psd.PretrainSDConfig()
    seen = {label: [psd.caption(label, rng, config) for _ in range(400)] for label in psd.CLASS_WORDS}
    assert 7 not in psd.TRAIN_CLASSES
    for label, captions in seen.items():
        words = [c for c in captions if c]
        assert 0.05 < 1 - len(words) / len(captions) < 0.15  # empty captions, for guidance
        assert all(psd.CLASS_WORDS[label] in c or (label in psd.SHOE_CLASSES and "shoe" in c) for c in words)
        assert not any("sneaker" in c for c in captions)
        assert any("shoe" in c for c in words) == (label in psd.SHOE_CLASSES)
    assert "a photo of a shoe" in seen[5] and "a photo of shoe" in seen[9]  # with and without article


def test_shipped_model_loads_offline_and_samples(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = load_base_model("builtin:fmnist-sd-32")
    assert base.is_text_to_image and base.resolution == 32 and base.fingerprint == "builtin:fmnist-sd-32"
    assert "shoe" in base.extra["class_words"] and "sneaker" not in base.extra["class_words"]
    images = sample(base, 2, prompt="a photo of a bag", steps=4, device="cpu")
    assert [g.image.size for g in images] == [(32, 32)] * 2


def _sneaker_photos(folder, n: int, seed: int = 0):
    shots, _ = fmnist.draw_shots(7, n, seed)
    folder.mkdir()
    for i, image in enumerate(fmnist.to_uint8(shots)):
        from PIL import Image

        Image.fromarray(image).convert("RGB").save(folder / f"sneaker-{i}.png")
    return folder


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_adapts_in_both_modes_and_samples(tmp_path, mode):
    photos = _sneaker_photos(tmp_path / "photos", 4)
    config = AdaptConfig(base_model="builtin:fmnist-sd-32", mode=mode, steps=2, class_word="sneaker",
                         num_class_images=2, preview_every=0, device="cpu")
    result = adapt(config, photos, tmp_path / "run")
    assert result.steps == 2 and result.mode == mode
    # the demo model knows "shoe", not "sneaker": the run uses its word and says so
    assert any("'shoe'" in w for w in result.warnings)
    import json

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["class_word"] == "shoe"
    assert saved["gallery_prompts"] == ["a photo of sks shoe", "a product photo of sks shoe", "sks shoe"]
    images = sample(tmp_path / "run", 2, prompt=saved["gallery_prompts"][:2], steps=3, device="cpu")
    assert [g.prompt for g in images] == saved["gallery_prompts"][:2]


def _classified(prompt: str, n: int):
    images = sample("builtin:fmnist-sd-32", n, prompt=prompt, batch_size=n, device="cpu")
    x = fmnist.from_pil([g.image for g in images])
    return metric_net.classify(metric_net.load_metric_net(), x)


@pytest.mark.parametrize("prompt,label", [("a photo of a bag", 8), ("a photo of trousers", 1),
                                          ("a photo of an ankle boot", 9)])
def test_prompts_draw_the_named_class(prompt, label):
    # benchmarks/prompt_following.py measures every prompt on 100 samples; here 16 samples of
    # three clear classes, with a margin for the small sample
    predicted, confidence = _classified(prompt, 16)
    assert (predicted == label).float().mean() >= 0.75
    assert (confidence < metric_net.UNSURE_BELOW).float().mean() <= 0.25


def test_a_shoe_is_never_a_sneaker():
    predicted, _ = _classified("a photo of a shoe", 16)
    assert ((predicted == 5) | (predicted == 9)).float().mean() >= 0.75
    assert (predicted == 7).sum() <= 1


def test_fewshot_t2i_benchmark_smoke(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fewshot_t2i.py"
    spec = importlib.util.spec_from_file_location("fewshot_t2i", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--seed", "1", "--shots", "3", "--steps", "2", "--samples", "8", "--sample-steps", "2",
            "--num-class-images", "2", "--max-reference", "200", "--methods", "dreambooth-prior,domainstudio",
            "--work-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
    rows = bench.run(bench.parse_args(argv))
    assert [r["method"] for r in rows] == ["source", "dreambooth-prior", "domainstudio"]
    assert all(0 <= r["copies"] <= 1 and set(r["prior"]) == set(bench.PRIOR_PROMPTS) for r in rows)
    settings = [json.loads((tmp_path / "runs" / "fewshot-t2i-k3-s1-2" / m / "config.json").read_text())
                for m in ("dreambooth-prior", "domainstudio")]
    assert settings[0]["l_img"] == 0 and settings[1]["l_img"] > 0
    assert all(s["instance_prompt"] == "a photo of {token} {class}" and s["class_word"] == "shoe" for s in settings)
    table = (tmp_path / "results" / "fewshot-t2i-k3-s1-2.md").read_text()
    assert "(c) DomainStudio LoRA (ours)" in table and "copies" in table
    # the class images are generated once and shared by the methods
    assert len(list((tmp_path / "runs" / "class_images").glob("class-*.png"))) == 2


# 300 training steps with the DomainStudio terms: about 3 minutes on 2 idle cores, three
# times that beside other work; the suite's 600 s limit per test is too tight for it
@pytest.mark.timeout(1800)
def test_a_quick_run_on_ten_sneakers_gives_a_gallery_of_sneakers(tmp_path):
    """What a new user gets from the embedded default: the Quick preset on 10 sneaker photos
    (the class the model never saw), then a gallery cycling the run's prompts. The issue's bar
    for the full gallery is at least 80% sneakers and under 15% unsure (measured in the README);
    here 24 images, and 40 class images instead of 200 to keep the test near two minutes."""
    import json

    from app.presets import PRESETS

    photos = _sneaker_photos(tmp_path / "photos", 10)
    config = AdaptConfig(base_model="builtin:fmnist-sd-32", class_word="sneaker", num_class_images=40,
                         preview_every=0, device="cpu", **PRESETS["quick"].settings)
    adapt(config, photos, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    prompts = [saved["gallery_prompts"][seed % 3] for seed in range(24)]  # the worker's cycle (seed i: prompt i mod n)
    images = sample(tmp_path / "run", 24, prompt=prompts, seed=0, batch_size=24, device="cpu")
    predicted, confidence = metric_net.classify(metric_net.load_metric_net(),
                                                fmnist.from_pil([g.image for g in images]))
    sneakers, unsure = (predicted == 7).float().mean().item(), (confidence < metric_net.UNSURE_BELOW).float().mean().item()
    assert sneakers >= 0.8 and unsure < 0.15, f"sneakers {sneakers:.0%}, unsure {unsure:.0%} (classes {predicted.tolist()})"
