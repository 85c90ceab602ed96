"""The Fashion-MNIST loader: file format, padding, range, class split and seeded shots."""

import gzip
import struct

import numpy as np
import pytest
import torch

from worker.domainstudio import fmnist


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trips_shape_and_values(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(fmnist.read_idx(tmp_path / "a.gz"), array)


def test_read_idx_rejects_truncated_file(tmp_path):
    _write_idx(tmp_path / "a.gz", np.zeros((2, 2), np.uint8))
    with gzip.open(tmp_path / "a.gz", "rb") as f:
        raw = f.read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-1])
    with pytest.raises(ValueError, match="expected 4 values"):
        fmnist.read_idx(tmp_path / "b.gz")


def test_missing_folder_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINSTUDIO_FMNIST_DIR", str(tmp_path))
    fmnist.load_split.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
            fmnist.load_split("train")
    finally:
        fmnist.load_split.cache_clear()


def test_splits_have_the_published_sizes():
    images, labels = fmnist.load_split("train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert fmnist.load_split("t10k")[0].shape == (10000, 28, 28)


def test_to_tensor_pads_with_background_and_scales():
    images = np.full((1, 28, 28), 255, np.uint8)
    x = fmnist.to_tensor(images)
    assert x.shape == (1, 1, 32, 32)
    assert x[0, 0, 2:30, 2:30].eq(1).all()
    assert x[0, 0, :2].eq(-1).all() and x[0, 0, :, 30:].eq(-1).all()
    np.testing.assert_array_equal(fmnist.to_uint8(x)[0, 2:30, 2:30], images[0])


def test_source_classes_exclude_footwear():
    assert fmnist.NON_FOOTWEAR_CLASSES == (0, 1, 2, 3, 4, 6, 8)
    assert [fmnist.CLASS_NAMES[c] for c in fmnist.FOOTWEAR_CLASSES] == ["Sandal", "Sneaker", "Ankle boot"]
    assert len(fmnist.source_images("t10k")) == 7000


def test_draw_shots_is_seeded_and_from_the_class():
    x, idx = fmnist.draw_shots(7, 10, seed=0)
    x2, idx2 = fmnist.draw_shots(7, 10, seed=0)
    _, idx3 = fmnist.draw_shots(7, 10, seed=1)
    assert x.shape == (10, 1, 32, 32) and torch.equal(x, x2)
    np.testing.assert_array_equal(idx, idx2)
    assert set(idx) != set(idx3) and len(set(idx)) == 10
    assert (fmnist.load_split("train")[1][idx] == 7).all()
    with pytest.raises(ValueError):
        fmnist.draw_shots(10, 5)


def test_image_grid_layout_and_from_pil_round_trip():
    x = torch.full((3, 1, 32, 32), -1.0)
    x[1] = 1.0
    grid = fmnist.image_grid(x, nrow=2, scale=1, gap=2)
    assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # two columns, two rows (the last one half empty)
    pixels = np.asarray(grid)
    assert pixels[2, 2] == 0 and pixels[2, 36] == 255 and pixels[0, 0] == 128
    back = fmnist.from_pil([grid.crop((36, 2, 68, 34))])
    assert back.shape == (1, 1, 32, 32) and back.eq(1).all()
