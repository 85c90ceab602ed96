"""The JSON API's answers as pydantic models, so that /docs (OpenAPI) shows each one's shape.

The serializers (app/serializers.py) still build the dicts; a route names its model with
``response_model`` and FastAPI checks the dict against it. Three rules keep every answer
exactly what the dict says:
- ``extra="forbid"``: a key the serializer writes but the model lacks fails the request
  (a 500 the tests see) instead of vanishing from the answer;
- the routes answer with ``response_model_exclude_unset=True`` (``API`` below), so a key the
  dict leaves out (a photo set's photos, a run's checkpoint when it was not loaded) stays
  out rather than turning into null;
- numbers that may be whole or not are ``Number`` (int | float): pydantic keeps each as it
  came (1 stays 1, 0.5 stays 0.5), where ``float`` would turn 1 into 1.0; ids and times are
  the strings the serializers made.
The fields are declared in the serializers' order, so the keys keep their order too.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Number = int | float

# keyword arguments of every JSON route: the answer holds the keys the dict holds, no more
API = {"response_model_exclude_unset": True}


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ok(Out):
    ok: bool


class Health(Out):
    status: str  # "ok" or "unavailable"
    checks: dict[str, str]  # database, broker, storage (and workers in the embedded default): "ok" or the error


# ------------------------------------------------------------------------------- auth
class UserOut(Out):
    id: str
    email: str
    team_id: str


class SignedIn(Out):
    user: UserOut
    csrf_token: str  # send it as the X-CSRF-Token header on every POST, PATCH and DELETE


# ---------------------------------------------------------------- base models, presets
class BaseModelOut(Out):
    spec: str
    family: str  # ddpm, sd1, sd2, sdxl; "" when only the worker can tell
    kind: str
    source: str
    resolution: int | None
    refused: str | None  # why DomainStudio does not adapt it


class BaseModels(Out):
    base_models: list[str]
    details: list[BaseModelOut]


class PresetOut(Out):
    name: str
    label: str
    description: str
    settings: dict[str, Any]


class ExpertSetting(Out):
    type: str  # int, float, bool, str
    min: Number | None
    max: Number | None
    choices: list[str] | None


class Presets(Out):
    presets: list[PresetOut]
    expert_settings: dict[str, ExpertSetting]


# ------------------------------------------------------------------ photo sets, photos
class PhotoOut(Out):
    id: str
    photo_set_id: str
    filename: str
    sha256: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    thumb_url: str
    url: str
    created_at: str
    caption: str


class PhotoSetOut(Out):
    id: str
    name: str
    class_word: str
    notes: str
    created_at: str
    photos: list[PhotoOut] | None = None  # a single photo set only
    photo_count: int | None = None


class PhotoSets(Out):
    photo_sets: list[PhotoSetOut]


class RefusedFile(Out):
    file: str
    reason: str


class Uploaded(Out):
    added: list[PhotoOut]
    refused: list[RefusedFile]


# ------------------------------------------------------------------------------ waiting
class AheadOut(Out):
    kind: str  # "run" or "gallery"
    id: str
    photo_set: str
    status: str
    step: int
    total_steps: int
    eta_seconds: Number | None


class QueueOut(Out):
    position: int  # 1: the next job a worker takes
    others_ahead: int  # other teams' jobs ahead, counted only
    wait_seconds: Number | None  # None: some job ahead has no estimate yet
    ahead: list[AheadOut]  # this team's jobs ahead


# ------------------------------------------------------------------ runs, checkpoints
class DownloadOut(Out):
    format: str  # diffusers, kohya or model
    name: str
    url: str
    tools: str | None


class CheckpointOut(Out):
    id: str
    run_id: str
    kind: str  # "lora" or "full"
    base_model: str
    size_bytes: int
    files: list[str]
    settings: dict[str, Any]
    download_name: str
    download_url: str
    created_at: str
    downloads: list[DownloadOut]


class ImageOut(Out):
    id: str
    gallery_id: str
    seed: int
    prompt: str | None
    width: int
    height: int
    review: str  # new, approved, rejected
    thumb_url: str
    url: str
    nearest_distance: Number | None
    nearest_photo_id: str | None
    near_copy: bool
    created_at: str


class PackOut(Out):
    id: str
    gallery_id: str
    selection: str
    format: str
    size: str
    sizes: list[str]
    exclude_near_copies: bool
    image_count: int
    status: str
    size_bytes: int | None
    estimated_bytes: int | None
    progress: Number  # 0..1 while building
    cancel_requested: bool
    error: str | None
    download_url: str | None
    created_at: str


class GalleryOut(Out):
    id: str
    run_id: str
    size: int
    prompt: str | None
    steps: int
    status: str
    error: str | None
    cancel_requested: bool
    feature_network: str | None
    near_copy_threshold: Number | None
    diversity: dict[str, Any] | None
    created_at: str
    queue: QueueOut | None
    images: list[ImageOut] | None = None  # a single gallery only
    image_count: int | None = None
    packs: list[PackOut] | None = None


class RunOut(Out):
    id: str
    photo_set_id: str
    preset: str
    base_model: str
    settings: dict[str, Any]
    gallery_size: int
    status: str
    stage: str
    cancel_requested: bool
    step: int
    total_steps: int
    progress: Number
    losses: dict[str, Any]
    eta_seconds: Number | None
    elapsed_seconds: Number | None
    warnings: list[str]
    error: str | None
    previews: list[str]
    preview_step: int
    stage_times: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue: QueueOut | None
    checkpoint: CheckpointOut | None = None  # when the answer loaded it
    galleries: list[GalleryOut] | None = None  # a single run only


class Runs(Out):
    runs: list[RunOut]


# --------------------------------------------------------------------------- run report
class SettingOut(Out):
    name: str
    label: str
    help: str
    value: Any
    chosen: bool  # picked for this run (preset or expert); else the base model's default


class StageTime(Out):
    stage: str
    seconds: Number | None


class TrainedPrompt(Out):
    prompt: str
    photos: list[str]


class RunReport(Out):
    run: RunOut
    settings: list[SettingOut]
    loss_history: list[dict[str, Any]]  # {"step", "elapsed", "terms": {name: value}}
    loss_terms: list[str]
    stage_times: list[StageTime]
    total_seconds: Number | None
    galleries: list[GalleryOut]
    trained_prompts: list[TrainedPrompt]


# ------------------------------------------------------------------- review and packs
class ReviewCounts(Out):
    new: int
    approved: int
    rejected: int
    near: int
    all: int


class BulkReviewed(Out):
    updated: int
    counts: ReviewCounts


class PackEstimate(Out):
    estimated_bytes: int | None
    image_count: int
    file_count: int
    sizes: list[str]
    format: str
    reason: str | None  # why nothing would be packed
    estimated_text: str  # estimated_bytes in the reader's units
