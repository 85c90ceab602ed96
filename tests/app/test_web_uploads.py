"""Upload validation: the checker on its own, and through the API on Postgres with both
object-store backends (refused files leave no row and no object)."""
from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from app.imagecheck import PhotoRejected, check_photo, clean_filename
from web_helpers import new_photo_set, png_bytes, sign_up, upload

LIMITS = dict(max_bytes=2_000_000, max_pixels=1_000_000, min_side=32)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_accepts_jpeg_png_webp_by_content(fmt, ctype):
    data = encode(Image.new("RGB", (64, 48), "red"), fmt)
    checked = check_photo(data, **LIMITS)
    assert (checked.content_type, checked.width, checked.height) == (ctype, 64, 48)
    assert checked.data == data  # no EXIF rotation: the original bytes are kept
    assert Image.open(io.BytesIO(checked.thumbnail)).format == "JPEG"


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"<html><body>not an image</body></html>", "not a JPEG, PNG or WebP"),
    (b"%PDF-1.4\n" + b"0" * 100, "not a JPEG, PNG or WebP"),
    (encode(Image.new("RGB", (64, 64)), "GIF"), "GIF files are not accepted"),
    (encode(Image.new("RGB", (64, 64)), "TIFF"), "TIFF files are not accepted"),
    (encode(Image.new("RGB", (64, 64)), "BMP"), "BMP files are not accepted"),
    (encode(Image.new("RGB", (2000, 1000)), "PNG"), "more than the limit"),
    (encode(Image.new("RGB", (16, 64)), "PNG"), "at least 32 pixels"),
    (encode(Image.effect_noise((300, 300), 60).convert("RGB"), "JPEG")[:3000], "damaged or truncated"),
    (encode(Image.effect_noise((300, 300), 60).convert("RGB"), "PNG")[:5000], "damaged or truncated"),
])
def test_refuses_with_a_reason(data, reason):
    with pytest.raises(PhotoRejected) as info:
        check_photo(data, **LIMITS)
    assert reason in str(info.value)


def test_refuses_files_over_the_byte_limit():
    data = encode(Image.effect_noise((900, 900), 90).convert("RGB"), "PNG")
    with pytest.raises(PhotoRejected, match="larger than"):
        check_photo(data, max_bytes=len(data) - 1, max_pixels=10**7, min_side=1)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")  # tiny file, 400 million pixels
    assert len(bomb) < 1_000_000
    with pytest.raises(PhotoRejected, match="pixels"):
        check_photo(bomb, max_bytes=10**7, max_pixels=40_000_000, min_side=1)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    checked = check_photo(encode(img, "JPEG", exif=exif), **LIMITS)
    assert (checked.width, checked.height) == (40, 80)
    assert Image.open(io.BytesIO(checked.data)).size == (40, 80)


def test_clean_filename():
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\photos\\a.jpg") == "a.jpg"
    assert clean_filename("a\x00b\u202egpj.exe") == "abgpj.exe"
    assert clean_filename("x" * 1000).startswith("x") and len(clean_filename("x" * 1000)) == 200
    assert clean_filename("") == "photo" and clean_filename("...") == "photo"


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBPVP8 "]))
def test_checker_only_ever_refuses_cleanly(data, magic):
    """Whatever the bytes, the checker accepts a real image or raises PhotoRejected."""
    try:
        checked = check_photo(magic + data, **LIMITS)
    except PhotoRejected as exc:
        assert str(exc)
    else:
        assert checked.width >= 32 and checked.height >= 32


# ------------------------------------------------------------------------ through the API
@pytest.fixture(params=["local", "s3"])
def client_and_storage(request, make_client):
    settings = request.getfixturevalue("local_pg_settings" if request.param == "local" else "pg_settings")
    client = make_client(settings)
    sign_up(client)
    return client, client.app.state.storage


def test_upload_mixed_batch_stores_only_good_files(client_and_storage):
    client, storage = client_and_storage
    ps = new_photo_set(client, n_photos=0)
    good = [(f"ok-{i}.png", png_bytes(i)) for i in range(3)]
    bad = [("empty.jpg", b""), ("page.jpg", b"<html></html>"), ("cut.png", png_bytes(9)[:200]),
           ("dup.png", good[0][1]), ("../../evil.png", png_bytes(10, size=(8, 8)))]
    r = upload(client, ps, good + bad)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["filename"] for p in body["added"]] == ["ok-0.png", "ok-1.png", "ok-2.png"]
    reasons = {x["file"]: x["reason"] for x in body["refused"]}
    assert reasons.keys() == {"empty.jpg", "page.jpg", "cut.png", "dup.png", "evil.png"}
    assert "empty" in reasons["empty.jpg"] and "duplicate" in reasons["dup.png"]
    assert "damaged or truncated" in reasons["cut.png"]

    team = client.get("/api/me").json()["user"]["team_id"]
    keys = storage.list_keys(f"teams/{team}/photo-sets/{ps}")
    assert len(keys) == 6  # 3 originals + 3 thumbnails, nothing for the refused files
    r = client.get(f"/api/photo-sets/{ps}")
    assert r.json()["photo_count"] == 3
    photo = body["added"][0]
    assert client.get(photo["url"]).content == good[0][1]
    assert client.get(photo["thumb_url"]).headers["content-type"] == "image/jpeg"

    # a second upload of the same file is skipped as a duplicate
    r = upload(client, ps, [("again.png", good[1][1])])
    assert r.json()["added"] == [] and "duplicate" in r.json()["refused"][0]["reason"]

    # removing a photo removes its row and its objects
    r = client.delete(f"/api/photos/{photo['id']}")
    assert r.status_code == 200
    assert len(storage.list_keys(f"teams/{team}/photo-sets/{ps}")) == 4
    assert client.get(photo["url"]).status_code == 404


