import numpy as np
import pytest
from PIL import Image


def make_photos(folder, count=4, size=40, seed=0):
    """Distinct, structured product-like test photos (a disc on a gradient)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        cx, cy, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(5, 12)]
        base = np.stack([xx / size * 255, yy / size * 255, np.full_like(xx, 40 * i)], -1)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        base[disc] = rng.uniform(0, 255, 3)
        Image.fromarray(base.astype("uint8")).save(folder / f"photo-{i}.png")
    return folder


@pytest.fixture
def photos(tmp_path):
    return make_photos(tmp_path / "photos")
