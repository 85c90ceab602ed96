"""The JSON API's response models (app/schemas.py): /docs shows a shape for every JSON
answer, and passing an answer through its model changes nothing in it (no key added,
dropped or reordered, no 1 turned into 1.0)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from app import schemas
from app import serializers as ser
from app.models import Checkpoint, Gallery, Image, Pack, Photo, PhotoSet, Run
from app.services.waiting import Ahead, QueueSpot
from app.settings import Settings

JSON_TYPES = ("application/json",)
EMPTY_SCHEMAS = ({}, {"type": "object"}, {"type": "object", "additionalProperties": True})


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_json_answer_of_the_openapi_schema_has_a_shape(tmp_path):
    from app.main import create_app

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_backend="local",
                        broker_url="memory://", secret_key="test-secret-key-schemas")
    spec = create_app(settings).openapi()
    missing, answers = [], 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for code, response in op["responses"].items():
                if not code.startswith("2"):
                    continue
                content = response.get("content")
                if not content:
                    missing.append(f"{method.upper()} {path} {code}: no content type")
                for media, body in (content or {}).items():
                    if media not in JSON_TYPES:
                        continue
                    answers += 1
                    schema = _resolve(spec, body.get("schema", {}))
                    title_free = {k: v for k, v in schema.items() if k not in ("title", "description")}
                    if title_free in EMPTY_SCHEMAS or not schema.get("properties"):
                        missing.append(f"{method.upper()} {path} {code}: {schema}")
    assert answers >= 30  # the JSON API, /health, bulk review, the pack estimate, the run report
    assert not missing, "\n".join(missing)


# ----------------------------------------------------------- answers pass unchanged
NOW = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)


def _unchanged(model, answer: dict) -> None:
    """The answer as FastAPI sends it through ``model`` equals the answer as built, key order
    and number types included."""
    plain = json.loads(json.dumps(answer))
    through = model.model_validate(answer).model_dump(mode="json", **{"exclude_unset": True})
    assert json.dumps(through) == json.dumps(plain)


def _photo(photo_set_id, caption=None) -> Photo:
    return Photo(id=uuid.uuid4(), photo_set_id=photo_set_id, filename="a.jpg", sha256="0" * 64, content_type="image/jpeg",
                 width=64, height=48, size_bytes=1234, key="k", thumb_key="t", caption=caption, created_at=NOW)


def _run(**over) -> Run:
    values = dict(id=uuid.uuid4(), photo_set_id=uuid.uuid4(), preset="quick", base_model="builtin:tiny-ddpm",
                  settings={"steps": 10, "learning_rate": 1e-4}, gallery_size=8, status="running", stage="adapt",
                  cancel_requested=False, step=3, total_steps=10, losses={"loss": 0.5, "step": 3},
                  eta_seconds=12, elapsed_seconds=3.25, warnings=["w"], preview_count=2, preview_step=3,
                  stage_times={"queued": 1, "download": 0.5}, created_at=NOW, started_at=NOW, finished_at=None,
                  loss_history=[{"step": 1, "elapsed": 0.1, "terms": {"loss": 1.0}}])
    values.update(over)
    return Run(**values)


def _checkpoint(run: Run, kind="lora") -> Checkpoint:
    return Checkpoint(id=uuid.uuid4(), run_id=run.id, kind=kind, base_model=run.base_model, prefix="p",
                      download_key="p/lora.safetensors", download_name="run.safetensors", size_bytes=99,
                      files=["lora.safetensors", "lora_kohya.safetensors"], settings={"steps": 10},
                      prompts={"a.jpg": "a photo of sks bottle"}, created_at=NOW)


def _gallery(run_id, **over) -> Gallery:
    values = dict(id=uuid.uuid4(), run_id=run_id, size=8, prompt=None, steps=2, status="succeeded", cancel_requested=None,
                  feature_network="builtin", near_copy_threshold=0.25, diversity={"images": 8, "mean_pairwise_distance": 1},
                  created_at=NOW)
    values.update(over)
    return Gallery(**values)


def _image(gallery_id, **over) -> Image:
    values = dict(id=uuid.uuid4(), gallery_id=gallery_id, seed=7, prompt="p", width=32, height=32, review="new",
                  nearest_distance=1, nearest_photo_id=uuid.uuid4(), near_copy=False, created_at=NOW)
    values.update(over)
    return Image(**values)


def _pack(gallery_id, **over) -> Pack:
    values = dict(id=uuid.uuid4(), gallery_id=gallery_id, selection="approved", format="png", size="original,512",
                  exclude_near_copies=False, image_ids=["a", "b"], status="succeeded", size_bytes=10, estimated_bytes=12,
                  progress=1, cancel_requested=False, created_at=NOW)
    values.update(over)
    return Pack(**values)


def test_photos_and_photo_sets_pass_unchanged():
    ps = PhotoSet(id=uuid.uuid4(), name="Bottles", class_word="bottle", notes="", created_at=NOW)
    photos = [_photo(ps.id), _photo(ps.id, caption="on a table")]
    _unchanged(schemas.PhotoOut, ser.photo(photos[0]))
    _unchanged(schemas.PhotoSetOut, ser.photo_set(ps, photos=photos))
    _unchanged(schemas.PhotoSetOut, ser.photo_set(ps))  # created: neither photos nor a count
    _unchanged(schemas.PhotoSets, {"photo_sets": [ser.photo_set(ps, count=0), ser.photo_set(ps, count=3)]})
    _unchanged(schemas.Uploaded, {"added": [ser.photo(photos[0])], "refused": [{"file": "x.gif", "reason": "not a photo"}]})


@pytest.mark.parametrize("queued", [False, True])
def test_runs_galleries_images_and_packs_pass_unchanged(queued):
    run = _run()
    run.checkpoint = _checkpoint(run)
    spot = QueueSpot(2, [Ahead("run", "x", "Bottles", "running", 3, 10, 4)], others_ahead=1, wait_seconds=7) if queued else None
    galleries = [_gallery(run.id), _gallery(run.id, status="queued", near_copy_threshold=None, diversity=None, prompt="p")]
    _unchanged(schemas.RunOut, ser.run(run, galleries=galleries, queue=spot))
    _unchanged(schemas.RunOut, ser.run(_run(eta_seconds=None, total_steps=0, status="queued", started_at=None), queue=spot))
    _unchanged(schemas.Runs, {"runs": [ser.run(run)]})
    _unchanged(schemas.CheckpointOut, ser.checkpoint(_checkpoint(run, kind="full")))
    g = galleries[0]
    images = [_image(g.id), _image(g.id, nearest_distance=0.125, nearest_photo_id=None, near_copy=True)]
    answer = ser.gallery(g, images=images, queue=spot)
    answer["packs"] = [ser.pack(_pack(g.id)), ser.pack(_pack(g.id, status="running", progress=0.5, size_bytes=None))]
    _unchanged(schemas.GalleryOut, answer)
    _unchanged(schemas.GalleryOut, ser.gallery(galleries[1]))
    _unchanged(schemas.ImageOut, ser.image(images[1]))


def test_the_run_report_passes_unchanged():
    run = _run(status="succeeded", finished_at=NOW)
    run.checkpoint = _checkpoint(run)
    _unchanged(schemas.RunReport, ser.run_report(run, [_gallery(run.id)]))


def test_a_key_the_model_lacks_fails_loudly():
    """A serializer that grows a key without its model is a 500 in the tests, not a key that
    silently vanishes from the answer."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        schemas.ImageOut.model_validate({**ser.image(_image(uuid.uuid4())), "new_key": 1})
