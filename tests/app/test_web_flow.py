"""The whole flow on real services: Postgres, Redis, an S3 server and a Celery worker
process, with the builtin tiny model: sign up -> photo set -> 10 photos -> run -> progress
-> gallery of 8 -> approve 4 -> pack -> the ZIP holds 4 images of the chosen size and a
manifest that matches."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import httpx
import pytest
from markupsafe import escape
from PIL import Image

from web_helpers import new_photo_set, poll, sign_up

pytestmark = pytest.mark.slow

TINY_RUN = {"preset": "quick", "base_model": "builtin:tiny-ddpm",
            "settings": {"steps": 3, "batch_size": 4, "preview_every": 2, "num_previews": 2, "checkpoint_every": 2}}


def run_flow(client, timeout: float = 180) -> dict:
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    r = client.post(f"/api/photo-sets/{ps}/runs", json=TINY_RUN)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["total_steps"] == 3

    run = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), timeout, "the run")
    assert run["status"] == "succeeded", run
    assert run["step"] == run["total_steps"] == 3
    assert set(run["losses"]) >= {"simple", "total"}
    assert len(run["previews"]) == 2 and client.get(run["previews"][0]).headers["content-type"] == "image/png"
    page = client.get(f"/runs/{run['id']}").text
    assert "succeeded" in page and "Step <strong id=\"run-step\">3</strong> of <strong id=\"run-total\">3</strong>" in page

    ck = client.get(f"/api/runs/{run['id']}/checkpoint").json()
    assert ck["kind"] == "full" and ck["base_model"] == "builtin:tiny-ddpm" and ck["size_bytes"] > 0
    assert "checkpoint.json" in ck["files"]

    [gallery] = run["galleries"]
    gallery = poll(client, f"/api/galleries/{gallery['id']}", lambda g: g["status"] in ("succeeded", "failed"), timeout,
                   "the gallery")
    assert gallery["status"] == "succeeded", gallery
    assert sorted(i["seed"] for i in gallery["images"]) == list(range(8))
    assert client.get(f"/galleries/{gallery['id']}").status_code == 200
    # the worker timed the gallery's wait in the queue after the run: the report counts it
    times = poll(client, f"/api/runs/{run['id']}", lambda r: "gallery" in r["stage_times"], timeout,
                 "the gallery's time")["stage_times"]  # written just after the gallery's status
    assert times["gallery_queued"] >= 0 and times["gallery"] > 0

    approved = gallery["images"][:4]
    for image in approved:
        r = client.post(f"/api/images/{image['id']}/review", json={"review": "approved"})
        assert r.status_code == 200 and r.json()["review"] == "approved"
    client.post(f"/api/images/{gallery['images'][5]['id']}/review", json={"review": "rejected"})

    r = client.post(f"/api/galleries/{gallery['id']}/packs", json={"selection": "approved", "format": "jpeg", "size": "1024"})
    assert r.status_code == 201, r.text
    pack = poll(client, f"/api/packs/{r.json()['id']}", lambda p: p["status"] in ("succeeded", "failed"), timeout, "the pack")
    assert pack["status"] == "succeeded", pack
    return {"run": run, "gallery": gallery, "approved": approved, "pack": pack, "checkpoint": ck}


def fetch_download(client, url: str) -> bytes:
    """The app answers with a presigned S3 URL (S3) or streams the file itself (local)."""
    r = client.get(url, follow_redirects=False)
    if r.status_code == 303:
        assert "X-Amz-Signature" in r.headers["location"]
        r = httpx.get(r.headers["location"])
    assert r.status_code == 200, r.text
    return r.content


def check_pack(client, result: dict) -> None:
    data = fetch_download(client, result["pack"]["download_url"])
    assert len(data) == result["pack"]["size_bytes"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        images = [n for n in names if n.endswith(".jpg")]
        assert len(images) == 4 and "manifest.csv" in names
        for name in images:
            img = Image.open(io.BytesIO(zf.read(name)))
            assert img.format == "JPEG" and max(img.size) == 1024
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [r["file"] for r in rows] == images
    assert sorted(int(r["seed"]) for r in rows) == sorted(i["seed"] for i in result["approved"])
    assert {r["run"] for r in rows} == {result["run"]["id"]}
    assert {r["base_model"] for r in rows} == {"builtin:tiny-ddpm"}
    assert all(r["created"] for r in rows)


def test_whole_flow_on_postgres_redis_s3(make_client, pg_settings, celery_worker):
    client = make_client(pg_settings)
    result = run_flow(client)
    check_pack(client, result)

    ck_zip = fetch_download(client, result["checkpoint"]["download_url"])
    with zipfile.ZipFile(io.BytesIO(ck_zip)) as zf:
        assert "checkpoint.json" in zf.namelist() and not any(n.startswith("state/") for n in zf.namelist())

    # a pack of an empty selection is refused, and no pack row appears
    gallery_id = result["gallery"]["id"]
    for image in result["approved"]:
        client.post(f"/api/images/{image['id']}/review", json={"review": "new"})
    r = client.post(f"/api/galleries/{gallery_id}/packs", json={"selection": "approved", "format": "png", "size": "square"})
    assert r.status_code == 400 and "no approved images" in r.json()["detail"]
    assert len(client.get(f"/api/galleries/{gallery_id}").json()["packs"]) == 1

    # "generate more" continues with new seeds
    r = client.post(f"/api/galleries/{gallery_id}/more", json={"n": 2})
    assert r.status_code == 200
    g = poll(client, f"/api/galleries/{gallery_id}", lambda g: g["status"] in ("succeeded", "failed"), 120, "more images")
    assert sorted(i["seed"] for i in g["images"]) == list(range(10))


def test_cancel_frees_the_worker(make_client, pg_settings, celery_worker):
    client = make_client(pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    body = dict(TINY_RUN, settings={"steps": 20_000, "batch_size": 2, "preview_every": 0})
    run = client.post(f"/api/photo-sets/{ps}/runs", json=body).json()
    poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] == "running" and r["step"] > 0, 120, "the run to start")

    # a run queued behind it (the only worker is busy) is canceled at once...
    queued = client.post(f"/api/photo-sets/{ps}/runs", json=TINY_RUN).json()
    assert client.post(f"/api/runs/{queued['id']}/cancel").json()["status"] == "canceled"

    r = client.post(f"/api/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    run = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), 60, "the cancel")
    assert run["status"] == "canceled" and run["step"] < 20_000

    # ...and the worker, free again, skips it
    after = client.post(f"/api/photo-sets/{ps}/runs", json=dict(TINY_RUN, gallery_size=1)).json()
    poll(client, f"/api/runs/{after['id']}", lambda r: r["status"] == "succeeded", 120, "the next run")
    skipped = client.get(f"/api/runs/{queued['id']}").json()
    assert skipped["status"] == "canceled" and skipped["step"] == 0 and skipped["started_at"] is None


def test_failure_is_reported_in_plain_words(make_client, pg_settings, celery_worker):
    client = make_client(pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    # the core refuses optimizer adamw8bit on this CPU worker, after the run was accepted
    # (the web app cannot know the worker's device or packages). Used here before: mode=lora
    # on this unconditional model (now refused when the run is created) and photos smaller
    # than the resolution (now upscaled with a warning)
    body = dict(TINY_RUN, settings={"steps": 2, "optimizer": "adamw8bit"})
    run = client.post(f"/api/photo-sets/{ps}/runs", json=body).json()
    run = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), 120, "the run")
    # without bitsandbytes the core names the package; with it, the device
    assert run["status"] == "failed" and "optimizer adamw8bit" in run["error"], run
    assert "use optimizer adamw" in run["error"] and ("bitsandbytes" in run["error"] or "not on cpu" in run["error"])
    assert str(escape(run["error"])) in client.get(f"/runs/{run['id']}").text

    # a Japanese reader gets the core's reason in Japanese: the page, the API and the live stream
    ja = {"Accept-Language": "ja"}
    reason = client.get(f"/api/runs/{run['id']}", headers=ja).json()["error"]
    assert reason != run["error"] and "use optimizer" not in reason and "adamw8bit" in reason
    assert str(escape(reason)) in client.get(f"/runs/{run['id']}", headers=ja).text
    stream = client.get(f"/api/runs/{run['id']}/events", headers=ja).text
    sent = [json.loads(line[len("data: "):]) for line in stream.splitlines() if line.startswith("data: ")]
    assert [e["error"] for e in sent if "error" in e] == [reason]


def test_text_to_image_run_gives_lora_and_prompted_gallery(make_client, pg_settings, celery_worker):
    """A text-to-image base model: LoRA weights to download, and gallery prompts with the
    photo set's class word filled in."""
    client = make_client(pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10, class_word="sneaker")
    first = client.get(f"/api/photo-sets/{ps}").json()["photos"][0]
    r = client.patch(f"/api/photos/{first['id']}", json={"caption": "  on a wooden\n table "})
    assert r.status_code == 200 and r.json()["caption"] == "on a wooden table"
    body = {"preset": "quick", "base_model": "builtin:tiny-sd", "gallery_size": 2,
            "settings": {"steps": 2, "batch_size": 2, "num_class_images": 2, "preview_every": 0}}
    run = client.post(f"/api/photo-sets/{ps}/runs", json=body).json()
    run = poll(client, f"/api/runs/{run['id']}", lambda r: r["status"] not in ("queued", "running"), 180, "the run")
    assert run["status"] == "succeeded", run
    ck = client.get(f"/api/runs/{run['id']}/checkpoint").json()
    assert ck["kind"] == "lora" and ck["download_name"].endswith(".safetensors")
    assert len(fetch_download(client, ck["download_url"])) == ck["size_bytes"]
    # beside it, the same LoRA in kohya's layout for ComfyUI and A1111/Forge
    kohya = next(d for d in ck["downloads"] if d["format"] == "kohya")
    assert b"lora_unet_" in fetch_download(client, kohya["url"])[:20_000]
    assert "ComfyUI" in kohya["tools"] and kohya["name"].endswith("-kohya.safetensors")
    page = client.get(f"/runs/{run['id']}").text
    assert kohya["url"].replace("&", "&amp;") in page and "ComfyUI" in page
    gallery = poll(client, f"/api/galleries/{run['galleries'][0]['id']}",
                   lambda g: g["status"] in ("succeeded", "failed"), 180, "the gallery")
    assert gallery["status"] == "succeeded", gallery
    assert {i["prompt"] for i in gallery["images"]} == {"a photo of sks sneaker"}
    assert "a photo of sks sneaker" in client.get(f"/galleries/{gallery['id']}").text
    # the report lists the prompts trained, the caption after the trigger words
    trained = client.get(f"/api/runs/{run['id']}/report").json()["trained_prompts"]
    assert trained[0] == {"prompt": "a photo of sks sneaker", "photos": sorted(
        p["filename"] for p in client.get(f"/api/photo-sets/{ps}").json()["photos"] if p["id"] != first["id"])}
    assert trained[1] == {"prompt": "a photo of sks sneaker, on a wooden table", "photos": [first["filename"]]}
    assert "a photo of sks sneaker, on a wooden table" in client.get(f"/runs/{run['id']}/report").text
