"""Rows to JSON for the API (and for the pages' JavaScript)."""
from __future__ import annotations

from app import i18n
from app.errors import N_
from app.models import Checkpoint, Gallery, Image, JobStatus, Pack, Photo, PhotoSet, Run
from app.progress import STAGES, total_seconds
from app.setting_labels import describe_settings
from worker.domainstudio.layout import KOHYA_FILE


def photo(p: Photo) -> dict:
    return {
        "id": str(p.id), "photo_set_id": str(p.photo_set_id), "filename": p.filename, "sha256": p.sha256,
        "content_type": p.content_type, "width": p.width, "height": p.height, "size_bytes": p.size_bytes,
        "thumb_url": f"/photos/{p.id}/thumb", "url": f"/photos/{p.id}/file", "created_at": p.created_at.isoformat(),
        "caption": p.caption or "",
    }


def photo_set(ps: PhotoSet, photos: list[Photo] | None = None, count: int | None = None) -> dict:
    out = {
        "id": str(ps.id), "name": ps.name, "class_word": ps.class_word, "notes": ps.notes,
        "created_at": ps.created_at.isoformat(),
    }
    if photos is not None:
        out["photos"] = [photo(p) for p in photos]
        out["photo_count"] = len(photos)
    elif count is not None:
        out["photo_count"] = count
    return out


def checkpoint(c: Checkpoint) -> dict:
    return {
        "id": str(c.id), "run_id": str(c.run_id), "kind": c.kind, "base_model": c.base_model,
        "size_bytes": c.size_bytes, "files": c.files, "settings": c.settings, "download_name": c.download_name,
        "download_url": f"/runs/{c.run_id}/checkpoint/download", "created_at": c.created_at.isoformat(),
        "downloads": checkpoint_downloads(c),
    }


# Which LoRA file each tool takes (the diffusers file is the checkpoint's main download).
LORA_TOOLS = {
    "diffusers": N_("diffusers: pipe.load_lora_weights(file)"),
    "kohya": N_("ComfyUI (LoraLoader), AUTOMATIC1111 / Forge (models/Lora), SD.Next, InvokeAI"),
}


def checkpoint_downloads(c: Checkpoint) -> list[dict]:
    """The checkpoint's files to download: a LoRA run has its diffusers file and, beside it,
    the same adapter in kohya's layout; each with the tools that take it."""
    main = {"format": "diffusers" if c.kind == "lora" else "model", "name": c.download_name,
            "url": f"/runs/{c.run_id}/checkpoint/download", "tools": LORA_TOOLS["diffusers"] if c.kind == "lora" else None}
    out = [main]
    if c.kind == "lora" and KOHYA_FILE in (c.files or []):
        out.append({"format": "kohya", "name": kohya_download_name(c),
                    "url": f"/runs/{c.run_id}/checkpoint/download?format=kohya", "tools": LORA_TOOLS["kohya"]})
    return out


def kohya_download_name(c: Checkpoint) -> str:
    return c.download_name.replace(".safetensors", "") + "-kohya.safetensors"


def run(r: Run, galleries: list[Gallery] | None = None, lang: str | None = None, queue=None) -> dict:
    """``lang``: the language of the error text (None: the stored English); ``queue``: where
    a queued run stands (app.services.waiting.QueueSpot)."""
    out = {
        "id": str(r.id), "photo_set_id": str(r.photo_set_id), "preset": r.preset, "base_model": r.base_model,
        "settings": r.settings, "gallery_size": r.gallery_size, "status": r.status, "stage": r.stage or "",
        "cancel_requested": r.cancel_requested, "step": r.step, "total_steps": r.total_steps,
        "progress": round(r.step / r.total_steps, 4) if r.total_steps else 0.0, "losses": r.losses or {},
        "eta_seconds": r.eta_seconds, "elapsed_seconds": r.elapsed_seconds, "warnings": i18n.stored_warnings(lang, r),
        "error": i18n.stored_error(lang, r),
        "previews": [f"/runs/{r.id}/previews/{i}?v={r.preview_step}" for i in range(r.preview_count)],
        "preview_step": r.preview_step, "stage_times": r.stage_times or {}, "created_at": r.created_at.isoformat(),
        "started_at": r.started_at.isoformat() if r.started_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "queue": queue.as_dict() if queue is not None else None,
    }
    if "checkpoint" in r.__dict__:  # only when eagerly loaded
        out["checkpoint"] = checkpoint(r.checkpoint) if r.checkpoint else None
    if galleries is not None:
        out["galleries"] = [gallery(g, lang=lang) for g in galleries]
    return out


