"""Who may do what: every route enumerated from the app itself is classified (public,
signed-in without ids, signed-in with object ids) and checked for team isolation (404 for
another team), CSRF on every state-changing request, security headers on every kind of
answer, session expiry and sign-out, sign-in throttling, password hashing and the lifetime
of presigned links (OWASP authentication, session and CSRF guidance)."""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from app.models import User
from web_helpers import new_photo_set, png_bytes, seed_team_objects, sign_up

ID_PARAMS = {"photo_set_id", "photo_id", "run_id", "gallery_id", "image_id", "pack_id", "index"}
PUBLIC = {("GET", "/health"), ("GET", "/login"), ("POST", "/login"), ("GET", "/signup"), ("POST", "/signup"),
          ("POST", "/api/auth/login"), ("POST", "/api/auth/signup")}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, the docs and static files aside."""
    def walk(routes, prefix=""):
        for route in routes:
            if isinstance(route, APIRoute):
                yield from ((m, prefix + route.path) for m in sorted(route.methods - {"HEAD"}))
            elif hasattr(route, "original_router"):  # an included router (FastAPI >= 0.120)
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif getattr(route, "routes", None) and not hasattr(route, "app"):
                yield from walk(route.routes, prefix)

    return sorted(set(walk(app.routes)))


def fill(path: str, ids: dict) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)


def send(client, method: str, path: str, ids: dict, token: str | None = "header", **kw):
    """One request to the route, with a plausible body for it (JSON for the API, a form
    for pages, a photo for uploads). token: "header" (the client's X-CSRF-Token), None,
    or a value put in the form field / header."""
    url = fill(path, ids)
    headers = {}
    if token != "header":
        headers["X-CSRF-Token"] = token or ""
    if method == "GET":
        return client.get(url, follow_redirects=False, **kw)
    if method == "DELETE":
        return client.request("DELETE", url, headers=headers, follow_redirects=False)
    if method == "PATCH":
        return client.patch(url, json={"caption": "changed"}, headers=headers, follow_redirects=False)
    if path.endswith("/photos"):
        return client.post(url, files=[("files", ("x.png", png_bytes(77), "image/png"))], headers=headers,
                           follow_redirects=False)
    if path.startswith("/api/"):
        body = {"review": "rejected"} if "review" in path else {"n": 1} if "more" in path else \
            {"preset": "quick"} if path.endswith("/runs") else {"name": "n", "class_word": "w"} \
            if path.endswith("/photo-sets") else {}
        return client.post(url, json=body, headers=headers, follow_redirects=False)
    return client.post(url, data={"review": "rejected", "n": "1", "name": "n", "class_word": "w"}, headers=headers,
                       follow_redirects=False)


@pytest.fixture
def two_teams(make_client, pg_settings):
    """Team A with one of every object (on S3, so downloads are presigned links) and a
    signed-in user of team B."""
    owner = make_client(pg_settings)
    sign_up(owner)
    ids = seed_team_objects(owner)
    intruder = make_client(pg_settings)
    sign_up(intruder)
    return owner, intruder, ids


def test_every_route_is_classified_and_isolated(two_teams):
    owner, intruder, ids = two_teams
    routes = app_routes(owner.app)
    with_ids = [(m, p) for m, p in routes if set(re.findall(r"{(\w+)}", p)) & ID_PARAMS]
    unknown = set(re.findall(r"{(\w+)}", " ".join(p for _, p in routes))) - ID_PARAMS
    assert not unknown, f"routes with path parameters this test does not know: {unknown}"
    assert len(with_ids) >= 35 and len(routes) >= 45, (len(with_ids), len(routes))

    for method, path in with_ids:  # the owner reaches each object (the ids are real)
        if method == "GET":
            r = send(owner, method, path, ids)
            assert r.status_code in (200, 303), (path, r.status_code, r.text[:200])
    for method, path in with_ids:  # another team: 404, whatever the method
        r = send(intruder, method, path, ids)
        assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
        assert "X-Amz-Signature" not in r.headers.get("location", "")

    # routes without ids show team B nothing of team A
    for method, path in routes:
        if method == "GET" and (method, path) not in with_ids and (method, path) not in PUBLIC:
            r = intruder.get(path)
            assert r.status_code == 200, (path, r.status_code)
            for value in ids.values():
                if len(value) > 8:
                    assert value not in r.text, (path, "leaks an id of team A")
    # team A is untouched
    assert owner.get(f"/api/photo-sets/{ids['photo_set_id']}").json()["photo_count"] == 10
    assert owner.get(f"/api/images/{ids['image_id']}").json()["review"] == "approved"


def test_presigned_links_are_short_lived_and_only_for_the_team(two_teams, pg_settings):
    owner, intruder, ids = two_teams
    for url in (f"/packs/{ids['pack_id']}/download", f"/runs/{ids['run_id']}/checkpoint/download"):
        r = owner.get(url, follow_redirects=False)
        assert r.status_code == 303
        query = parse_qs(urlparse(r.headers["location"]).query)
        assert query["X-Amz-Expires"] == [str(pg_settings.presign_seconds)] and pg_settings.presign_seconds <= 900
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - signed_at).total_seconds()) < 120  # a fresh link per request
        assert query["X-Amz-Signature"][0]
        assert intruder.get(url, follow_redirects=False).status_code == 404
    # the lifetime is part of what is signed: a client cannot stretch it
    from botocore.auth import S3SigV4QueryAuth  # noqa: F401  (the signer S3 verifies against)

    storage = owner.app.state.storage
    a = storage.presign_client.generate_presigned_url("get_object", Params={"Bucket": storage.bucket, "Key": "k"},
                                                      ExpiresIn=60)
    b = storage.presign_client.generate_presigned_url("get_object", Params={"Bucket": storage.bucket, "Key": "k"},
                                                      ExpiresIn=61)
    assert parse_qs(urlparse(a).query)["X-Amz-Signature"] != parse_qs(urlparse(b).query)["X-Amz-Signature"]


def test_csrf_is_enforced_on_every_state_changing_route(two_teams):
    owner, _, ids = two_teams
    writes = [(m, p) for m, p in app_routes(owner.app) if m in WRITES]
    json_only = {("POST", "/api/auth/login"), ("POST", "/api/auth/signup")}
    assert len(writes) >= 20
    for method, path in writes:
        if (method, path) in json_only:
            continue
        for token in (None, "forged-" + uuid.uuid4().hex):
            r = send(owner, method, path, ids, token=token)
            assert r.status_code == 403 and "CSRF" in r.text, (method, path, token, r.status_code, r.text[:200])
    # nothing changed: still every object
    assert owner.get(f"/api/photo-sets/{ids['photo_set_id']}").json()["photo_count"] == 10
    assert owner.get(f"/api/images/{ids['image_id']}").json()["review"] == "approved"
    assert len(owner.get("/api/photo-sets").json()["photo_sets"]) == 1
    # the JSON sign-in routes take JSON only: a cross-site HTML form (urlencoded or
    # text/plain, which browsers send without a preflight) cannot sign anyone in
    email = owner.get("/api/me").json()["user"]["email"]
    for ctype, body in (("application/x-www-form-urlencoded", f"email={email}&password=correct+horse+battery"),
                        ("text/plain", '{"email": "%s", "password": "correct horse battery"}' % email)):
        for path in ("/api/auth/login", "/api/auth/signup"):
            r = owner.post(path, content=body, headers={"content-type": ctype})
            assert r.status_code == 422, (path, ctype, r.status_code)


def test_security_headers_on_every_kind_of_answer(make_client, local_pg_settings):
    client = make_client(local_pg_settings.model_copy(update={"login_max_failures": 1}))
    answers = {
        "page": client.get("/login"),
        "redirect": client.get("/", follow_redirects=False),
        "401": client.get("/api/photo-sets"),
        "static": client.get("/static/app.css"),
        "health": client.get("/health"),
    }
    sign_up(client)
    answers["403"] = client.post("/api/auth/logout", headers={"X-CSRF-Token": "forged"})
    answers["json"] = client.get("/api/me")
    answers["404"] = client.get(f"/api/photo-sets/{uuid.uuid4()}")
    answers["404 page"] = client.get(f"/photo-sets/{uuid.uuid4()}")
    answers["422"] = client.post("/api/photo-sets", content=b"{", headers={"content-type": "application/json"})
    answers["413"] = client.post("/api/photo-sets", content=b"x" * (2 * 1024 * 1024),
                                 headers={"content-type": "application/json"})
    client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "x"})
    answers["429"] = client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "x"})
    expected = {"page": 200, "redirect": 303, "401": 401, "static": 200, "health": 200, "403": 403, "json": 200,
                "404": 404, "404 page": 404, "422": 422, "413": 413, "429": 429}
    for name, r in answers.items():
        assert r.status_code == expected[name], (name, r.status_code, r.text[:200])
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp, name
        assert "unsafe-inline" not in csp, name
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("x-frame-options") == "DENY", name
        assert r.headers.get("referrer-policy"), name
    r = client.post("/api/auth/signup", json={"email": f"c-{uuid.uuid4().hex[:8]}@example.com",
                                              "password": "correct horse battery"})
    cookie = r.headers["set-cookie"]
    # the API docs pages may start Swagger UI / ReDoc with an inline script, from files this
    # server serves (no CDN); no other page may run inline scripts
    for page in ("/docs", "/redoc"):
        docs = client.get(page)
        csp = docs.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" in csp and "https:" not in csp, page
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', docs.text)
        assert scripts and all(s.startswith(("/static/apidocs/", "/apidocs/")) for s in scripts), scripts
        assert all(client.get(s).status_code == 200 for s in scripts)
    assert "unsafe-inline" not in client.get("/").headers["content-security-policy"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    secure = make_client(local_pg_settings.model_copy(update={"cookie_secure": True}))
    r = secure.post("/api/auth/signup", json={"email": f"s-{uuid.uuid4().hex[:8]}@example.com",
                                              "password": "correct horse battery"})
    assert "secure" in r.headers["set-cookie"].lower()


def test_sessions_expire_and_sign_out_ends_them(make_client, local_pg_settings):
    client = make_client(local_pg_settings.model_copy(update={"session_max_age": 2}))
    r = client.post("/api/auth/signup", json={"email": f"e-{uuid.uuid4().hex[:8]}@example.com",
                                              "password": "correct horse battery"})
    assert "max-age=2" in r.headers["set-cookie"].lower()
    assert client.get("/api/me").status_code == 200
    time.sleep(3.2)  # idle for longer than the session lifetime
    assert client.get("/api/me").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"

    client = make_client(local_pg_settings)
    sign_up(client)
    stolen = client.cookies.get("domainstudio_session")
    assert client.post("/api/auth/logout").status_code == 200
    assert client.get("/api/me").status_code == 401
    client.cookies.set("domainstudio_session", stolen)  # a copy taken before signing out
    assert client.get("/api/me").status_code == 401
    client.cookies.set("domainstudio_session", stolen[:-4] + "AAAA")  # a forged signature
    assert client.get("/api/me").status_code == 401


def test_sign_in_is_throttled(make_client, local_pg_settings):
    settings = local_pg_settings.model_copy(update={"login_max_failures": 1, "login_window_seconds": 30})
    client = make_client(settings)
    email = sign_up(client)["user"]["email"]
    client.post("/api/auth/logout")
    other = make_client(settings)
    other_email = sign_up(other)["user"]["email"]
    other.post("/api/auth/logout")

    # progressive delays: each failure past the first makes this client wait twice as long
    waits = []
    for _ in range(3):
        r = client.post("/api/auth/login", json={"email": email, "password": "wrong password"})
        assert r.status_code == 400
        r = client.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
        assert r.status_code == 429, r.text
        waits.append(int(r.headers["retry-after"]))
        time.sleep(waits[-1] if len(waits) < 3 else 0)
    assert waits[0] <= 2 and waits[1] <= 3 and 3 <= waits[2] <= 5, waits
    client.headers.pop("X-CSRF-Token")  # a browser: the form's token only
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"email": email.upper(), "password": "correct horse battery", "csrf_token": token})
    assert r.status_code == 429 and "too many failed sign-ins" in r.text
    # another account is not slowed down by this one's failures
    assert other.post("/api/auth/login", json={"email": other_email, "password": "correct horse battery"}).status_code == 200
    time.sleep(int(r.headers["retry-after"]))  # the delay passes
    r = client.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 200


def test_sign_in_throttles_one_address_trying_many_accounts():
    from app.ratelimit import IP_FACTOR, LoginLimiter

    now = [0.0]
    limiter = LoginLimiter(2, 60, clock=lambda: now[0])
    for i in range(2 * IP_FACTOR):
        assert limiter.retry_after(f"user{i}@x.com", "10.0.0.1") == 0
        limiter.failed(f"user{i}@x.com", "10.0.0.1")
    assert limiter.retry_after("fresh@x.com", "10.0.0.1") > 0  # the address is throttled
    assert limiter.retry_after("fresh@x.com", "10.0.0.2") == 0
    now[0] = 61
    assert limiter.retry_after("fresh@x.com", "10.0.0.1") == 0


def test_passwords_are_stored_as_argon2id_hashes(make_client, local_pg_settings, monkeypatch):
    client = make_client(local_pg_settings)
    email = sign_up(client)["user"]["email"]
    with client.app.state.sessionmaker() as db:
        stored = db.scalar(select(User.password_hash).where(User.email == email))
    assert stored.startswith("$argon2id$") and "correct horse battery" not in stored
    params = dict(kv.split("=") for kv in stored.split("$")[3].split(","))
    assert int(params["m"]) >= 19456 and int(params["t"]) >= 2  # OWASP's minimum for argon2id
    # an unknown email costs a hash verification too (no account probing by timing)
    from app.services import auth

    calls = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda h, p: calls.append(h) or real(h, p))
    client.post("/api/auth/logout")
    assert client.post("/api/auth/login", json={"email": "nobody-" + email, "password": "x" * 12}).status_code == 400
    assert len(calls) == 1


def test_uploaded_files_are_never_served_as_active_content(make_client, local_pg_settings):
    """A photo is served with the type its content was checked as, never text/html or SVG."""
    client = make_client(local_pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=0)
    r = client.post(f"/api/photo-sets/{ps}/photos",
                    files=[("files", ("page.html", png_bytes(5), "text/html"))])
    photo = r.json()["added"][0]
    served = client.get(photo["url"])
    assert served.headers["content-type"] == "image/png" and served.headers["x-content-type-options"] == "nosniff"


def test_review_form_never_redirects_off_site(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ids = seed_team_objects(client)
    token = client.headers["X-CSRF-Token"]
    for target in ("//evil.example/x", "/\\evil.example/x", "https://evil.example/", "/\tevil", "javascript:alert(1)"):
        r = client.post(f"/images/{ids['image_id']}/review", data={"review": "approved", "next": target,
                                                                   "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/galleries/{ids['gallery_id']}", (target, r.headers)
    r = client.post(f"/images/{ids['image_id']}/review", data={"review": "approved", "next": "/images/x?y=1",
                                                               "csrf_token": token}, follow_redirects=False)
    assert r.headers["location"] == "/images/x?y=1"
