"""Abuse and exhaustion (issue 13): what one signed-up account could do to take the service
down or starve everyone else, each finding reproduced against a served app (uvicorn in a
thread of this process, real Postgres or the embedded default's SQLite).
docs/reliability.md ("Abuse and exhaustion") has the figures."""
from __future__ import annotations

import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from app.imagecheck import DecodeBudget, PhotoRejected, check_photo, read_header
from app.models import Photo
from web_helpers import free_port, png_bytes, sign_up, upload, wait_for


# ------------------------------------------------------------------------------ helpers
class Served:
    """The app under uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, settings):
        import uvicorn

        from app.main import create_app

        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=free_port(),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn")
        self.url = f"http://127.0.0.1:{self.server.config.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def user(self) -> closing[httpx.Client]:
        """A signed-up user's client, for a with block."""
        c = self.client()
        sign_up(c)
        return closing(c)

    def photo_count(self, photo_set_id: str) -> int:
        with self.app.state.sessionmaker() as db:
            return db.scalar(select(func.count(Photo.id)).where(Photo.photo_set_id == uuid.UUID(photo_set_id)))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def embedded_settings(tmp_path, **over):
    from app.migrate import upgrade
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path, secret_key="abuse-test-secret", base_models="builtin:tiny-ddpm", **over)
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(params=["postgres", "sqlite"])
def served(request, local_pg_settings, tmp_path):
    """The app on Postgres (production) and on the embedded default's SQLite."""
    settings = local_pg_settings if request.param == "postgres" else embedded_settings(tmp_path)
    s = Served(settings)
    yield s
    s.stop()


def photo_set(client) -> str:
    r = client.post("/api/photo-sets", json={"name": "Flood", "class_word": "bottle"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def reasons(response) -> list[str]:
    return [r["reason"] for r in response.json().get("refused", [])]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux)
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024


def timed_health(client) -> float:
    started = time.monotonic()
    r = client.get("/health")
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def pixel_flood_png(seed: int, side: int = 6320) -> bytes:
    """The finding's file: an RGBA PNG of 6320x6320 (39.9 MP, under the 40 MP limit) that
    compresses to ~170 KB; a different rectangle for each seed."""
    img = Image.new("RGBA", (side, side), (200, 30, 30, 255))
    ImageDraw.Draw(img).rectangle((100 + seed * 500, 100, 800 + seed * 500, 900), fill=(0, 0, 255, 128))
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=9)
    return out.getvalue()


# --------------------------------------------------------------------------- pixel flood
def test_a_pixel_flood_stays_within_a_memory_bound_and_others_are_answered(local_pg_settings):
    """The finding: 3 concurrent requests carrying 4 such files each (2 MB of body) took
    40 s and pushed the app from 120 MB to 2,065 MB. Now: the duplicate check comes before
    decoding (across concurrent requests too), each request has a pixel budget, the process
    decodes at most ``max_decode_pixels`` at once, on upload threads of its own."""
    files = [(f"flood-{i}.png", pixel_flood_png(i)) for i in range(4)]
    assert all(len(data) < 400_000 for _, data in files)
    s = Served(local_pg_settings)
    try:
        with s.user() as attacker, s.user() as other:
            ps, other_ps = photo_set(attacker), photo_set(other)
            started = time.monotonic()
            r = upload(other, other_ps, [("small-0.png", png_bytes(0))])
            baseline = time.monotonic() - started
            assert r.status_code == 200, r.text
            rss0 = rss_bytes()
            reset_peak_rss()
            with ThreadPoolExecutor(3) as pool:
                flood = [pool.submit(upload, attacker, ps, files) for _ in range(3)]
                # meanwhile another user: the health check and a small upload answer at once
                waits = []
                for i in range(1, 4):
                    started = time.monotonic()
                    assert other.get("/health").status_code == 200
                    r = upload(other, other_ps, [(f"small-{i}.png", png_bytes(i))])
                    assert r.status_code == 200, r.text
                    waits.append(time.monotonic() - started)
                answers = [f.result() for f in flood]
            growth = peak_rss_bytes() - rss0
            print(f"pixel flood: peak RSS growth {growth / 2**20:.0f} MB; another user's health + upload "
                  f"{max(waits) * 1000:.0f} ms (alone {baseline * 1000:.0f} ms)")
            assert all(a.status_code in (200, 422) for a in answers), [a.text for a in answers]
            every = [reason for a in answers for reason in reasons(a) + [a.json().get("detail", "")]]
            assert not [x for x in every if x and "duplicate" not in x and "pixels together" not in x
                        and "no photo was added" not in x], every
            # each distinct photo at most once; the budget may refuse the last of a request
            assert 3 <= s.photo_count(ps) <= 4
            assert growth < 450 * 2**20, f"memory grew by {growth / 2**20:.0f} MB"
            assert max(waits) < max(2.0, 10 * baseline), waits
    finally:
        s.stop()


