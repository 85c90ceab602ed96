"""The copy guard's distances, with known answers: a copy of a training photo is at ~0 and
points at that photo; another product is farther than the threshold; the threshold is a
strict bound. On the three feature networks (the CLIP one with tiny random weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from worker import copyguard
from worker.copyguard import (ClassifierFeatures, CopyGuard, PixelFeatures, cosine_distances, feature_network,
                              mean_pairwise_distance)
from worker.domainstudio import fmnist

torch.set_num_threads(1)


def fashion(indices) -> list[Image.Image]:
    """Fashion-MNIST test images, padded to 32x32 as the demo model sees them."""
    images, _ = fmnist.load_split("t10k")
    return [Image.fromarray(np.pad(images[i], 2)) for i in indices]


def first_of_class(c: int, n: int) -> list[int]:
    _, labels = fmnist.load_split("t10k")
    return [int(i) for i in np.nonzero(labels == c)[0][:n]]


def test_cosine_distance_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    expected = torch.tensor([[0.0, 1 - 2 ** -0.5, 2.0], [1.0, 1 - 2 ** -0.5, 1.0]], dtype=torch.float64)
    assert torch.allclose(cosine_distances(a, b), expected, atol=1e-12)
    # pairs (0,1) (0,2) (1,2) of [x, y, -x]: 1, 2, 1
    assert mean_pairwise_distance(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0]])) == pytest.approx(4 / 3)
    assert mean_pairwise_distance(torch.zeros(1, 2)) is None


@pytest.mark.parametrize("network", [ClassifierFeatures, PixelFeatures])
def test_a_copy_is_flagged_and_points_at_its_photo(network):
    shirts = first_of_class(0, 10)  # a photo set of ten T-shirts
    photos, ids = fashion(shirts), [f"photo-{i}" for i in range(10)]
    guard = CopyGuard(network(), photos, ids)
    sneaker = fashion(first_of_class(7, 1))
    copy_of_4, other_shirt = photos[4].copy(), fashion(first_of_class(0, 11)[10:])
    copy_m, sneaker_m, shirt_m = guard.measure([copy_of_4, *sneaker, *other_shirt])
    assert copy_m.distance == pytest.approx(0, abs=1e-9) and copy_m.photo_id == "photo-4" and copy_m.near_copy
    assert sneaker_m.distance > 3 * guard.threshold and not sneaker_m.near_copy
    assert shirt_m.distance > guard.threshold and not shirt_m.near_copy


def test_a_lightly_edited_copy_is_still_flagged():
    photos = fashion(first_of_class(3, 10))
    guard = CopyGuard(ClassifierFeatures(), photos, list(range(10)))
    a = np.asarray(photos[7], dtype=np.float32) * 1.05 + np.random.default_rng(0).normal(0, 3, (32, 32))
    [m] = guard.measure([Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))])
    assert m.photo_id == 7 and 0 < m.distance < guard.threshold and m.near_copy


def test_the_threshold_is_a_strict_bound():
    photos = fashion(first_of_class(1, 3))
    probe = fashion(first_of_class(1, 4)[3:])
    d = CopyGuard(PixelFeatures(), photos, ["a", "b", "c"]).measure(probe)[0].distance
    assert CopyGuard(PixelFeatures(), photos, ["a", "b", "c"], threshold=d).measure(probe)[0].near_copy is False
    assert CopyGuard(PixelFeatures(), photos, ["a", "b", "c"], threshold=d + 1e-9).measure(probe)[0].near_copy is True


def test_colour_photos_and_transparency_are_read_as_the_model_sees_them():
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))  # transparent: white, as in training
    white = Image.new("RGB", (40, 40), "white")
    guard = CopyGuard(PixelFeatures(), [white, Image.effect_noise((50, 50), 40).convert("RGB")], ["w", "n"])
    assert guard.measure([rgba])[0].photo_id == "w"


def test_which_network_measures_which_model(tmp_path):
    assert isinstance(feature_network("builtin:fmnist-ddpm-32"), ClassifierFeatures)
    assert isinstance(feature_network("builtin:tiny-ddpm"), PixelFeatures)
    assert "pixel" in PixelFeatures.name and "Fashion-MNIST" in ClassifierFeatures.name
    # the web app names them in the user's language without importing torch
    from app.services.galleries import FEATURE_NETWORKS

    assert set(FEATURE_NETWORKS) == {PixelFeatures.name, ClassifierFeatures.name}
    with pytest.raises(copyguard.CopyGuardError, match="does not exist"):
        feature_network("builtin:tiny-ddpm", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(copyguard.CopyGuardError, match="could not be loaded"):
        feature_network("builtin:tiny-ddpm", str(tmp_path / "empty"))


def test_a_local_clip_folder_is_loaded_offline(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)
    folder = tmp_path / "clip-tiny"
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    net = feature_network("builtin:tiny-ddpm", str(folder))
    assert net.kind == "clip" and net.name == "CLIP (clip-tiny)"
    photos = fashion(first_of_class(0, 3))
    [m] = CopyGuard(net, photos, ["a", "b", "c"]).measure([photos[2].copy()])
    assert m.photo_id == "c" and m.distance == pytest.approx(0, abs=1e-6) and m.near_copy


def test_diversity_of_a_gallery():
    photos = fashion(first_of_class(0, 5))
    guard = CopyGuard(ClassifierFeatures(), photos, list(range(5)))
    same = guard.diversity([photos[0]] * 4, proxy_lpips=True)
    assert same["mean_pairwise_distance"] == pytest.approx(0, abs=1e-9) and same["images"] == 4
    assert same["proxy_intra_lpips"] == pytest.approx(0, abs=1e-6)
    varied = guard.diversity(fashion(first_of_class(0, 15)[5:]), proxy_lpips=True)
    assert varied["mean_pairwise_distance"] > 0.1 and varied["proxy_intra_lpips"] > 0
    assert CopyGuard(PixelFeatures(), photos, list(range(5))).diversity(photos, proxy_lpips=False)[
        "proxy_intra_lpips"] is None
