"""Non-square, small and transparent photos: trained whole (padded with the border colour,
never cropped), small ones upscaled with a warning, padding and transparency masked out of
the losses that compare with the photo."""
import numpy as np
import pytest
import torch
from PIL import Image

from worker.domainstudio import AdaptConfig, adapt, load_base_model
from worker.domainstudio.data import load_photos
from worker.domainstudio.losses import high_frequency_mse, masked_mse

RED, BLUE, GREY = (220, 20, 20), (20, 20, 220), (128, 128, 128)


def tall_bottle(path, size=(48, 80)):
    """A grey photo with a red cap (top 8 rows) and a blue base (bottom 8 rows)."""
    array = np.full((size[1], size[0], 3), GREY, dtype=np.uint8)
    array[:8], array[-8:] = RED, BLUE
    Image.fromarray(array).save(path)
    return path


def cut_out(path, size=40):
    """A product cut-out: an opaque square in the middle of a transparent photo."""
    array = np.zeros((size, size, 4), dtype=np.uint8)
    array[10:30, 10:30] = (30, 160, 60, 255)
    array[:10, :, :3] = (255, 0, 255)  # colour hidden under full transparency
    Image.fromarray(array, "RGBA").save(path)
    return path


class near:
    """A colour within 6 levels (Lanczos resampling moves a level or two)."""

    def __init__(self, colour):
        self.colour = colour

    def __eq__(self, other):
        return max(abs(a - b) for a, b in zip(self.colour, other)) <= 6

    def __repr__(self):
        return f"near{self.colour}"


def colour_at(pixels, y, x):
    return tuple(((pixels[:, y, x] + 1) * 127.5).round().int().tolist())


