"""Sign up, sign in, CSRF, sessions and the HTML pages rendered for a signed-in user."""
from __future__ import annotations

import re

from app.security import hash_password, verify_password
from web_helpers import new_photo_set, seed_team_objects, sign_up


def form_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_sign_up_and_in_through_the_pages(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    page = client.get("/signup").text
    email = f"page-{id(client)}@example.com"
    # without the CSRF token the form post is refused
    r = client.post("/signup", data={"email": email, "password": "long enough password"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/signup", data={"email": email, "password": "short", "csrf_token": form_token(page)})
    assert r.status_code == 400 and "at least 10 characters" in r.text
    r = client.post("/signup", data={"email": email, "password": "long enough password", "csrf_token": form_token(page)})
    assert r.status_code == 200 and "Photo sets" in r.text  # followed the redirect to the home page

    home = client.get("/").text
    r = client.post("/photo-sets", data={"name": "Autumn", "class_word": "bag", "csrf_token": form_token(home)})
    assert r.status_code == 200 and "Autumn" in r.text and "Drop photos here" in r.text
    r = client.post("/logout", data={"csrf_token": form_token(r.text)})
    assert client.get("/", follow_redirects=False).status_code == 303

    login = client.get("/login").text
    r = client.post("/login", data={"email": email, "password": "wrong password!", "csrf_token": form_token(login)})
    assert r.status_code == 400 and "wrong email or password" in r.text
    r = client.post("/login", data={"email": email.upper(), "password": "long enough password",
                                    "csrf_token": form_token(login)})
    assert r.status_code == 200 and "Autumn" in r.text


def test_api_auth_and_csrf(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    assert client.get("/api/photo-sets").status_code == 401
    body = sign_up(client)
    r = client.post("/api/auth/signup", json={"email": body["user"]["email"], "password": "another password"})
    assert r.status_code == 409
    token = client.headers.pop("X-CSRF-Token")
    r = client.post("/api/photo-sets", json={"name": "x", "class_word": "y"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = client.post("/api/photo-sets", json={"name": "x", "class_word": "y"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 201
    assert client.get("/api/me").json()["csrf_token"] == token


def test_passwords_are_hashed_with_argon2():
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert verify_password(h, "correct horse battery") and not verify_password(h, "wrong")


def test_pages_render_with_security_headers(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    r = client.get(f"/photo-sets/{ps}")
    assert r.status_code == 200
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("Quick", "Standard", "High quality", "Expert settings", "builtin:tiny-ddpm"):
        assert name in r.text
    assert r.text.count('src="/photos/') == 10
    # a run started from the form with too few photos comes back with the reason
    other = new_photo_set(client, n_photos=0)
    page = client.get(f"/photo-sets/{other}").text
    r = client.post(f"/photo-sets/{other}/runs", data={"csrf_token": form_token(page), "preset": "quick"})
    assert r.status_code == 200 and "a run needs at least 10 photos; this set has 0" in r.text
    assert client.get("/docs").status_code == 200
    assert "/api/photo-sets/{photo_set_id}/runs" in client.get("/openapi.json").json()["paths"]


def test_health_reports_each_service(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    assert client.get("/health").json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    broken = make_client(local_pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    r = broken.get("/health")
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")


def test_broker_down_marks_the_run_failed_with_503(make_client, local_pg_settings):
    client = make_client(local_pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    r = client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick"})
    assert r.status_code == 503 and "queue is unreachable" in r.json()["detail"]
    [run] = client.get(f"/api/photo-sets/{ps}/runs").json()["runs"]
    assert run["status"] == "failed" and "unreachable" in run["error"]


def test_every_setting_is_documented_in_the_readme():
    from web_helpers import ROOT

    from app.settings import Settings

    readme = (ROOT / "README.md").read_text()
    assert "## The web application" in readme
    missing = [n for n in Settings.model_fields if f"`DOMAINSTUDIO_{n.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_broker_down_on_packs_and_more_images_leaves_no_job_hanging(make_client, local_pg_settings):
    client = make_client(local_pg_settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    sign_up(client)
    ids = seed_team_objects(client)
    r = client.post(f"/api/galleries/{ids['gallery_id']}/packs", json={"selection": "approved"})
    assert r.status_code == 503
    packs = client.get(f"/api/galleries/{ids['gallery_id']}").json()["packs"]
    assert [p["status"] for p in packs if p["id"] != ids["pack_id"]] == ["failed"]
    r = client.post(f"/api/galleries/{ids['gallery_id']}/more", json={"n": 2})
    assert r.status_code == 503
    gallery = client.get(f"/api/galleries/{ids['gallery_id']}").json()
    assert gallery["status"] == "failed" and "unreachable" in gallery["error"]


def test_run_form_explains_the_demo_model_only_when_it_is_offered(make_client, local_pg_settings):
    demo = make_client(local_pg_settings.model_copy(update={"base_models": "builtin:fmnist-sd-32,builtin:tiny-sd"}))
    sign_up(demo)
    page = demo.get(f"/photo-sets/{new_photo_set(demo, n_photos=0)}").text
    assert 'class="help demo-model-note"' in page and "Stable Diffusion model (1.x, 2.x or SDXL)" in page
    assert 'data-model="builtin:fmnist-sd-32"' in page and "32×32 grey pictures" in page and "ankle boot and shoe" in page
    assert "fmnist-ddpm-32" not in page  # only the offered demo model
    plain = make_client(local_pg_settings.model_copy(update={"base_models": "builtin:tiny-sd"}))
    sign_up(plain)
    assert "demo-model-note" not in plain.get(f"/photo-sets/{new_photo_set(plain, n_photos=0)}").text


def test_base_models_are_listed_with_their_kind_and_unadaptable_ones_refused(make_client, local_pg_settings, tmp_path):
    """SDXL shows as SDXL with its resolution; a Flux folder the administrator listed is not
    offered, and a run on it is refused naming the supported kinds."""
    import json

    flux = tmp_path / "flux-dev"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "x"]}))
    client = make_client(local_pg_settings.model_copy(update={"base_models": f"builtin:tiny-sdxl,{flux}"}))
    sign_up(client)
    details = {d["spec"]: d for d in client.get("/api/base-models").json()["details"]}
    assert details["builtin:tiny-sdxl"]["kind"] == "SDXL" and details["builtin:tiny-sdxl"]["resolution"] == 32
    assert "is a Flux model" in details[str(flux)]["refused"] and "SDXL" in details[str(flux)]["refused"]

    ps = new_photo_set(client, n_photos=10)
    page = client.get(f"/photo-sets/{ps}").text
    assert "builtin:tiny-sdxl (SDXL, 32 px)" in page
    assert f'value="{flux}"' not in page
    r = client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick", "base_model": str(flux)})
    assert r.status_code == 400 and "does not adapt" in r.text and "Stable Diffusion 1.x and 2.x" in r.text
    assert client.get(f"/api/photo-sets/{ps}/runs").json()["runs"] == []  # nothing half-made


def test_captions_are_edited_on_the_photo_set_page_and_in_the_api(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=2)
    photo = client.get(f"/api/photo-sets/{ps}").json()["photos"][0]
    page = client.get(f"/photo-sets/{ps}").text
    assert f'action="/photos/{photo["id"]}/caption"' in page and 'id="caption-help"' in page
    r = client.post(f"/photos/{photo['id']}/caption", data={"caption": "in the snow", "csrf_token": form_token(page)})
    assert r.status_code == 200 and 'value="in the snow"' in r.text
    assert client.get(f"/api/photos/{photo['id']}").json()["caption"] == "in the snow"
    r = client.patch(f"/api/photos/{photo['id']}", json={"caption": "x" * 501})
    assert r.status_code == 400 and "at most 500 characters" in r.text
    assert client.get(f"/api/photos/{photo['id']}").json()["caption"] == "in the snow"  # unchanged
    assert client.patch(f"/api/photos/{photo['id']}", json={"caption": ""}).json()["caption"] == ""
    other = make_client(local_pg_settings)
    sign_up(other)
    assert other.patch(f"/api/photos/{photo['id']}", json={"caption": "mine"}).status_code == 404