def test_the_request_pixel_budget_refuses_the_rest_with_a_reason(make_client, local_pg_settings):
    client = make_client(local_pg_settings.model_copy(update={"max_request_pixels": 3 * 48 * 40}))
    sign_up(client)
    ps = photo_set(client)
    r = upload(client, ps, [(f"p{i}.png", png_bytes(i)) for i in range(5)])
    assert r.status_code == 200 and len(r.json()["added"]) == 3
    assert reasons(r) == ["the photos of this upload have more than 5,760 pixels together; "
                          "send this one in another upload"] * 2
    r = upload(client, ps, [(f"p{i}.png", png_bytes(i)) for i in range(3, 5)])  # the next upload takes them
    assert r.status_code == 200 and len(r.json()["added"]) == 2


def test_header_checks_come_before_decoding_and_jpegs_are_decoded_reduced():
    big = io.BytesIO()
    Image.new("RGB", (4000, 3000), "green").save(big, "JPEG")
    header = read_header(big.getvalue(), max_bytes=10**8, max_pixels=40_000_000, min_side=32)
    assert header.reduced and header.decode_pixels == 500 * 375  # 1/8 scale
    checked = check_photo(big.getvalue(), max_bytes=10**8, max_pixels=40_000_000, min_side=32)
    assert (checked.width, checked.height) == (4000, 3000) and checked.data == big.getvalue()
    damaged = big.getvalue()[: len(big.getvalue()) // 2]
    with pytest.raises(PhotoRejected, match="damaged or truncated"):  # the reduced decode reads every byte
        check_photo(damaged, max_bytes=10**8, max_pixels=40_000_000, min_side=32)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4000, 3000), "green").save(rotated, "JPEG", exif=exif)
    header = read_header(rotated.getvalue(), max_bytes=10**8, max_pixels=40_000_000, min_side=32)
    assert not header.reduced and header.decode_pixels == 12_000_000  # rotated: decoded in full


def test_decode_budget_lets_small_images_pass_beside_a_large_one():
    budget = DecodeBudget(50)
    order = []
    with budget.hold(40):
        def small_job():
            with budget.hold(5):
                order.append("small")

        def large_job():
            with budget.hold(40):
                order.append("large")

        threads = [threading.Thread(target=small_job), threading.Thread(target=large_job)]
        for t in threads:
            t.start()
        wait_for(lambda: order == ["small"], 5, "the small image to pass")
        time.sleep(0.2)
        assert order == ["small"]  # the second large one waits for the first
    for t in threads:
        t.join(5)
    assert order == ["small", "large"] and budget.in_flight == 0
    with budget.hold(500):  # larger than the limit alone: goes through by itself
        assert budget.in_flight == 500


def test_mpo_first_frame_is_accepted_as_a_jpeg():
    """Many phones write MPO (a JPEG with more frames after it); it was refused."""
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    checked = check_photo(out.getvalue(), max_bytes=10**7, max_pixels=10**7, min_side=32)
    assert (checked.content_type, checked.ext, checked.width, checked.height) == ("image/jpeg", "jpg", 64, 48)
    thumb = Image.open(io.BytesIO(checked.thumbnail)).convert("RGB")
    assert thumb.getpixel((10, 10))[0] > 200  # the first frame (red)


