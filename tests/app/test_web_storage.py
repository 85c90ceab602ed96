"""Storage round trips on both backends: the local folder and S3 (moto's server on loopback)."""
from __future__ import annotations

import uuid

import httpx
import pytest

from app.settings import Settings
from app.storage import LocalStorage, ObjectNotFound, S3Storage, StorageError


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_endpoint_url=endpoint,
                        s3_bucket=f"roundtrip-{uuid.uuid4().hex[:8]}", s3_access_key_id="k", s3_secret_access_key="s")
    return S3Storage(settings)  # the bucket does not exist yet: created on first write


def test_round_trip(storage, tmp_path):
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one chunk
    storage.put_bytes("teams/t1/a/b.bin", data)
    assert storage.get_bytes("teams/t1/a/b.bin") == data
    assert storage.size("teams/t1/a/b.bin") == len(data)
    assert storage.exists("teams/t1/a/b.bin")
    assert b"".join(storage.iter_chunks("teams/t1/a/b.bin")) == data
    storage.download("teams/t1/a/b.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data

    src = tmp_path / "src.bin"
    src.write_bytes(b"file contents")
    storage.put_file("teams/t1/a/c.bin", src)
    storage.put_bytes("teams/t1/other.bin", b"x")
    storage.put_bytes("teams/t2/a/b.bin", b"other team")
    assert storage.list_keys("teams/t1/a") == ["teams/t1/a/b.bin", "teams/t1/a/c.bin"]

    storage.put_bytes("teams/t1/a/b.bin", b"overwritten")  # fixed keys: a retry overwrites
    assert storage.get_bytes("teams/t1/a/b.bin") == b"overwritten"

    storage.delete_prefix("teams/t1/a")
    assert storage.list_keys("teams/t1/a") == []
    assert storage.exists("teams/t1/other.bin") and storage.get_bytes("teams/t2/a/b.bin") == b"other team"
    storage.delete("teams/t1/other.bin")
    storage.delete("teams/t1/other.bin")  # deleting twice is fine
    assert not storage.exists("teams/t1/other.bin")
    storage.ping()


def test_missing_objects_and_bad_keys(storage, tmp_path):
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("teams/t1/missing")
    with pytest.raises(ObjectNotFound):
        storage.size("teams/t1/missing")
    with pytest.raises(ObjectNotFound):
        storage.download("teams/t1/missing", tmp_path / "x")
    for bad in ("../etc/passwd", "/abs", "teams//x", "teams/./x", "teams/../x", ""):
        with pytest.raises(ValueError):
            storage.put_bytes(bad, b"x")


def test_presigned_url_on_s3_expires_and_downloads(s3_endpoint, tmp_path):
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket="presign-test",
                        s3_access_key_id="k", s3_secret_access_key="s", presign_seconds=60)
    storage = S3Storage(settings)
    storage.put_bytes("teams/t/packs/p.zip", b"zip bytes")
    url = storage.presigned_url("teams/t/packs/p.zip", "pack.zip")
    assert "X-Amz-Expires=60" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"zip bytes"
    assert "response-content-disposition=attachment" in url  # S3 answers with this header


def test_local_backend_serves_through_the_app(tmp_path):
    assert LocalStorage(tmp_path).presigned_url("teams/t/x", "x") is None


def test_unreachable_s3_raises_storage_error(tmp_path):
    port = 9  # the discard port: nothing listens there
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_endpoint_url=f"http://127.0.0.1:{port}",
                        s3_access_key_id="k", s3_secret_access_key="s")
    storage = S3Storage(settings)
    with pytest.raises(StorageError) as info:
        storage.put_bytes("teams/t/x", b"x")
    assert "unreachable" in str(info.value)


def test_presigned_urls_use_the_public_endpoint(s3_endpoint, tmp_path):
    settings = Settings(data_dir=tmp_path, storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket="public-test",
                        s3_public_endpoint_url="http://files.example.com:9000", s3_access_key_id="k",
                        s3_secret_access_key="s")
    storage = S3Storage(settings)
    storage.put_bytes("teams/t/x.zip", b"x")
    assert storage.presigned_url("teams/t/x.zip", "x.zip").startswith("http://files.example.com:9000/public-test/")
