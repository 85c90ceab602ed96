"""Object storage behind one small interface, with an S3 backend and a local-folder backend.

Keys are namespaced by team (``teams/<team>/...``) and fixed per object, so a retried job
overwrites what it wrote before instead of leaving a duplicate.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from app.settings import Settings

CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """The object store could not be reached or refused the operation."""


class ObjectNotFound(StorageError):
    pass


class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def iter_chunks(self, key: str) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def presigned_url(self, key: str, filename: str) -> str | None: ...
    def ping(self) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStorage:
    """Objects as files under one folder; writes go to a temporary file and are renamed,
    so a reader never sees half an object."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write(self, key: str, writer) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        self._write(key, lambda f: f.write(data))

    def put_file(self, key, path, content_type="application/octet-stream"):
        def copy(f):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)

        self._write(key, copy)

    def get_bytes(self, key):
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def download(self, key, path):
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def iter_chunks(self, key):
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with f:
            while chunk := f.read(CHUNK):
                yield chunk

    def size(self, key):
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key):
        return self._path(key).is_file()

    def delete(self, key):
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix):
        target = self._path(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()

    def list_keys(self, prefix):
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".part-")
        )

    def presigned_url(self, key, filename):
        return None  # the app streams local objects itself

    def ping(self):
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"object folder {self.root} is not writable")


class S3Storage:
    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.presign_seconds = settings.presign_seconds
        def client(endpoint):
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=settings.s3_secret_access_key,
                config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}, signature_version="s3v4"),
            )

        self.client = client(settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url
        self.presign_client = client(public) if public and public != settings.s3_endpoint_url else self.client
        self._bucket_checked = False

    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(str(args or kwargs)) from None
            raise StorageError(f"object storage refused the request: {code}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"object storage is unreachable: {exc}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket on first use if it does not exist yet."""
        if self._bucket_checked:
            return
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
        except ObjectNotFound:
            create = {"Bucket": self.bucket}
            if self.client.meta.region_name not in (None, "us-east-1"):
                create["CreateBucketConfiguration"] = {"LocationConstraint": self.client.meta.region_name}
            self._call(self.client.create_bucket, **create)
        self._bucket_checked = True

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        self.ensure_bucket()
        self._call(self.client.put_object, Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type)

    def put_file(self, key, path, content_type="application/octet-stream"):
        # upload_file streams in parts (multipart above 8 MB): memory stays bounded
        self.ensure_bucket()
        self._call(
            self.client.upload_file, str(path), self.bucket, _check_key(key), ExtraArgs={"ContentType": content_type}
        )

    def get_bytes(self, key):
        self.ensure_bucket()
        obj = self._call(self.client.get_object, Bucket=self.bucket, Key=_check_key(key))
        return obj["Body"].read()

    def download(self, key, path):
        self.size(key)  # raises ObjectNotFound cleanly
        self._call(self.client.download_file, self.bucket, _check_key(key), str(path))

    def iter_chunks(self, key):
        self.ensure_bucket()
        obj = self._call(self.client.get_object, Bucket=self.bucket, Key=_check_key(key))
        yield from obj["Body"].iter_chunks(CHUNK)

    def size(self, key):
        self.ensure_bucket()
        head = self._call(self.client.head_object, Bucket=self.bucket, Key=_check_key(key))
        return int(head["ContentLength"])

    def exists(self, key):
        try:
            self.size(key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, key):
        self.ensure_bucket()
        self._call(self.client.delete_object, Bucket=self.bucket, Key=_check_key(key))

    def delete_prefix(self, prefix):
        keys = self.list_keys(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def list_keys(self, prefix):
        self.ensure_bucket()
        prefix = _check_key(prefix.rstrip("/")) + "/"
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        for page in pages:
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def presigned_url(self, key, filename):
        self.ensure_bucket()
        return self._call(
            self.presign_client.generate_presigned_url,
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": _check_key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=self.presign_seconds,
        )

    def ping(self):
        self._bucket_checked = False
        self.ensure_bucket()


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.resolved_storage_dir)


# ---------------------------------------------------------------------------- key layout
def team_prefix(team_id) -> str:
    return f"teams/{team_id}"


def photo_key(team_id, photo_set_id, sha256: str, ext: str) -> str:
    return f"{team_prefix(team_id)}/photo-sets/{photo_set_id}/photos/{sha256}.{ext}"


def photo_thumb_key(team_id, photo_set_id, sha256: str) -> str:
    return f"{team_prefix(team_id)}/photo-sets/{photo_set_id}/thumbs/{sha256}.jpg"


def run_prefix(team_id, run_id) -> str:
    return f"{team_prefix(team_id)}/runs/{run_id}"


def gallery_prefix(team_id, gallery_id) -> str:
    return f"{team_prefix(team_id)}/galleries/{gallery_id}"


def pack_key(team_id, pack_id) -> str:
    return f"{team_prefix(team_id)}/packs/{pack_id}.zip"