# ------------------------------------------------------------------- concurrent uploads
def test_concurrent_uploads_of_the_same_photo_each_get_a_duplicate_answer(served):
    """The finding: four concurrent uploads of the same photo gave three plain-text 500s
    (UNIQUE IntegrityError) and rolled back the whole batch."""
    with served.user() as client:
        ps = photo_set(client)
        same = png_bytes(7)
        batch = [("same.png", same), ("other-1.png", png_bytes(1))]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: upload(client, ps, batch if i == 0 else [("same.png", same)]), range(4)))
    assert [a.status_code for a in answers if a.status_code not in (200, 422)] == [], [a.text for a in answers]
    added = [p["filename"] for a in answers if a.status_code == 200 for p in a.json()["added"]]
    assert sorted(added).count("same.png") == 1 and "other-1.png" in added  # the batch was not rolled back
    refused = [r for a in answers for r in reasons(a)]
    assert len(refused) == 3 and all(r.startswith("duplicate") for r in refused), refused
    assert served.photo_count(ps) == 2


def test_the_photo_limit_holds_under_concurrent_uploads(served):
    """The finding: two concurrent 60-photo uploads gave a 120-photo set."""
    with served.user() as client:
        ps = photo_set(client)
        batches = [[(f"b{b}-{i}.png", png_bytes(b * 100 + i, size=(32, 32))) for i in range(60)] for b in range(2)]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda batch: upload(client, ps, batch), batches))
    assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
    assert sum(len(a.json()["added"]) for a in answers) == 100
    over = [r for a in answers for r in reasons(a)]
    assert len(over) == 20 and set(over) == {"the photo set already holds the maximum of 100 photos"}
    assert served.photo_count(ps) == 100


# ------------------------------------------------------------------ runs that cannot fit
def test_the_memory_estimate_matches_the_demo_model_measurements():
    """Peak RSS of one training step of builtin:fmnist-ddpm-32 on CPU, measured here
    (docs/reliability.md): the estimate is within 10 %."""
    from app.runlimits import BUILTINS, estimate_mb

    measured = {(2, 4, 32): 537, (2, 4, 64): 703, (2, 4, 128): 1341, (8, 4, 64): 892, (10, 4, 64): 949,
                (2, 16, 64): 1202}
    demo = BUILTINS["builtin:fmnist-ddpm-32"]
    for (batch, samples, resolution), mb in measured.items():
        values = {"mode": "full", "batch_size": batch, "num_similarity_samples": samples, "resolution": resolution}
        assert abs(estimate_mb(demo, values) - mb) < 0.1 * mb, (batch, samples, resolution)