def test_a_tall_photo_is_trained_whole_not_cropped(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        tall_bottle(folder / f"bottle-{i}.png")
    photos = load_photos(folder, 32, 3)
    assert photos.warnings == []
    pixels, mask = photos.pixels[0], photos.masks[0, 0]
    # 48x80 fits as 19x32: the cap and the base are both there (a centre crop loses both)
    assert colour_at(pixels, 1, 16) == near(RED) and colour_at(pixels, 30, 16) == near(BLUE)
    assert mask.sum().item() == 19 * 32 and mask[:, 16].min() == 1
    # the padding continues the photo's border colour and is masked out
    assert mask[16, 0] == 0 and colour_at(pixels, 16, 0) == near(GREY)
    result = adapt(AdaptConfig(base_model="builtin:tiny-ddpm", steps=1, batch_size=2, preview_every=0),
                   folder, tmp_path / "run")
    assert result.steps == 1 and result.warnings == []


def test_a_small_photo_is_upscaled_with_a_warning(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (20, 20), RED).save(folder / "tiny-thumb.png")
    Image.new("RGB", (64, 64), BLUE).save(folder / "large.png")
    photos = load_photos(folder, 32, 3)
    assert photos.names == ["large.png", "tiny-thumb.png"]
    assert len(photos.warnings) == 1
    warning = photos.warnings[0]
    assert "tiny-thumb.png is 20x20" in warning and "upscaled" in warning
    assert warning.msgid.startswith("%(name)s is %(width)sx%(height)s, smaller than")
    assert colour_at(photos.pixels[1], 16, 16) == near(RED)
    assert photos.masks is None  # both square and opaque: nothing to mask


def test_transparent_areas_are_filled_and_masked(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cut_out(folder / "a.png")
    cut_out(folder / "b.png")
    photos = load_photos(folder, 32, 3)
    mask = photos.masks[0, 0]
    assert colour_at(photos.pixels[0], 2, 2) == near((255, 255, 255))  # filled white, not the hidden magenta
    assert mask[2, 2] == 0 and mask[16, 16] == 1
    assert 0.2 < mask.mean().item() < 0.3  # the 20x20 of 40x40 opaque: a quarter


def test_masked_mse_and_hf_mse_by_hand():
    pred = torch.tensor([[[[1.0, 5.0], [7.0, 9.0]]]])
    target = torch.zeros_like(pred)
    keep_top_left = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert masked_mse(pred, target, keep_top_left).item() == 1.0
    assert masked_mse(pred, target, None).item() == pytest.approx((1 + 25 + 49 + 81) / 4)
    # the single Haar block straddles the mask's edge: it does not count
    assert high_frequency_mse(pred, target, keep_top_left).item() == 0.0
    assert high_frequency_mse(pred, target, torch.ones_like(pred)).item() > 0


class ErrorsOutside(torch.nn.Module):
    """Wraps a UNet: adds large errors to its prediction where ``zero`` is True (the area the
    mask leaves out), so a loss that still sees that area changes."""

    def __init__(self, unet, zero: torch.Tensor, rows: int):
        super().__init__()
        self.unet, self.zero, self.rows = unet, zero, rows
        self.config, self.dtype = unet.config, unet.dtype

    def forward(self, x, t, **kw):
        out = self.unet(x, t, **kw)
        bump = torch.zeros_like(out.sample)
        bump[: self.rows] = 50.0 * self.zero[: self.rows].to(out.sample.dtype)
        out.sample = out.sample + bump
        return out


def _trainer_losses(trainer, index, seed=0):
    with torch.no_grad():
        return {k: float(v) for k, v in trainer.losses(index, torch.Generator().manual_seed(seed)).items()}


@pytest.mark.parametrize("spec", ["builtin:tiny-ddpm", "builtin:tiny-sd"])
def test_a_transparent_area_does_not_enter_the_loss(tmp_path, spec):
    """Errors in the masked area change no photo loss; with the mask removed they do (so
    this test fails if the mask is not applied)."""
    from worker.domainstudio.adapt import _make_trainer

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in "abc":
        cut_out(folder / f"{name}.png")
    base = load_base_model(spec)
    photos = load_photos(folder, 32, 3)
    cfg = AdaptConfig(base_model=spec, batch_size=3, num_class_images=2, l_img=0, l_hf=0, l_hfmse=1.0,
                      ds_max_timestep=1000).resolved(base.kind, 3, 32)
    trainer = _make_trainer(base, cfg, photos, torch.device("cpu"), None, tmp_path / "run", None)
    index = torch.arange(3)
    latent = trainer.latent_masks if hasattr(trainer, "latent_masks") else trainer.masks
    outside = (latent[index] == 0).expand(-1, 4 if base.is_text_to_image else 3, -1, -1)
    assert outside.any()
    clean = _trainer_losses(trainer, index)
    trainer.unet = ErrorsOutside(trainer.unet, outside, rows=3)
    bumped = _trainer_losses(trainer, index)
    assert bumped["simple"] == pytest.approx(clean["simple"], rel=1e-5)
    if not base.is_text_to_image:  # pixel space: the HF-MSE sees x0_hat of the same pixels
        assert bumped["hfmse"] == pytest.approx(clean["hfmse"], rel=1e-5)
    trainer.masks = trainer.latent_masks = None  # the same step with the mask ignored
    unmasked = _trainer_losses(trainer, index)
    assert unmasked["simple"] > clean["simple"] * 2


def test_the_domainstudio_hf_mse_masks_each_sample_with_its_own_photo(tmp_path, monkeypatch):
    """Text-to-image: the HF-MSE on the DomainStudio terms' own S samples compares each
    prediction with the photo it came from, under that photo's mask (photos of different
    shapes have different padding, so a mask of the wrong photo, or none, fails)."""
    from worker.domainstudio import text_to_image
    from worker.domainstudio.adapt import _make_trainer

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(48, 80), (80, 48), (40, 80), (80, 40)]):
        tall_bottle(folder / f"{i}.png", size)
    base = load_base_model("builtin:tiny-sd")
    photos = load_photos(folder, 32, 3)
    cfg = AdaptConfig(base_model="builtin:tiny-sd", batch_size=2, num_class_images=2, l_img=1.0, l_hf=1.0,
                      l_hfmse=1.0, num_similarity_samples=3, ds_max_timestep=1000,
                      pairwise_max_timestep=1000).resolved(base.kind, 4, 32)
    trainer = _make_trainer(base, cfg, photos, torch.device("cpu"), None, tmp_path / "run", None)
    seen = []

    def spy(pred, target, mask=None):
        seen.append((target, mask))
        return high_frequency_mse(pred, target, mask)

    monkeypatch.setattr(text_to_image, "high_frequency_mse", spy)
    _trainer_losses(trainer, torch.arange(2))
    [(target, mask)] = seen
    assert mask is not None and len(target) == 3
    for row in range(3):
        [photo] = [i for i in range(4) if torch.equal(trainer.pixels[i], target[row])]
        assert torch.equal(mask[row], trainer.masks[photo])
    assert len({tuple(m.flatten().tolist()) for m in trainer.masks}) == 4  # each photo its own padding
