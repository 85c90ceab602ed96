"""Bad uploads and bad API input (OWASP file upload guidance): each answered with a clear 4xx
and a reason, the server still up, and no row or object left behind. The corpus is made by
the generators below; a property-based test (hypothesis) covers the upload checker."""
from __future__ import annotations

import io
import socket
import struct
import time
import uuid
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from app.imagecheck import PhotoRejected, check_photo, clean_filename
from app.main import create_app
from reliability.faults import LiveServer
from web_helpers import new_photo_set, png_bytes, sign_up

LIMITS = dict(max_bytes=2_000_000, max_pixels=1_000_000, min_side=32)


# ------------------------------------------------------------------------------ corpus
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def noise(side=96) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise((side, side), 40 + k) for k in range(3)])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 60_000) -> bytes:
    """A valid PNG header claiming side x side pixels (3.6 billion) with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_huge_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: an APP1 segment near its 64 KB maximum
    return encode(noise(), "JPEG", exif=exif)


def png_with_huge_metadata() -> bytes:
    """A PNG with a 1.5 MB eXIf chunk and a zTXt chunk that inflates to 50 MB."""
    data = encode(noise(64), "PNG")
    extra = png_chunk(b"eXIf", b"MM\x00*" + b"\x00" * 1_500_000)
    extra += png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9))
    return data[:33] + extra + data[33:]


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(document.cookie)</script></svg>'
HTML = b"<!doctype html><html><script>fetch('/api/me')</script></html>"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

REFUSED = [  # (file name, bytes, words the reason must contain)
    ("empty.jpg", b"", "empty"),
    ("cut.jpg", encode(noise(300), "JPEG")[:2500], "damaged or truncated"),
    ("cut.png", encode(noise(300), "PNG")[:4000], "damaged or truncated"),
    ("bomb.png", png_bomb(), "pixels"),
    ("script.svg", SVG, "not a JPEG, PNG or WebP"),
    ("script.jpg", SVG, "not a JPEG, PNG or WebP"),
    ("anim.gif", encode(noise(), "GIF"), "GIF files are not accepted"),
    ("scan.tiff", encode(noise(), "TIFF"), "TIFF files are not accepted"),
    ("phone.heic", HEIC, "not a JPEG, PNG or WebP"),
    ("page.jpg", HTML, "not a JPEG, PNG or WebP"),
    ("doc.jpg", PDF, "not a JPEG, PNG or WebP"),
    ("tiny.png", encode(noise(16), "PNG"), "at least"),
]


@pytest.fixture
def client(make_client, local_pg_settings):
    c = make_client(local_pg_settings)
    sign_up(c)
    return c


def nothing_stored(client, ps: str) -> None:
    team = client.get("/api/me").json()["user"]["team_id"]
    assert client.get(f"/api/photo-sets/{ps}").json()["photo_count"] == 0
    assert client.app.state.storage.list_keys(f"teams/{team}/photo-sets/{ps}") == []


@pytest.mark.parametrize("name,data,reason", REFUSED, ids=[c[0] for c in REFUSED])
def test_each_bad_file_is_refused_with_its_reason(client, name, data, reason):
    ps = new_photo_set(client, n_photos=0)
    started = time.monotonic()
    r = client.post(f"/api/photo-sets/{ps}/photos", files=[("files", (name, data, "image/jpeg"))])
    assert r.status_code == 422, (name, r.status_code, r.text[:300])
    body = r.json()
    assert body["added"] == [] and reason in body["refused"][0]["reason"] and reason in body["detail"], body
    assert time.monotonic() - started < 10
    nothing_stored(client, ps)


def test_images_whose_names_lie_or_carry_huge_metadata(client):
    """Judged by content: a PNG named .jpg is stored as the PNG it is; big metadata is no
    reason to fail (and never inflates the zTXt bomb)."""
    ps = new_photo_set(client, n_photos=0)
    files = [("photo.jpg", encode(noise(), "PNG")), ("photo.png", encode(noise(97), "JPEG")),
             ("exif.jpg", jpeg_with_huge_exif()), ("meta.png", png_with_huge_metadata())]
    started = time.monotonic()
    r = client.post(f"/api/photo-sets/{ps}/photos", files=[("files", (n, d, "image/jpeg")) for n, d in files])
    assert time.monotonic() - started < 10
    assert r.status_code == 200, r.text[:500]
    added = {p["filename"]: p for p in r.json()["added"]}
    assert added["photo.jpg"]["content_type"] == "image/png" and added["photo.png"]["content_type"] == "image/jpeg"
    for p in added.values():
        served = client.get(p["url"])
        assert served.headers["content-type"] == p["content_type"]
        assert Image.open(io.BytesIO(served.content)).size == (p["width"], p["height"])
    refused = {x["file"]: x["reason"] for x in r.json()["refused"]}
    assert set(added) | set(refused) == {n for n, _ in files}
    assert set(added) >= {"photo.jpg", "photo.png", "exif.jpg"}


def raw_multipart(filename: bytes, data: bytes, boundary: bytes = b"B0UNDARY") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + filename
            + b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")


def test_file_names_never_reach_paths_or_pages(client):
    ps = new_photo_set(client, n_photos=0)
    names = [b"../../../../etc/passwd.png", b"..\\..\\windows\\x.png", b"a\x00b.png", ("x" * 1000 + ".png").encode(),
             "\u202egnp.exe".encode(), b"<script>alert(1)</script>.png", b"...", b""]
    team = client.get("/api/me").json()["user"]["team_id"]
    for i, name in enumerate(names):
        r = client.post(f"/api/photo-sets/{ps}/photos", content=raw_multipart(name, png_bytes(400 + i)),
                        headers={"content-type": "multipart/form-data; boundary=B0UNDARY"})
        assert r.status_code in (200, 422), (name, r.status_code, r.text[:200])
        if r.status_code == 422:
            assert r.json()["detail"]
            continue
        [photo] = r.json()["added"]
        stored = photo["filename"]
        assert "/" not in stored and "\\" not in stored and "\x00" not in stored and "\u202e" not in stored
        assert 0 < len(stored) <= 200 and not stored.startswith(".")
    keys = client.app.state.storage.list_keys(f"teams/{team}/photo-sets/{ps}")
    assert keys and all(k.startswith(f"teams/{team}/photo-sets/{ps}/") and ".." not in k for k in keys)
    page = client.get(f"/photo-sets/{ps}").text
    assert "<script>alert(1)</script>" not in page


def test_too_many_photos_at_once(client, local_pg_settings):
    ps = new_photo_set(client, n_photos=0)
    n = local_pg_settings.max_photos + 1
    r = client.post(f"/api/photo-sets/{ps}/photos",
                    files=[("files", (f"p{i}.png", png_bytes(i, size=(32, 32)), "image/png")) for i in range(n)])
    assert r.status_code == 400 and f"at most {n - 1} files" in r.json()["detail"]
    nothing_stored(client, ps)


@pytest.fixture
def live(make_client, local_pg_settings):
    settings = local_pg_settings.model_copy(update={"max_request_bytes": 8 * 1024 * 1024})
    server = LiveServer(create_app(settings))
    c = httpx.Client(base_url=server.url, timeout=30)
    body = c.post("/api/auth/signup", json={"email": f"live-{uuid.uuid4().hex[:8]}@example.com",
                                           "password": "correct horse battery"}).json()
    c.headers["X-CSRF-Token"] = body["csrf_token"]
    ps = c.post("/api/photo-sets", json={"name": "big", "class_word": "bottle"}).json()["id"]
    yield server, c, ps, body["user"]["team_id"], settings
    c.close()
    server.stop()


def http_head(server, ps: str, client: httpx.Client, length: int | None, boundary: bytes = b"B0UNDARY") -> bytes:
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    head = (f"POST /api/photo-sets/{ps}/photos HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Cookie: {cookie}\r\nX-CSRF-Token: {client.headers['X-CSRF-Token']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n")
    head += f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (head + "\r\n").encode()


def test_a_200_mb_body_is_refused_before_it_is_read(live):
    server, client, ps, team, settings = live
    # declared: answered 413 at once, before any of the 200 MB is sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(http_head(server, ps, client, 200 * 1024 * 1024))
        answer = b""
        try:
            while chunk := s.recv(65536):  # the server closes after its answer
                answer += chunk
        except ConnectionResetError:  # closed with our unread megabyte in its buffer
            pass
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and "larger than the limit" in answer, answer[:300]
    # streamed without a length: cut off once past the limit
    sent = 0

    def body():
        nonlocal sent
        yield b"--B0UNDARY\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(200):
            sent += 1024 * 1024
            yield b"\x89PNG" + b"x" * (1024 * 1024 - 4)

    try:
        r = client.post(f"/api/photo-sets/{ps}/photos", content=body(),
                        headers={"content-type": "multipart/form-data; boundary=B0UNDARY"})
        assert r.status_code == 413, r.text[:300]
    except httpx.HTTPError:
        pass  # the server closed the connection while we were still sending: refused too
    assert sent <= 64 * 1024 * 1024, f"the server read {sent / 2**20:.0f} MB of a body over its 8 MB limit"
    assert client.get("/health").status_code == 200
    assert client.get(f"/api/photo-sets/{ps}").json()["photo_count"] == 0


def test_a_multipart_body_cut_off_halfway(live):
    server, client, ps, team, settings = live
    whole = raw_multipart(b"a.png", png_bytes(500)) + raw_multipart(b"b.png", png_bytes(501))
    # the client disconnects halfway through the body it announced
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(http_head(server, ps, client, len(whole)) + whole[: len(whole) // 2])
    # the whole request arrives, but the multipart stops in the middle of the first file
    r = client.post(f"/api/photo-sets/{ps}/photos", content=whole[: len(whole) // 3],
                    headers={"content-type": "multipart/form-data; boundary=B0UNDARY"})
    assert 400 <= r.status_code < 500 and r.json()["detail"], r.text
    time.sleep(0.5)
    assert client.get("/health").status_code == 200
    assert client.get(f"/api/photo-sets/{ps}").json()["photo_count"] == 0
    assert server.server.started
    local = LocalKeys(settings)
    assert local.keys(f"teams/{team}/photo-sets/{ps}") == []


class LocalKeys:
    def __init__(self, settings):
        from app.storage import LocalStorage

        self.storage = LocalStorage(settings.resolved_storage_dir)

    def keys(self, prefix: str) -> list[str]:
        return self.storage.list_keys(prefix)


# ---------------------------------------------------------------------------- bad API input
BAD_JSON = [
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": {"steps": -1}}, "steps"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": {"steps": 10**12}}, "steps"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": {"steps": 3.5}}, "steps"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": {"learning_rate": "NaN"}}, "learning_rate"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": {"resolution": 10**9}}, "resolution"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "ultra"}, "preset"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": ["quick"]}, "preset"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "settings": [1, 2]}, "settings"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "gallery_size": -3}, "gallery_size"),
    ("POST", "/api/photo-sets/{ps}/runs", {"preset": "quick", "gallery_size": "lots"}, "gallery_size"),
    ("POST", "/api/photo-sets", {"name": "x" * 300, "class_word": "bottle"}, "name"),
    ("POST", "/api/photo-sets", {"name": None, "class_word": "bottle"}, "name"),
    ("POST", "/api/photo-sets", {"name": "ok"}, "class_word"),
    ("POST", "/api/photo-sets", [], ""),
    ("POST", "/api/galleries/{gallery}/more", {"n": -1}, "n"),
    ("POST", "/api/galleries/{gallery}/more", {"n": 10**9}, "n"),
    ("POST", "/api/galleries/{gallery}/more", {"n": "eight"}, "n"),
    ("POST", "/api/galleries/{gallery}/packs", {"size": "huge"}, "size"),
    ("POST", "/api/galleries/{gallery}/packs", {"format": "bmp"}, "format"),
    ("POST", "/api/galleries/{gallery}/packs", {"selection": "everything"}, "selection"),
    ("POST", "/api/images/{image}/review", {"review": "love it"}, "review"),
    ("GET", "/api/galleries/{gallery}?review=maybe", None, "review"),
    ("GET", "/api/runs/not-a-uuid", None, "run_id"),
    ("GET", "/api/photos/123", None, "photo_id"),
    ("GET", "/runs/{run}/previews/-1", None, "preview"),
    ("GET", "/runs/{run}/previews/99999999999999999999", None, ""),
]


def test_bad_api_input_gets_a_4xx_with_a_reason(client):
    from web_helpers import seed_team_objects

    ids = seed_team_objects(client)
    fill = {"ps": ids["photo_set_id"], "gallery": ids["gallery_id"], "image": ids["image_id"], "run": ids["run_id"]}
    for method, path, body, words in BAD_JSON:
        url = path.format(**fill)
        r = client.request(method, url, json=body) if body is not None else client.request(method, url)
        assert 400 <= r.status_code < 500, (method, url, body, r.status_code, r.text[:300])
        detail = r.json()["detail"] if r.headers["content-type"].startswith("application/json") else r.text
        assert detail and words in str(detail), (url, body, detail)
    raw = [b"{not json", b"", b"\xff\xfe", b"[" * 100_000, b'{"preset": "quick"' + b" " * 10]
    for content in raw:
        r = client.post(f"/api/photo-sets/{ids['photo_set_id']}/runs", content=content,
                        headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and r.json()["detail"], (content[:20], r.status_code, r.text[:200])
    # nothing was created by any of it
    assert client.get(f"/api/photo-sets/{ids['photo_set_id']}/runs").json()["runs"][0]["id"] == ids["run_id"]
    assert len(client.get(f"/api/photo-sets/{ids['photo_set_id']}/runs").json()["runs"]) == 1
    assert len(client.get("/api/photo-sets").json()["photo_sets"]) == 1
    assert len(client.get(f"/api/galleries/{ids['gallery_id']}").json()["packs"]) == 1


# ------------------------------------------------------------------- property-based tests
@st.composite
def images(draw):
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        mode = "RGB"
    w, h = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    img = Image.new(mode, (w, h), draw(st.integers(0, 255)) if mode in ("L", "P") else None)
    data = encode(img, fmt)
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(data) - 1))))
    flips = draw(st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)), st.integers(0, 255)), max_size=3))
    out = bytearray(data if cut is None else data[:cut])
    for pos, value in flips:
        if pos < len(out):
            out[pos] = value
    return fmt, (w, h), cut is None and not flips, bytes(out)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_checker_accepts_only_whole_jpeg_png_webp_of_the_right_size(case):
    fmt, size, intact, data = case
    try:
        checked = check_photo(data, **LIMITS)
    except PhotoRejected as exc:
        assert str(exc)  # a reason, in words
        if intact and fmt in ("PNG", "JPEG", "WEBP") and min(size) >= LIMITS["min_side"]:
            raise AssertionError(f"a whole {fmt} of {size} was refused: {exc}") from None
        return
    assert fmt in ("PNG", "JPEG", "WEBP") or not intact
    assert checked.content_type in ("image/png", "image/jpeg", "image/webp")
    assert min(checked.width, checked.height) >= LIMITS["min_side"]
    with Image.open(io.BytesIO(checked.data)) as img:
        img.load()  # what is stored decodes completely
        assert img.size == (checked.width, checked.height)
    assert Image.open(io.BytesIO(checked.thumbnail)).format == "JPEG"


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=2000)))
def test_clean_filename_is_always_a_safe_display_name(name):
    cleaned = clean_filename(name)
    assert 0 < len(cleaned) <= 200
    assert "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".")
    import unicodedata

    assert all(unicodedata.category(c)[0] != "C" for c in cleaned)
