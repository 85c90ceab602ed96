"""Pack building on its own: sizes, formats and the manifest, with RGB and grayscale images
(the demo model is grayscale)."""
from __future__ import annotations

import csv
import io
import uuid
import zipfile
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from PIL import Image

from app.packfiles import FORMATS, SIZES, PackSource, encode, resize, write_pack_zip
from app.storage import LocalStorage

EXPECTED = {"original": (60, 40), "1024": (1024, 683), "2048": (2048, 1365), "square": (40, 40), "4x5": (32, 40)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_sizes(size, mode):
    assert resize(Image.new(mode, (60, 40)), size).size == EXPECTED[size]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_formats(fmt, mode):
    data = encode(Image.new(mode, (32, 32), "white" if mode != "L" else 200), fmt)
    assert Image.open(io.BytesIO(data)).format == FORMATS[fmt][0]


def test_zip_with_manifest(tmp_path):
    storage = LocalStorage(tmp_path / "objects")
    created = datetime(2026, 1, 2, 3, 4, 5)
    images = []
    for seed in (3, 7):
        key = f"teams/t/galleries/g/images/{seed}.png"
        buf = io.BytesIO()
        Image.new("L", (32, 32), seed * 10).save(buf, format="PNG")
        storage.put_bytes(key, buf.getvalue())
        images.append(SimpleNamespace(key=key, seed=seed, prompt="a photo of sks bottle", created_at=created,
                                      review="approved" if seed == 3 else "new"))
    pack = SimpleNamespace(id=uuid.uuid4(), format="webp", size="square")
    path = tmp_path / "pack.zip"
    assert write_pack_zip(storage, pack, images, PackSource("run-1", "builtin:fmnist-ddpm-32"), path) == 2
    with zipfile.ZipFile(path) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        assert [r["file"] for r in rows] == ["image-0001-seed3.webp", "image-0002-seed7.webp"]
        assert Image.open(io.BytesIO(zf.read(rows[0]["file"]))).size == (32, 32)
    assert rows[1]["review"] == "new"
    assert rows[0] == {"file": "image-0001-seed3.webp", "width": "32", "height": "32", "review": "approved",
                       "prompt": "a photo of sks bottle", "seed": "3", "run": "run-1",
                       "base_model": "builtin:fmnist-ddpm-32",
                       "created": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).isoformat()}


@pytest.mark.parametrize("prompt", ['=cmd|"/C calc"!A0', "=HYPERLINK(\"http://evil.example\",\"click\")",
                                    "+1+2", "-2+3", "@SUM(1,2)", "\t=1+1", "\r=1+1"])
def test_manifest_cells_are_never_formulas(tmp_path, prompt):
    """The finding: a prompt or class word starting with =, +, -, @ was written as is, and
    Excel and LibreOffice evaluate it (OWASP's CSV injection). Each such cell now starts
    with a single quote, which spreadsheets show as text; the prompt reads back whole."""
    storage = LocalStorage(tmp_path / "objects")
    buf = io.BytesIO()
    Image.new("L", (32, 32), 100).save(buf, format="PNG")
    storage.put_bytes("k.png", buf.getvalue())
    images = [SimpleNamespace(key="k.png", seed=1, prompt=prompt, review="approved",
                              created_at=datetime(2026, 1, 2))]
    path = tmp_path / "pack.zip"
    write_pack_zip(storage, SimpleNamespace(id=uuid.uuid4(), format="png", size="original"), images,
                   PackSource("run-1", "=base"), path)
    with zipfile.ZipFile(path) as zf:
        row = next(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode(), newline="")))
    assert row["prompt"] == "'" + prompt and row["base_model"] == "'=base"
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())
