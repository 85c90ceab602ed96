"""Fashion-MNIST, read offline from the Debian package ``dataset-fashion-mnist``.

The demo source model and the few-shot benchmark use it: 70,000 grayscale 28x28 product
photos in ten classes. Images are padded to 32x32 (the UNet halves the size twice, so it
needs a multiple of 4) and scaled to [-1, 1], the range diffusers' DDPM pipelines assume.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "t10k")

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FOOTWEAR_CLASSES = (5, 7, 9)
# The source model never sees footwear, so adapting to a shoe class is a real new domain.
NON_FOOTWEAR_CLASSES = tuple(c for c in range(10) if c not in FOOTWEAR_CLASSES)

IMAGE_SIZE = 32
_PAD = (IMAGE_SIZE - 28) // 2


def data_dir() -> Path:
    """The folder holding the idx.gz files; ``DOMAINSTUDIO_FMNIST_DIR`` overrides it."""
    return Path(os.environ.get("DOMAINSTUDIO_FMNIST_DIR", DEFAULT_DIR))


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file into a numpy array of its stored shape.

    Format: two zero bytes, a type code (0x08 = uint8, the only one Fashion-MNIST uses),
    the number of dimensions, then one big-endian uint32 per dimension and the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _split_file(split: str, kind: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    path = data_dir() / f"{split}-{kind}-ubyte.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install the Debian package dataset-fashion-mnist "
            "or set DOMAINSTUDIO_FMNIST_DIR to a folder with the idx.gz files"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_split(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of one split; cached per process."""
    images = read_idx(_split_file(split, "images-idx3"))
    labels = read_idx(_split_file(split, "labels-idx1")).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    images.flags.writeable = False  # shared by the cache: callers must not modify it
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 32, 32] in [-1, 1], padded with the black background."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)) / 127.5 - 1.0
    x = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD), value=-1.0)
    return x.unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor`` for display: [N, 1, 32, 32] in [-1, 1] -> uint8 [N, 32, 32]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.squeeze(1).to(torch.uint8).cpu().numpy()


def class_images(classes, splits=("train",)) -> torch.Tensor:
    """All images of the given classes from the given splits, as [N, 1, 32, 32] in [-1, 1]."""
    classes = [classes] if isinstance(classes, int) else list(classes)
    parts = []
    for split in splits:
        images, labels = load_split(split)
        parts.append(images[np.isin(labels, classes)])
    return to_tensor(np.concatenate(parts))


def source_images(split: str = "train") -> torch.Tensor:
    """The source model's training data: the seven non-footwear classes."""
    return class_images(NON_FOOTWEAR_CLASSES, (split,))


def draw_shots(target_class: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """k images of one class from the train split, chosen by ``seed``; returns (images, indices).

    The indices point into the train split, so a benchmark can name exactly which photos it used.
    """
    if not 0 <= target_class < len(CLASS_NAMES):
        raise ValueError(f"class must be 0..9, got {target_class}")
    images, labels = load_split("train")
    candidates = np.flatnonzero(labels == target_class)
    if not 1 <= k <= len(candidates):
        raise ValueError(f"k must be 1..{len(candidates)}, got {k}")
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=k, replace=False))
    return to_tensor(images[chosen]), chosen


def image_grid(x: torch.Tensor, nrow: int = 8, scale: int = 2, gap: int = 2):
    """A PIL grid of [N, 1, H, W] images in [-1, 1], enlarged ``scale`` times (nearest) for viewing."""
    from PIL import Image

    tiles = to_uint8(x)
    n, h, w = tiles.shape
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + gap) + gap, nrow * (w + gap) + gap), 128, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        canvas[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = tile
    image = Image.fromarray(canvas, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def from_pil(images) -> torch.Tensor:
    """PIL images (any mode) -> [N, 1, H, W] in [-1, 1], grayscale, as the metrics expect."""
    arrays = [np.asarray(im.convert("L"), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
