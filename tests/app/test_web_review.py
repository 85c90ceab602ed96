"""Gallery review and packs on real Postgres (rows written directly, no worker): a gallery
of 1,000 images renders one small lazy page fast; filters, bulk review (one call, team
scoped), the large view, packs of chosen images without near copies, the size estimate
against the real ZIP, several sizes in one pack, and the worker's copy-guard step."""
from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from PIL import Image as PILImage
from sqlalchemy import insert, select

from app import repositories as repo
from app.models import Gallery, Image, Pack, Run
from app import packfiles
from app.services import galleries, packs
from web_helpers import new_photo_set, png_bytes, sign_up

N = 1000


@pytest.fixture
def client(make_client, local_pg_settings):
    c = make_client(local_pg_settings)
    sign_up(c)
    return c


def picture(seed: int, side: int = 64) -> bytes:
    """A PNG that compresses like a product shot: smooth shading plus some noise."""
    noise = PILImage.effect_noise((side, side), 20 + seed % 30).convert("L")
    ramp = PILImage.linear_gradient("L").resize((side, side))
    img = PILImage.merge("RGB", [PILImage.blend(ramp, noise, 0.3), noise, ramp.rotate(90)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def seed_gallery(client, n: int, *, near_every: int = 0, files: bool = False, base_model="builtin:tiny-ddpm") -> dict:
    """A finished run of a new photo set with a gallery of n images, inserted in one
    multi-row INSERT. Every ``near_every``-th image is a near copy; with ``files`` each
    image has a PNG in storage."""
    team = uuid.UUID(client.get("/api/me").json()["user"]["team_id"])
    ps = new_photo_set(client, n_photos=10)
    photo_ids = [p["id"] for p in client.get(f"/api/photo-sets/{ps}").json()["photos"]]
    app = client.app
    with app.state.sessionmaker() as db:
        run = Run(team_id=team, photo_set_id=uuid.UUID(ps), preset="quick", base_model=base_model, settings={},
                  gallery_size=n, status="succeeded")
        db.add(run)
        db.flush()
        gallery = Gallery(team_id=team, run_id=run.id, size=n, steps=2, status="succeeded",
                          feature_network="pixel descriptor (test)", near_copy_threshold=0.02)
        db.add(gallery)
        db.flush()
        rows, now = [], datetime.now(timezone.utc)
        for seed in range(n):
            key = f"teams/{team}/galleries/{gallery.id}/images/{seed}.png"
            if files:
                app.state.storage.put_bytes(key, picture(seed))
            near = bool(near_every) and seed % near_every == 0
            rows.append(dict(id=uuid.uuid4(), team_id=team, gallery_id=gallery.id, seed=seed, width=64, height=64,
                             key=key, thumb_key=key, review="new", created_at=now, near_copy=near,
                             nearest_distance=0.001 if near else 0.3,
                             nearest_photo_id=uuid.UUID(photo_ids[seed % 10])))
        if rows:
            db.execute(insert(Image), rows)
        db.commit()
        return {"id": str(gallery.id), "team": team, "photo_set": ps, "photo_ids": photo_ids,
                "images": [str(r["id"]) for r in rows], "near": [str(r["id"]) for r in rows if r["near_copy"]]}


def reviews(client, gallery_id: str) -> dict[str, str]:
    with client.app.state.sessionmaker() as db:
        return {str(i.id): i.review for i in repo.images_of_gallery(db, uuid.UUID(gallery_id))}


# --------------------------------------------------------------------------- the grid
def test_a_gallery_of_1000_images_renders_one_small_lazy_page_fast(client):
    g = seed_gallery(client, N, near_every=50)
    client.get(f"/galleries/{g['id']}")  # warm up templates and connections
    started = time.perf_counter()
    r = client.get(f"/galleries/{g['id']}")
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    html = r.text
    items = re.findall(r'<li class="review-', html)
    assert len(items) == galleries.PAGE_SIZE
    assert html.count('loading="lazy"') >= galleries.PAGE_SIZE and "<script>" not in html
    assert len(html) < 200_000, f"{len(html)} bytes"
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    # counts of every filter, from one GROUP BY
    assert re.search(r'data-count="all">1,000<', html) and re.search(r'data-count="near">20<', html)
    assert 'rel="next"' in html and f"/galleries/{g['id']}?page=2" in html
    assert "pixel descriptor (test)" in html  # the UI names the network that measured the copies
    # the last page holds the rest; a page past the end shows the last one
    last = client.get(f"/galleries/{g['id']}?page=99").text
    assert len(re.findall(r'<li class="review-', last)) == N - 8 * galleries.PAGE_SIZE and 'rel="next"' not in last


def test_filters_show_their_images(client):
    g = seed_gallery(client, 30, near_every=10)
    client.post(f"/api/galleries/{g['id']}/review", json={"review": "approved", "image_ids": g["images"][:5]})
    client.post(f"/api/galleries/{g['id']}/review", json={"review": "rejected", "image_ids": g["images"][5:7]})
    counts = {show: len(re.findall(r'<li class="review-', client.get(f"/galleries/{g['id']}?show={show}").text))
              for show in ("", "new", "approved", "rejected", "near")}
    assert counts == {"": 30, "new": 23, "approved": 5, "rejected": 2, "near": 3}
    near_page = client.get(f"/galleries/{g['id']}?show=near").text
    assert all(i in near_page for i in g["near"]) and near_page.count("near-copy") == 3
    # the filter's former name still works
    assert len(re.findall(r'<li class="review-', client.get(f"/galleries/{g['id']}?review=approved").text)) == 5


# ------------------------------------------------------------------------- bulk review
def test_bulk_review_is_one_call_and_stays_in_the_team(client, make_client, local_pg_settings):
    g = seed_gallery(client, 20, near_every=5)
    other = make_client(local_pg_settings)
    sign_up(other)
    theirs = seed_gallery(other, 3)

    r = client.post(f"/api/galleries/{g['id']}/review",
                    json={"review": "approved", "image_ids": g["images"][:4] + theirs["images"]})
    assert r.status_code == 200 and r.json()["updated"] == 4
    assert r.json()["counts"] == {"new": 16, "approved": 4, "rejected": 0, "near": 4, "all": 20}
    assert set(reviews(other, theirs["id"]).values()) == {"new"}  # another team's ids are not touched
    # their gallery is not found for us, whatever we send
    assert client.post(f"/api/galleries/{theirs['id']}/review", json={"review": "rejected", "show": "all"}).status_code == 404

    # everything in a filter, including the images the page has not loaded
    r = client.post(f"/api/galleries/{g['id']}/review", json={"review": "rejected", "show": "near"})
    assert r.json()["updated"] == 4
    assert {i for i, v in reviews(client, g["id"]).items() if v == "rejected"} == set(g["near"])

    for bad in ({"review": "maybe", "image_ids": g["images"][:1]}, {"review": "approved"},
                {"review": "approved", "image_ids": [], "show": "all"}, {"review": "approved", "image_ids": ["x"]},
                {"review": "approved", "show": "sideways"}):
        assert client.post(f"/api/galleries/{g['id']}/review", json=bad).status_code == 400, bad


def test_bulk_review_without_javascript(client):
    g = seed_gallery(client, 10)
    token = client.headers["X-CSRF-Token"]
    r = client.post(f"/galleries/{g['id']}/review", follow_redirects=False,
                    data={"csrf_token": token, "review": "approved", "image_ids": g["images"][2:5],
                          "next": f"/galleries/{g['id']}?show=new"})
    assert r.status_code == 303 and r.headers["location"] == f"/galleries/{g['id']}?show=new"
    assert sorted(i for i, v in reviews(client, g["id"]).items() if v == "approved") == sorted(g["images"][2:5])
    client.post(f"/galleries/{g['id']}/review", data={"csrf_token": token, "review": "rejected", "apply_all": "new"})
    assert sorted(reviews(client, g["id"]).values()) == ["approved"] * 3 + ["rejected"] * 7


# --------------------------------------------------------------------------- the large view
def test_the_large_view_moves_within_its_filter_and_shows_the_nearest_photo(client):
    g = seed_gallery(client, 12, near_every=4)  # near copies: seeds 0, 4, 8
    page = client.get(f"/images/{g['near'][1]}?show=near").text
    assert f'data-prev="/images/{g["near"][0]}?show=near"' in page
    assert f'data-next="/images/{g["near"][2]}?show=near"' in page
    assert "Image 2 of 3" in page and 'role="alert"' in page
    assert f"/photos/{g['photo_ids'][4]}/file" in page  # beside it, the training photo it copies
    assert 'data-key="a"' in page and 'data-key="r"' in page
    # a review moves on to the next image of the filter; on the last one it stays
    assert f'name="next" value="/images/{g["near"][2]}?show=near"' in page
    assert f'name="next" value="/images/{g["near"][2]}?show=near"' in client.get(f"/images/{g['near'][2]}?show=near").text
    # an image outside the filter it was opened from moves in the whole gallery
    plain = client.get(f"/images/{g['images'][1]}?show=near").text
    assert "Image 2 of 12" in plain and 'role="alert"' not in plain


# ------------------------------------------------------------------------------- packs
def test_a_pack_of_chosen_images_leaves_out_near_copies(client):
    g = seed_gallery(client, 20, near_every=5)
    chosen = g["images"][:8] + [str(uuid.uuid4())]  # an id of no image of this gallery drops out
    r = client.post(f"/api/galleries/{g['id']}/packs", json={
        "selection": "selected", "image_ids": chosen, "format": "jpeg", "size": ["1024", "square"],
        "exclude_near_copies": True})
    assert r.status_code == 201, r.text
    pack = r.json()
    assert pack["size"] == "1024,square" and pack["sizes"] == ["1024", "square"] and pack["exclude_near_copies"]
    with client.app.state.sessionmaker() as db:
        row = db.get(Pack, uuid.UUID(pack["id"]))
        assert sorted(row.image_ids) == sorted(set(g["images"][:8]) - set(g["near"]))
    # all but rejected, near copies left out
    r = client.post(f"/api/galleries/{g['id']}/packs", json={"selection": "all", "exclude_near_copies": True})
    assert r.json()["image_count"] == 16
    # only near copies chosen: a clear 400
    r = client.post(f"/api/galleries/{g['id']}/packs", json={"selection": "selected", "image_ids": g["near"],
                                                            "exclude_near_copies": True})
    assert r.status_code == 400 and "near copy" in r.json()["detail"]
    assert client.post(f"/api/galleries/{g['id']}/packs", json={"size": "original,huge"}).status_code == 400


@pytest.mark.parametrize("fmt,sizes", [("png", ["original"]), ("jpeg", ["original", "1024"]), ("webp", ["square", "4x5"])])
def test_the_estimate_is_within_2x_of_the_real_zip(client, tmp_path, fmt, sizes):
    g = seed_gallery(client, 12, files=True)
    r = client.post(f"/api/galleries/{g['id']}/packs/estimate",
                    json={"selection": "all", "format": fmt, "size": sizes})
    assert r.status_code == 200, r.text
    estimate = r.json()
    assert estimate["image_count"] == 12 and estimate["file_count"] == 12 * len(sizes) and estimate["estimated_text"]
    with client.app.state.sessionmaker() as db:
        images = list(repo.images_of_gallery(db, uuid.UUID(g["id"])))
    path = tmp_path / "pack.zip"
    pack = SimpleNamespace(id=uuid.uuid4(), format=fmt, size=",".join(sizes))
    packfiles.write_pack_zip(client.app.state.storage, pack, images, packfiles.PackSource("r", "m"), path)
    real = path.stat().st_size
    assert real / 2 <= estimate["estimated_bytes"] <= real * 2, (estimate["estimated_bytes"], real)


def test_an_estimate_with_nothing_to_pack_says_why(client):
    g = seed_gallery(client, 4)
    r = client.post(f"/api/galleries/{g['id']}/packs/estimate", json={"selection": "approved", "size": "original"})
    assert r.status_code == 200 and r.json()["estimated_bytes"] is None and "no approved images" in r.json()["reason"]
    assert client.post(f"/api/galleries/{g['id']}/packs/estimate", json={"format": "gif"}).status_code == 400


def test_several_sizes_go_to_one_folder_each_with_progress(client, tmp_path):
    g = seed_gallery(client, 3, files=True)
    with client.app.state.sessionmaker() as db:
        images = list(repo.images_of_gallery(db, uuid.UUID(g["id"])))
    heard = []
    path = tmp_path / "pack.zip"
    pack = SimpleNamespace(id=uuid.uuid4(), format="jpeg", size="original,square,1024")
    packfiles.write_pack_zip(client.app.state.storage, pack, images, packfiles.PackSource("r", "m"), path,
                         progress=lambda done, total: heard.append((done, total)))
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert PILImage.open(io.BytesIO(zf.read("1024/image-0002-seed1.jpg"))).size == (1024, 1024)
    assert sorted(names) == sorted([f"{s}/image-{n + 1:04d}-seed{n}.jpg" for s in ("original", "square", "1024")
                                    for n in range(3)] + ["manifest.csv"])
    assert heard == [(1, 3), (2, 3), (3, 3)]


def test_the_pack_form_without_javascript(client):
    g = seed_gallery(client, 10, near_every=3)  # near copies: seeds 0, 3, 6, 9
    token = client.headers["X-CSRF-Token"]
    r = client.post(f"/galleries/{g['id']}/packs", follow_redirects=False, data={
        "csrf_token": token, "selection": "selected", "apply_all": "all", "format": "png", "size": ["original", "4x5"],
        "exclude_near_copies": "true"})
    assert r.status_code == 303
    page = client.get(f"/galleries/{g['id']}").text
    assert "portrait 4:5" in page and "no near copies" in page
    [pack] = client.get(f"/api/galleries/{g['id']}").json()["packs"]
    assert pack["image_count"] == 6 and pack["sizes"] == ["original", "4x5"] and pack["estimated_bytes"] is None


# ------------------------------------------------------------------ the worker's copy guard
@pytest.mark.parametrize("base_model,network", [("builtin:tiny-ddpm", "pixel descriptor"),
                                                ("builtin:fmnist-ddpm-32", "Fashion-MNIST classifier")])
def test_the_worker_measures_each_image_against_the_training_photos(client, local_pg_settings, base_model, network):
    """The gallery task's copy-guard steps, without Celery or sampling: a copy of a training
    photo is flagged and points at it; the gallery names its network and gets diversity
    (with the proxy Intra-LPIPS where the classifier fits the model: the demo model)."""
    from worker.tasks import galleries as tasks
    from worker.domainstudio.sampling import GeneratedImage

    g = seed_gallery(client, 0, base_model=base_model)
    app = client.app
    e = SimpleNamespace(settings=local_pg_settings, sessions=app.state.sessionmaker, storage=app.state.storage)
    with app.state.sessionmaker() as db:
        gallery = repo.gallery_by_id(db, uuid.UUID(g["id"]))
        photos = list(repo.photos_of_set(db, uuid.UUID(g["photo_set"])))
    copied = photos[3]
    copy = PILImage.open(io.BytesIO(app.state.storage.get_bytes(copied.key))).convert("RGB")
    made = [GeneratedImage(image=img, seed=s, prompt=None, steps=2, scheduler="ddim", model="m") for s, img in
            enumerate([copy, PILImage.open(io.BytesIO(png_bytes(77))).convert("RGB"),
                       PILImage.open(io.BytesIO(picture(5))).convert("RGB")])]
    guard = tasks._copy_guard(e, gallery)
    tasks._save_images(e, gallery, made, guard)
    tasks._measure_gallery(e, gallery, guard, lambda: False)
    with app.state.sessionmaker() as db:
        rows = {i.seed: i for i in db.scalars(select(Image).where(Image.gallery_id == gallery.id))}
        measured = db.get(Gallery, gallery.id)
    assert rows[0].near_copy and rows[0].nearest_distance < 1e-6 and rows[0].nearest_photo_id == copied.id
    assert not rows[1].near_copy and not rows[2].near_copy and rows[2].nearest_distance > guard.threshold
    assert measured.feature_network.startswith(network) and measured.near_copy_threshold == guard.threshold
    assert measured.diversity["images"] == 3 and measured.diversity["mean_pairwise_distance"] > 0
    fits = base_model == "builtin:fmnist-ddpm-32"
    assert (measured.diversity["proxy_intra_lpips"] is not None) == fits
    page = client.get(f"/galleries/{g['id']}").text
    assert network in page and "near-badge" in page