def test_photo_count_limits(make_client, local_pg_settings):
    settings = local_pg_settings.model_copy(update={"max_photos": 12})
    client = make_client(settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=9)
    r = client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick"})
    assert r.status_code == 400 and "at least 10 photos" in r.json()["detail"]
    r = upload(client, ps, [(f"more-{i}.png", png_bytes(100 + i)) for i in range(5)])
    assert len(r.json()["added"]) == 3
    assert [x["reason"] for x in r.json()["refused"]] == ["the photo set already holds the maximum of 12 photos"] * 2


def test_bad_api_input_gets_a_reason(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    cases = [
        ({"preset": "turbo"}, "unknown preset"),
        ({"preset": "quick", "settings": {"steps": -5}}, "'steps' must be between"),
        ({"preset": "quick", "settings": {"steps": "many"}}, "'steps' must be a whole number"),
        ({"preset": "quick", "settings": {"warp": 9}}, "unknown setting 'warp'"),
        ({"preset": "quick", "settings": {"mode": "half"}}, "'mode' must be one of"),
        ({"preset": "quick", "base_model": "/etc"}, "unknown base model"),
        ({"preset": "quick", "gallery_size": 5000}, "gallery size must be between 1 and 1000"),
    ]
    for body, reason in cases:
        r = client.post(f"/api/photo-sets/{ps}/runs", json=body)
        assert 400 <= r.status_code < 500 and reason in r.json()["detail"], (body, r.text)
    r = client.post(f"/api/photo-sets/{ps}/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/photo-sets", json={"name": "", "class_word": "bottle"})
    assert r.status_code == 400 and "name is required" in r.json()["detail"]
    assert client.get(f"/api/photo-sets/{ps}/runs").json()["runs"] == []  # nothing was created


def test_expert_settings_are_settings_of_the_core():
    """The web form offers only names the core's AdaptConfig knows, with the same choices."""
    import dataclasses

    from app.presets import EXPERT_FIELDS, PRESETS
    from worker.domainstudio import AdaptConfig

    core = {f.name: f for f in dataclasses.fields(AdaptConfig)}
    assert set(EXPERT_FIELDS) <= set(core)
    missing = set(core) - set(EXPERT_FIELDS) - {"base_model", "class_word", "device", "class_images_dir"}
    assert not missing, f"settings of the core missing from the expert form: {missing}"
    for name, field in EXPERT_FIELDS.items():
        if field.choices:
            assert tuple(field.choices) == tuple(core[name].metadata["choices"]), name
    for preset in PRESETS.values():
        AdaptConfig.from_dict({**preset.settings, "base_model": "builtin:tiny-ddpm"})


def test_object_store_down_during_upload_leaves_nothing(make_client, local_pg_settings, pg_settings):
    down = pg_settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9", "s3_bucket": "unreachable"})
    client = make_client(down)
    sign_up(client)
    ps = new_photo_set(client, n_photos=0)
    r = upload(client, ps, [("a.png", png_bytes(1)), ("b.png", png_bytes(2))])
    assert r.status_code == 503 and "object store is unreachable" in r.json()["detail"]
    assert client.get(f"/api/photo-sets/{ps}").json()["photo_count"] == 0


def test_deleting_a_photo_set_removes_its_objects_and_rows(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    team = sign_up(client)["user"]["team_id"]
    keep = new_photo_set(client, n_photos=2)
    gone = new_photo_set(client, n_photos=3)
    storage = client.app.state.storage
    assert len(storage.list_keys(f"teams/{team}/photo-sets/{gone}")) == 6
    r = client.delete(f"/api/photo-sets/{gone}")
    assert r.status_code == 200
    assert storage.list_keys(f"teams/{team}/photo-sets/{gone}") == []
    assert client.get(f"/api/photo-sets/{gone}").status_code == 404
    assert len(storage.list_keys(f"teams/{team}/photo-sets/{keep}")) == 4
    assert [p["id"] for p in client.get("/api/photo-sets").json()["photo_sets"]] == [keep]
