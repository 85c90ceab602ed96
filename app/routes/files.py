"""Objects a signed-in user may fetch: photos, previews, images, checkpoints, packs. Each
route checks the team first; another team's id answers 404 like a missing one."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse, StreamingResponse

from app import repositories as repo
from app.deps import Ctx, ctx
from app import serializers as ser
from app.errors import BadInput, NotFound, Unavailable
from app.models import JobStatus
from app.services import packs, runs
from app.storage import ObjectNotFound, StorageError, run_prefix

router = APIRouter(tags=["files"])


def binary(*media_types: str, redirect: bool = False) -> dict:
    """A route's answer for /docs: the file's bytes in one of ``media_types`` (not JSON), or
    with ``redirect`` a 303 to a short-lived presigned URL on S3."""
    responses = {200: {"description": "the file", "content": {
        m: {"schema": {"type": "string", "format": "binary"}} for m in media_types}}}
    if redirect:
        responses[303] = {"description": "S3: a presigned URL of the file (Location)"}
    return {"response_class": StreamingResponse, "responses": responses}


def stream(c: Ctx, key: str, media_type: str, filename: str | None = None, cache: bool = True) -> StreamingResponse:
    try:
        size = c.storage.size(key)
        chunks = c.storage.iter_chunks(key)
    except ObjectNotFound:
        raise NotFound("file not found") from None
    except StorageError as exc:
        raise Unavailable("the object store is unreachable") from exc
    headers = {"Content-Length": str(size),
               "Cache-Control": "private, max-age=3600" if cache else "private, no-store"}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def download(c: Ctx, key: str, filename: str, media_type: str):
    """A short-lived presigned URL on S3; streamed through the app on the local backend."""
    try:
        url = c.storage.presigned_url(key, filename)
    except StorageError as exc:
        raise Unavailable("the object store is unreachable") from exc
    if url:
        return RedirectResponse(url, status_code=303)
    return stream(c, key, media_type, filename, cache=False)


@router.get("/photos/{photo_id}/thumb", **binary("image/jpeg"))
def photo_thumb(photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    p = repo.photo(c.db, c.team_id, photo_id)
    if p is None:
        raise NotFound("photo not found")
    return stream(c, p.thumb_key, "image/jpeg")


@router.get("/photos/{photo_id}/file", **binary("image/jpeg", "image/png", "image/webp"))
def photo_file(photo_id: uuid.UUID, c: Ctx = Depends(ctx)):
    p = repo.photo(c.db, c.team_id, photo_id)
    if p is None:
        raise NotFound("photo not found")
    return stream(c, p.key, p.content_type)


@router.get("/images/{image_id}/thumb", **binary("image/jpeg"))
def image_thumb(image_id: uuid.UUID, c: Ctx = Depends(ctx)):
    i = repo.image(c.db, c.team_id, image_id)
    if i is None:
        raise NotFound("image not found")
    return stream(c, i.thumb_key, "image/jpeg")


@router.get("/images/{image_id}/file", **binary("image/png"))
def image_file(image_id: uuid.UUID, c: Ctx = Depends(ctx)):
    i = repo.image(c.db, c.team_id, image_id)
    if i is None:
        raise NotFound("image not found")
    return stream(c, i.key, "image/png")


@router.get("/runs/{run_id}/previews/{index}", **binary("image/png"))
def run_preview(run_id: uuid.UUID, index: int, c: Ctx = Depends(ctx)):
    run = runs.get_run(c.db, c.team_id, run_id)
    if not 0 <= index < run.preview_count:
        raise NotFound("preview not found")
    return stream(c, f"{run_prefix(run.team_id, run.id)}/previews/{index}.png", "image/png", cache=False)


@router.get("/runs/{run_id}/checkpoint/download", **binary("application/octet-stream", "application/zip", redirect=True))
def checkpoint_download(run_id: uuid.UUID, format: str | None = None, c: Ctx = Depends(ctx)):
    """The checkpoint's main file; ``format=kohya``: a LoRA run's kohya-layout file."""
    run = runs.get_run(c.db, c.team_id, run_id)
    if run.checkpoint is None:
        raise NotFound("this run has no checkpoint yet")
    ck = run.checkpoint
    if format == "kohya":
        if ser.KOHYA_FILE not in (ck.files or []):
            raise NotFound("this checkpoint has no kohya-format LoRA file (only LoRA runs have one)")
        return download(c, f"{ck.prefix}/{ser.KOHYA_FILE}", ser.kohya_download_name(ck), "application/octet-stream")
    if format not in (None, "", "diffusers"):
        raise BadInput("format must be diffusers or kohya")
    media = "application/zip" if ck.download_name.endswith(".zip") else "application/octet-stream"
    return download(c, ck.download_key, ck.download_name, media)


@router.get("/packs/{pack_id}/download", **binary("application/zip", redirect=True))
def pack_download(pack_id: uuid.UUID, c: Ctx = Depends(ctx)):
    pack = packs.get_pack(c.db, c.team_id, pack_id)
    if pack.status != JobStatus.SUCCEEDED:
        raise NotFound("this pack is not ready yet")
    gallery = repo.gallery(c.db, c.team_id, pack.gallery_id)
    return download(c, pack.key, packs.pack_filename(gallery, pack), "application/zip")