def test_the_step_memory_benchmark_reproduces_the_measurements(capsys):
    """benchmarks/step_memory.py is how the figures above are measured again after the demo
    model changes: its smallest configuration comes out where the table says (537 MB)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "step_memory.py"
    spec = importlib.util.spec_from_file_location("step_memory", path)
    step_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_memory)
    step_memory.main(["--configs", "2/4/32"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[0] == "2/4/32"
    measured, estimated = int(row[1].replace(",", "")), int(row[2].replace(",", ""))
    assert abs(measured - 537) < 0.1 * 537 and estimated == 533, row


def test_a_local_model_folder_is_sized_from_its_files_without_loading_it(tmp_path):
    torch = pytest.importorskip("torch")
    from app.runlimits import TEXT_TO_IMAGE, UNCONDITIONAL, model_facts
    from worker.domainstudio.models import load_base_model

    for spec, kind in (("builtin:tiny-ddpm", UNCONDITIONAL), ("builtin:tiny-sd", TEXT_TO_IMAGE)):
        base = load_base_model(spec)
        folder = tmp_path / spec.split(":")[1]
        if kind == UNCONDITIONAL:
            base.unet.save_pretrained(folder)  # a bare UNet2DModel folder
        else:
            for name in ("unet", "vae", "text_encoder"):
                getattr(base, name).save_pretrained(folder / name)
            (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": [], '
                                                     '"vae": [], "text_encoder": []}')
        facts = model_facts(str(folder))
        assert facts is not None and facts.kind == kind and facts.resolution == base.resolution
        assert facts.unet_params == sum(p.numel() for p in base.unet.parameters())
        assert facts == model_facts(spec)  # the builtin table says the same
    assert model_facts(str(tmp_path / "missing")) is None and model_facts("some/hub-id") is None
    del torch


def test_the_text_to_image_demo_model_is_sized_as_its_shipped_files_say():
    """builtin:fmnist-sd-32 (the embedded default) gets an estimate: its table entry is what
    its weights folder says (read without torch)."""
    from pathlib import Path

    import worker
    from app.runlimits import model_facts

    folder = Path(worker.__file__).parent / "domainstudio" / "weights" / "fmnist-sd-32"
    assert model_facts("builtin:fmnist-sd-32") == model_facts(str(folder)) is not None


@pytest.fixture
def demo_client(make_client, local_pg_settings):
    settings = local_pg_settings.model_copy(update={
        "base_models": "builtin:fmnist-ddpm-32,builtin:tiny-ddpm,builtin:tiny-sd", "max_active_runs_per_team": 2})
    client = make_client(settings)
    sign_up(client)
    ps = photo_set(client)
    r = upload(client, ps, [(f"p{i}.png", png_bytes(i, size=(512, 512))) for i in range(10)])
    assert r.status_code == 200 and len(r.json()["added"]) == 10
    return client, ps


def start(client, ps, **body):
    return client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick", **body})


def test_runs_the_worker_could_not_hold_or_would_refuse_are_refused_at_creation(demo_client):
    client, ps = demo_client
    cases = [
        # the finding: steps 100,000 + batch 64 + resolution 2048 + 64 similarity samples was a 201
        ({"base_model": "builtin:fmnist-ddpm-32", "settings": {"steps": 100_000, "batch_size": 64, "resolution": 2048,
                                                              "num_similarity_samples": 64}},
         "at most 20000 steps"),
        ({"base_model": "builtin:fmnist-ddpm-32", "settings": {"batch_size": 64, "resolution": 2048,
                                                              "num_similarity_samples": 64}},
         "workers have 16,000 MB"),
        # ten ordinary 512 px photos and resolution 512 on the demo model: ~31 GB
        ({"base_model": "builtin:fmnist-ddpm-32", "settings": {"resolution": 512}},
         "needs about 31,100 MB"),
        ({"base_model": "builtin:tiny-ddpm", "settings": {"mode": "lora"}}, "lora mode is for text-to-image models"),
        ({"base_model": "builtin:tiny-sd", "settings": {"num_class_images": 1}},
         "'num_class_images' must be between 2"),
        ({"base_model": "builtin:fmnist-ddpm-32", "gallery_size": 1001}, "gallery size must be between 1 and 1000"),
    ]
    for body, reason in cases:
        r = start(client, ps, **body)
        assert r.status_code == 400 and reason in r.json()["detail"], (body, r.text)
    assert client.get(f"/api/photo-sets/{ps}/runs").json() == {"runs": []}  # nothing was created
    # what fits is accepted: the demo model at its own 32 px, and lora on a text-to-image model
    assert start(client, ps, base_model="builtin:fmnist-ddpm-32", settings={"resolution": 64}).status_code == 201
    assert start(client, ps, base_model="builtin:tiny-sd", settings={"mode": "lora"}).status_code == 201


def test_a_team_may_have_only_so_many_runs_waiting_or_training(demo_client):
    """The finding: one team queued 30 runs in 1.3 s into the one first-in-first-out queue."""
    client, ps = demo_client
    first = [start(client, ps, base_model="builtin:tiny-ddpm") for _ in range(2)]
    assert [r.status_code for r in first] == [201, 201]
    r = start(client, ps, base_model="builtin:tiny-ddpm")
    assert r.status_code == 429 and "2 runs waiting or training" in r.json()["detail"]
    assert client.post(f"/api/runs/{first[0].json()['id']}/cancel").status_code == 200  # a queued run: canceled at once
    assert start(client, ps, base_model="builtin:tiny-ddpm").status_code == 201


# ------------------------------------------------------------- passwords, headers
@pytest.mark.parametrize("password,reason", [
    ("aaaaaaaaaa", "among the first that guessers try"),  # the finding
    ("password12", "among the first that guessers try"),  # the finding
    ("Password123!", "among the first that guessers try"),
    ("qwertyuiop", "among the first that guessers try"),
    ("1234567890", "among the first that guessers try"),
    ("abcdefghijkl", "among the first that guessers try"),
    ("ababababab12", "among the first that guessers try"),
    ("iloveyou2026!", "among the first that guessers try"),
    ("marie.curie-1867", "your email name"),
    ("my domainstudio pass", "the name of this service"),
    ("short", "at least 10 characters"),
])
def test_guessable_passwords_are_refused_at_sign_up(make_client, local_pg_settings, password, reason):
    client = make_client(local_pg_settings)
    r = client.post("/api/auth/signup", json={"email": f"marie.curie-{uuid.uuid4().hex[:6]}@example.com",
                                               "password": password})
    assert r.status_code == 400 and reason in r.json()["detail"], r.text


def test_good_passwords_are_accepted():
    from app.passwords import weakness

    for password in ("correct horse battery", "violet-tractor-92", "Mq7#vL2p!xR9", "zebra cactus umbrella"):
        assert weakness(password, "someone@example.com") is None, password


def test_absurd_headers_get_a_400_with_the_reason(local_pg_settings):
    s = Served(local_pg_settings)
    try:
        with s.client() as client:
            assert client.get("/health").status_code == 200
            for headers in ({"X-Big": "a" * 20_000}, {"Accept-Language": "en;q=0.5," * 5_000},
                            {"Cookie": "; ".join(f"c{i}=v" for i in range(3_000))},
                            {f"X-Many-{i}": "v" * 900 for i in range(40)}):
                r = client.get("/health", headers=headers)
                assert r.status_code == 400 and "request headers are too large" in r.json()["detail"]
                assert r.headers["x-frame-options"] == "DENY"
            # a 5,000-digit Last-Event-ID is small enough to pass here: the stream refuses it (test_web_live)
            assert client.get("/health", headers={"Last-Event-ID": "9" * 5000}).status_code == 200
    finally:
        s.stop()


# ------------------------------------------------------------------------- sign-in limits
class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def guess(limiter, clock, email: str, ip: str, times: int) -> None:
    """``times`` wrong passwords, each as soon as the limiter lets the client try."""
    for _ in range(times):
        clock.now += limiter.retry_after(email, ip)
        limiter.failed(email, ip)


def test_failures_slow_down_the_guesser_never_the_owner():
    """The findings: 5 wrong passwords locked the owner out for 5 minutes (renewable by
    anyone); ~50 failures on random e-mails from one address locked every account from that
    address (behind a reverse proxy: everyone); a forged X-Forwarded-For bypassed the
    per-address limit."""
    from app.ratelimit import LoginLimiter

    clock = Clock()
    limiter = LoginLimiter(5, 300, 900, clock=clock)
    owner, browser = "owner@example.com", "device-id-of-the-owners-browser"
    guess(limiter, clock, owner, "6.6.6.6", 20)  # a guesser, from one address
    assert limiter.retry_after(owner, "6.6.6.6") > 60  # the guesser waits longer and longer
    assert limiter.retry_after(owner, "1.2.3.4") == 0  # the owner, from anywhere else: not at all
    assert limiter.retry_after(owner, "6.6.6.6", browser) == 0  # the owner's known browser, even from there

    # a guesser with forged addresses (X-Forwarded-For from a trusted client): the account
    # from all addresses slows down, except for the owner's known browser
    for i in range(60):
        guess(limiter, clock, owner, f"10.0.{i}.1", 1)
    assert limiter.retry_after(owner, "10.9.9.9") > 0 and limiter.retry_after(owner, "1.2.3.4") > 0
    assert limiter.retry_after(owner, "1.2.3.4", browser) == 0

    # one address (a proxy: everyone) trying 60 random accounts: new clients from it wait
    # a few seconds, growing with the failures, never minutes; known browsers not at all
    for i in range(60):
        guess(limiter, clock, f"random-{i}@example.com", "192.0.2.10", 1)
    wait = limiter.retry_after("colleague@example.com", "192.0.2.10")
    assert 0 < wait <= 2 ** (60 - 50) + 1
    assert limiter.retry_after("colleague@example.com", "192.0.2.10", "colleagues-browser") == 0
    assert limiter.retry_after("colleague@example.com", "198.51.100.7") == 0

    # the known browser's own failures count for it alone: a stolen laptop is slowed too
    for _ in range(8):
        clock.now += limiter.retry_after(owner, "1.2.3.4", browser)
        limiter.failed(owner, "1.2.3.4", browser)
    assert limiter.retry_after(owner, "1.2.3.4", browser) > 0
    limiter.succeeded(owner, "1.2.3.4", browser)
    assert limiter.retry_after(owner, "1.2.3.4", browser) == 0
    # and every delay is bounded: the longest wait is max_delay, and counts are forgotten
    assert limiter.retry_after(owner, "6.6.6.6") <= 901
    clock.now += 300 + 900 + 1
    assert limiter.retry_after(owner, "6.6.6.6") == 0 and limiter.retry_after(owner, "10.9.9.9") == 0


def test_sign_in_counts_live_in_redis_for_every_replica():
    from app.ratelimit import LoginLimiter, RedisCounts

    prefix = f"domainstudio:login:test-{uuid.uuid4().hex[:8]}:"
    clock = Clock()
    replicas = [LoginLimiter(3, 300, 900, RedisCounts("redis://127.0.0.1:6379/0", prefix), clock=clock)
                for _ in range(2)]
    try:
        for i in range(3):  # failures spread over two api replicas
            replicas[i % 2].failed("shared@example.com", "6.6.6.6")
        assert replicas[0].retry_after("shared@example.com", "6.6.6.6") > 0
        assert replicas[1].retry_after("shared@example.com", "6.6.6.6") > 0
        replicas[1].succeeded("shared@example.com", "6.6.6.6")
        assert replicas[0].retry_after("shared@example.com", "6.6.6.6") == 0
        ttl = replicas[0].counts.redis.ttl(prefix + "account:shared@example.com")
        assert 0 < ttl <= 300 + 900  # forgotten by Redis itself
    finally:
        redis_client = replicas[0].counts.redis
        redis_client.delete(*redis_client.keys(prefix + "*"))


def test_the_owners_browser_signs_in_while_a_guesser_is_slowed_down(make_client, local_pg_settings):
    settings = local_pg_settings.model_copy(update={"login_max_failures": 2})
    owner = make_client(settings)
    email = sign_up(owner)["user"]["email"]
    owner.post("/api/auth/logout")
    r = owner.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 200 and "domainstudio_device" in r.cookies  # this browser is known now
    owner.post("/api/auth/logout")
    guesser = make_client(settings)  # the same address (the test client's), no device cookie
    for _ in range(4):
        r = guesser.post("/api/auth/login", json={"email": email, "password": "wrong password"})
        if r.status_code == 429:
            time.sleep(int(r.headers["retry-after"]))
    r = guesser.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 429  # even the right password waits, from an unknown browser
    r = owner.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 200, r.text  # the owner's browser is not locked out
    # a device cookie of another account, or a forged one, does not count as known
    guesser.cookies.set("domainstudio_device", owner.cookies["domainstudio_device"] + "x")
    r = guesser.post("/api/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 429


# ---------------------------------------------------------------------------- pack estimate
def test_the_pack_estimate_encodes_only_small_windows(tmp_path, monkeypatch):
    """The finding: the pack estimate ran in the web request for 2.2-3.5 s (12 concurrent
    calls ~32 s each): it resized and encoded whole sample images to every size. Now it
    encodes a 256-pixel window of each output, the very pixels the whole output has there."""
    from types import SimpleNamespace

    from app import packfiles
    from app.services import packs
    from app.storage import LocalStorage

    source = Image.effect_noise((256, 256), 40).convert("RGB").resize((512, 512))
    for size in packs.SIZES:
        full, window = packfiles.resize(source, size), packs.output_window(source, size)
        left, top = (full.size[0] - window.size[0]) // 2, (full.size[1] - window.size[1]) // 2
        assert window.tobytes() == full.crop((left, top, left + window.size[0], top + window.size[1])).tobytes()

    storage = LocalStorage(tmp_path / "objects")
    out = io.BytesIO()
    source.save(out, "PNG")
    storage.put_bytes("img.png", out.getvalue())
    images = [SimpleNamespace(id=i, key="img.png", width=512, height=512, seed=i, prompt="a photo of sks bottle")
              for i in range(1000)]
    encoded = []
    real_encode = packs.encode
    monkeypatch.setattr(packs, "encode", lambda img, fmt: encoded.append(img.size) or real_encode(img, fmt))
    started = time.monotonic()
    estimate = packs.estimate_bytes(storage, images, "png", list(packs.SIZES))
    took = time.monotonic() - started
    print(f"pack estimate, 1,000 images of 512 px, five sizes, PNG: {took * 1000:.0f} ms")
    assert estimate > 0 and encoded and all(w <= 256 and h <= 256 for w, h in encoded)
    assert len(encoded) == packs.ESTIMATE_SAMPLE * len(packs.SIZES)


# ------------------------------------------------------------------------------ quotas
def test_a_team_may_have_only_so_many_packs_waiting_and_so_much_stored(make_client, local_pg_settings):
    """The finding: one team asked for 20 five-size PNG packs at once (a pack of a
    1,000-image gallery is ~0.5 GB), with no quota on what it stored."""
    from web_helpers import seed_team_objects

    settings = local_pg_settings.model_copy(update={"max_active_packs_per_team": 2})
    client = make_client(settings)
    sign_up(client)
    ids = seed_team_objects(client)
    pack = {"selection": "approved", "format": "png", "size": ["original", "1024", "2048", "square", "4x5"]}
    answers = [client.post(f"/api/galleries/{ids['gallery_id']}/packs", json=pack) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429], [a.text for a in answers]
    assert "2 packs waiting or being built" in answers[2].json()["detail"]
    assert client.post(f"/api/packs/{answers[0].json()['id']}/cancel").status_code == 200
    assert client.post(f"/api/galleries/{ids['gallery_id']}/packs", json=pack).status_code == 201

    # storage: the team's photos, checkpoints and packs; at the quota new work is refused
    with client.app.state.sessionmaker() as db:
        from app import repositories as repo

        used = repo.stored_bytes(db, uuid.UUID(client.get("/api/me").json()["user"]["team_id"]))
    assert used > 0
    full = make_client(settings.model_copy(update={"max_team_storage_bytes": used}))
    full.cookies.update(client.cookies)
    full.headers["X-CSRF-Token"] = client.headers["X-CSRF-Token"]
    for r in (full.post(f"/api/galleries/{ids['gallery_id']}/packs", json=pack),
              upload(full, ids["photo_set_id"], [("more.png", png_bytes(99))]),
              full.post(f"/api/photo-sets/{ids['photo_set_id']}/runs", json={"preset": "quick"})):
        assert r.status_code == 409 and "of storage" in r.json()["detail"], r.text
    roomy = make_client(settings.model_copy(update={"max_team_storage_bytes": used + 10**6}))
    roomy.cookies.update(client.cookies)
    roomy.headers["X-CSRF-Token"] = client.headers["X-CSRF-Token"]
    assert upload(roomy, ids["photo_set_id"], [("more.png", png_bytes(99))]).status_code == 200


def test_a_burst_of_sign_ups_is_bounded_in_memory_and_others_are_answered(local_pg_settings):
    """The finding: 40 concurrent sign-ups pushed memory from 120 to 855 MB (argon2 takes
    64 MB each) and /health of another client to 10.3 s. Sign-ups and sign-ins now run on
    password_threads (4) threads of their own."""
    s = Served(local_pg_settings)
    try:
        with s.client() as other:
            baseline = min(timed_health(other) for _ in range(3))
            rss0 = rss_bytes()
            reset_peak_rss()

            def sign_up_one(i):
                with s.client() as c:
                    return c.post("/api/auth/signup", json={"email": f"burst-{i}-{uuid.uuid4().hex[:6]}@example.com",
                                                           "password": "correct horse battery"}).status_code

            with ThreadPoolExecutor(40) as pool:
                burst = [pool.submit(sign_up_one, i) for i in range(40)]
                time.sleep(0.3)
                waits = [timed_health(other) for _ in range(5) if time.sleep(0.2) is None]
                codes = [f.result() for f in burst]
            growth = peak_rss_bytes() - rss0
            print(f"40 concurrent sign-ups: peak RSS growth {growth / 2**20:.0f} MB; another client's /health worst "
                  f"{max(waits) * 1000:.0f} ms (alone {baseline * 1000:.0f} ms)")
            assert codes == [201] * 40
            # argon2 keeps the cores busy by design (4 threads on this 2-core machine): the bound
            # is looser than for the streams, far under the 9.6 s of the code before
            assert max(waits) < max(3.0, 20 * baseline), waits
            assert growth < 4 * 64 * 2**20 + 150 * 2**20, f"memory grew by {growth / 2**20:.0f} MB"
    finally:
        s.stop()