def run_report(r: Run, galleries: list[Gallery], lang: str | None = None) -> dict:
    """Everything the run report shows: settings with readable names (the resolved ones
    once the checkpoint holds them), the loss curves, each gallery's diversity and the
    time each stage took."""
    values = r.checkpoint.settings if r.checkpoint is not None and r.checkpoint.settings else r.settings
    times = r.stage_times or {}
    return {
        "run": run(r, lang=lang),
        "settings": describe_settings(values, chosen=r.settings),
        "loss_history": r.loss_history or [],
        "loss_terms": sorted({t for p in r.loss_history or [] for t in p.get("terms", {})}),
        "stage_times": [{"stage": s, "seconds": times.get(s)} for s in STAGES]
        + [{"stage": s, "seconds": v} for s, v in times.items() if s not in STAGES],
        "total_seconds": total_seconds(times),
        "galleries": [{**gallery(g, lang=lang), "feature_network": g.feature_network, "near_copy_threshold": g.near_copy_threshold,
                       "diversity": g.diversity} for g in galleries],
        "trained_prompts": trained_prompts(r.checkpoint.prompts if r.checkpoint is not None else None),
    }


def trained_prompts(prompts: dict[str, str] | None) -> list[dict]:
    """The prompts a text-to-image run trained with, each with its photos (most photos first)."""
    groups: dict[str, list[str]] = {}
    for name, prompt in (prompts or {}).items():
        groups.setdefault(prompt, []).append(name)
    return [{"prompt": p, "photos": sorted(names)} for p, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def image(i: Image) -> dict:
    return {
        "id": str(i.id), "gallery_id": str(i.gallery_id), "seed": i.seed, "prompt": i.prompt, "width": i.width,
        "height": i.height, "review": i.review, "thumb_url": f"/images/{i.id}/thumb", "url": f"/images/{i.id}/file",
        "nearest_distance": i.nearest_distance, "nearest_photo_id": str(i.nearest_photo_id) if i.nearest_photo_id else None,
        "near_copy": bool(i.near_copy), "created_at": i.created_at.isoformat(),
    }


def gallery(g: Gallery, images: list[Image] | None = None, lang: str | None = None, queue=None) -> dict:
    out = {
        "id": str(g.id), "run_id": str(g.run_id), "size": g.size, "prompt": g.prompt, "steps": g.steps,
        "status": g.status, "error": i18n.stored_error(lang, g), "cancel_requested": bool(g.cancel_requested),
        "feature_network": g.feature_network, "near_copy_threshold": g.near_copy_threshold, "diversity": g.diversity,
        "created_at": g.created_at.isoformat(), "queue": queue.as_dict() if queue is not None else None,
    }
    if images is not None:
        out["images"] = [image(i) for i in images]
        out["image_count"] = len(images)
    return out


def pack(p: Pack, lang: str | None = None) -> dict:
    return {
        "id": str(p.id), "gallery_id": str(p.gallery_id), "selection": p.selection, "format": p.format,
        "size": p.size, "sizes": p.size.split(","), "exclude_near_copies": bool(p.exclude_near_copies),
        "image_count": len(p.image_ids), "status": p.status, "size_bytes": p.size_bytes,
        "estimated_bytes": p.estimated_bytes, "progress": p.progress or 0.0,
        "cancel_requested": bool(p.cancel_requested),
        "error": i18n.stored_error(lang, p), "download_url": f"/packs/{p.id}/download" if p.status == JobStatus.SUCCEEDED else None,
        "created_at": p.created_at.isoformat(),
    }
