"""The run page's live progress (server-sent events), the loss history and stage times the
worker records, and the run report (page and JSON)."""
from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import update

from app import runwatch
from app.models import Checkpoint, Gallery, Run
from app.routes import live
from app.progress import MAX_LOSS_POINTS, add_loss_point, loss_point, with_stage_time
from app.setting_labels import SETTING_TEXTS, describe_settings
from web_helpers import free_port, new_photo_set, poll, sign_up, wait_for


# ------------------------------------------------------------------------------ helpers
def parse_events(text: str) -> list[tuple[str, dict, str | None]]:
    """(event name, data, id) of each event of a text/event-stream body; comments and the
    retry field are skipped."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
                      and ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
    return out


def add_run(client, ps: str, **values) -> str:
    """A run row written directly (no worker): the test drives it."""
    team = client.get("/api/me").json()["user"]["team_id"]
    row = dict(team_id=uuid.UUID(team), photo_set_id=uuid.UUID(ps), preset="quick", base_model="builtin:tiny-ddpm",
               settings={"steps": 3, "mode": "auto", "base_model": "builtin:tiny-ddpm", "class_word": "bottle"},
               gallery_size=2, status="running", total_steps=3)
    row.update(values)
    with client.app.state.sessionmaker() as db:
        run = Run(**row)
        db.add(run)
        db.commit()
        return str(run.id)


def set_run(client, run_id: str, **values) -> None:
    with client.app.state.sessionmaker() as db:
        db.execute(update(Run).where(Run.id == uuid.UUID(run_id)).values(**values))
        db.commit()


@pytest.fixture
def fast_stream(monkeypatch):
    monkeypatch.setattr(live, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.2)


class Captured(logging.Handler):
    """The domainstudio loggers do not propagate (JSON lines to stderr): listen on one."""

    def __init__(self, name: str):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# ------------------------------------------------------------------------- loss history
def test_loss_history_stays_bounded_and_keeps_the_ends():
    history = []
    for step in range(1, 5001):
        history = add_loss_point(history, loss_point(step, step * 0.1, {"total": 1.0 / step, "simple": 0.5}))
        assert len(history) <= MAX_LOSS_POINTS
    assert history[0]["step"] == 1 and history[-1]["step"] == 5000
    steps = [p["step"] for p in history]
    assert steps == sorted(steps) and len(steps) > MAX_LOSS_POINTS // 2
    # spread evenly over the run: each fifth of it holds about a fifth of the points
    fifths = [sum(1 for s in steps if k * 1000 < s <= (k + 1) * 1000) for k in range(5)]
    assert max(fifths) < 1.5 * min(fifths), fifths
    # a resumed run repeats the steps after its saved state: those points are replaced
    resumed = add_loss_point(history, loss_point(4000, 1.0, {"total": 9.0}))
    assert resumed[-1] == {"step": 4000, "elapsed": 1.0, "terms": {"total": 9.0}}
    assert all(p["step"] < 4000 for p in resumed[:-1])


def test_loss_point_rounds_and_nulls_non_finite_values():
    p = loss_point(7, 1.23456, {"total": 0.123456789, "hf": math.nan, "img": math.inf})
    assert p == {"step": 7, "elapsed": 1.235, "terms": {"total": 0.123457, "hf": None, "img": None}}
    json.dumps(p, allow_nan=False)


def test_stage_times_set_or_add():
    times = with_stage_time({"queued": 1.0}, "gallery", 2.0)
    assert with_stage_time(times, "gallery", 3.0, add=True) == {"queued": 1.0, "gallery": 5.0}
    assert with_stage_time(times, "gallery", 3.0) == {"queued": 1.0, "gallery": 3.0}


def test_setting_texts_are_the_core_help_texts():
    from app.setting_labels import LABELS
    from worker.domainstudio.config import AdaptConfig

    core = {f["name"]: f["help"] for f in AdaptConfig.fields_help()}
    assert set(SETTING_TEXTS) == set(core) and set(LABELS) == set(core)  # a new setting needs a label
    assert {n: text.help for n, text in SETTING_TEXTS.items()} == core
    for text in SETTING_TEXTS.values():
        assert text.label and "%" not in text.label + text.help  # newstyle gettext formats with %
    rows = describe_settings({"steps": 3, "seed": 0, "future_setting": 1}, chosen={"steps": 3})
    assert [(r["name"], r["label"], r["chosen"]) for r in rows] == [
        ("steps", "Training steps", True), ("seed", "Seed", False), ("future_setting", "future_setting", False)]


# -------------------------------------------------------------------------- event stream
def test_event_stream_follows_a_run_until_it_succeeds(make_client, local_pg_settings, fast_stream):
    client = make_client(local_pg_settings)
    sign_up(client)
    run_id = add_run(client, new_photo_set(client, n_photos=0))

    def worker():  # what the worker's progress callback writes, step by step
        history = []
        for step in (1, 2, 3):
            time.sleep(0.25)
            history = add_loss_point(history, loss_point(step, step * 0.5, {"total": 1.0 / step, "simple": 0.1}))
            set_run(client, run_id, step=step, stage="training", losses=history[-1]["terms"], eta_seconds=3.0 - step,
                    elapsed_seconds=step * 0.5, loss_history=history)
        time.sleep(0.25)
        set_run(client, run_id, status="succeeded", finished_at=datetime.now(timezone.utc))

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        started = time.monotonic()
        r = client.get(f"/api/runs/{run_id}/events")  # the test client returns once the stream ended
        elapsed = time.monotonic() - started
    finally:
        thread.join()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.text.startswith("retry: ") and ": heartbeat" not in r.text[:20]
    events = parse_events(r.text)
    runs = [data for name, data, _ in events if name == "run"]
    assert [e[0] for e in events][-1] == "end" and events[-1][1] == {"status": "succeeded"}
    assert [x["step"] for x in runs] == sorted(x["step"] for x in runs) and runs[-1]["status"] == "succeeded"
    assert len(runs) >= 2 and runs[-1]["step"] == 3  # the changes as they come (a busy machine may merge two)
    assert any(x["stage"] == "training" for x in runs)
    # every loss point is sent once, in order, and the event id is the last one's step
    sent = [p["step"] for x in runs for p in x["history"]]
    assert sent == [1, 2, 3]
    assert [i for name, _, i in events if name == "run"][-1] == "3"
    assert elapsed < 10

    # a reconnecting EventSource sends the last id it got: only newer points come again
    again = parse_events(client.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "2"}).text)
    assert [p["step"] for p in again[0][1]["history"]] == [3] and again[-1][0] == "end"
    # the page puts the points it rendered in the URL
    assert parse_events(client.get(f"/api/runs/{run_id}/events?after=3").text)[0][1]["history"] == []


def test_event_stream_has_a_bounded_lifetime_and_is_team_scoped(make_client, local_pg_settings, fast_stream, monkeypatch):
    # several heartbeat periods (0.2 s), so that a slow first read on a busy machine still
    # leaves time for one
    monkeypatch.setattr(live, "STREAM_SECONDS", 1.5)
    owner = make_client(local_pg_settings)
    sign_up(owner)
    run_id = add_run(owner, new_photo_set(owner, n_photos=0), status="queued")
    with Captured("domainstudio.live") as logs:
        r = owner.get(f"/api/runs/{run_id}/events")  # a run that never changes
    assert r.status_code == 200
    events = parse_events(r.text)
    assert [name for name, _, _ in events] == ["run"]  # the state once, then heartbeats only
    assert r.text.count(": heartbeat") >= 1
    assert [rec.reason for rec in logs.records] == ["lifetime"]

    intruder = make_client(local_pg_settings)
    sign_up(intruder)
    assert intruder.get(f"/api/runs/{run_id}/events").status_code == 404
    assert intruder.get(f"/api/runs/{run_id}/report").status_code == 404
    assert intruder.get(f"/runs/{run_id}/report").status_code == 404
    anon = make_client(local_pg_settings)
    assert anon.get(f"/api/runs/{run_id}/events").status_code == 401
    assert owner.get(f"/api/runs/{uuid.uuid4()}/events").status_code == 404

    # a database blip ends the stream quietly (the browser reconnects), without the end event
    from sqlalchemy.exc import OperationalError

    def unreachable(*_args):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    with monkeypatch.context() as patch, Captured("domainstudio.live") as logs:
        patch.setattr(runwatch, "fetch_runs", unreachable)
        r = owner.get(f"/api/runs/{run_id}/events")
    assert r.status_code == 200 and parse_events(r.text) == []
    assert [rec.reason for rec in logs.records] == ["database error: OperationalError"]

    set_run(owner, run_id, status="canceled")
    with Captured("domainstudio.live") as logs:
        assert parse_events(owner.get(f"/api/runs/{run_id}/events").text)[-1] == ("end", {"status": "canceled"}, None)
    assert [rec.reason for rec in logs.records] == ["canceled"]


def start_embedded(tmp_path, monkeypatch, **over):
    """The app as the embedded default serves it: its uvicorn server, SQLite, the local
    object folder (``over``: other settings)."""
    import uvicorn

    from app.embedded import make_server
    from app.main import create_app
    from app.migrate import upgrade
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path, secret_key="live-test-secret", base_models="builtin:tiny-ddpm", **over)
    upgrade(settings.resolved_database_url)
    monkeypatch.setattr(live, "_stopping", threading.Event())  # a stop here stops no other test's streams
    app = create_app(settings)
    server = make_server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn")
    return app, f"http://127.0.0.1:{server.config.port}", server, thread


@pytest.fixture
def embedded_server(tmp_path, monkeypatch):
    app, url, server, thread = start_embedded(tmp_path, monkeypatch)
    yield app, url, server, thread
    server.should_exit = True
    thread.join(10)


def add_running_run(app, client) -> str:
    team = client.get("/api/me").json()["user"]["team_id"]
    ps = client.post("/api/photo-sets", json={"name": "Live", "class_word": "bottle"}).json()["id"]
    with app.state.sessionmaker() as db:
        run = Run(team_id=uuid.UUID(team), photo_set_id=uuid.UUID(ps), preset="quick", base_model="builtin:tiny-ddpm",
                  settings={}, gallery_size=1, status="running", total_steps=10)
        db.add(run)
        db.commit()
        return str(run.id)


def test_event_stream_under_uvicorn_leaves_other_requests_free_and_stops_on_disconnect(embedded_server, fast_stream):
    app, url, _, _ = embedded_server
    with httpx.Client(base_url=url, timeout=10) as client:
        sign_up(client)
        run_id = add_running_run(app, client)
        with Captured("domainstudio.live") as logs:
            # one client per stream, as one browser tab each: closing it surely closes the socket
            # (a pool may keep a half-read response's connection until its next request)
            tabs = [httpx.Client(base_url=url, cookies=client.cookies, timeout=10) for _ in range(3)]
            streams = [tab.stream("GET", f"/api/runs/{run_id}/events") for tab in tabs]
            lines = []
            for s in streams:
                response = s.__enter__()
                assert response.status_code == 200
                lines.append(response.iter_lines())
                assert next(lines[-1]).startswith("retry: ")
            # three open streams: other requests are answered at once
            started = time.monotonic()
            for _ in range(5):
                assert client.get(f"/api/runs/{run_id}").status_code == 200
            assert time.monotonic() - started < 2
            # the stream pushes a change while it is open
            with app.state.sessionmaker() as db:
                db.execute(update(Run).where(Run.id == uuid.UUID(run_id)).values(step=4))
                db.commit()
            deadline = time.monotonic() + 10
            for line in lines[0]:  # heartbeats every 0.2 s keep this loop turning
                assert time.monotonic() < deadline, "no event for step 4"
                if line.startswith("data: ") and json.loads(line[6:])["step"] == 4:
                    assert json.loads(line[6:])["status"] == "running"
                    break
            for s, tab in zip(streams, tabs):  # the browser leaves the page
                s.__exit__(None, None, None)
                tab.close()
            wait_for(lambda: len(logs.records) == 3, 10, "the streams to stop")
        assert {rec.reason for rec in logs.records} == {"disconnected"}


def test_a_stopping_server_ends_the_event_streams(embedded_server):
    """Ctrl+C on scripts/run: uvicorn waits for open responses, so the streams end first
    (without the end event: the browser reconnects to the next server)."""
    import signal

    app, url, server, thread = embedded_server
    with httpx.Client(base_url=url, timeout=10) as client, Captured("domainstudio.live") as logs:
        sign_up(client)
        run_id = add_running_run(app, client)
        with client.stream("GET", f"/api/runs/{run_id}/events") as response:
            lines = response.iter_lines()
            assert next(lines).startswith("retry: ")
            started = time.monotonic()
            server.handle_exit(signal.SIGINT, None)  # what the signal handler calls
            rest = list(lines)  # the stream ends
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - started < 5
    assert not any(line.startswith("event: end") for line in rest)
    assert [rec.reason for rec in logs.records] == ["server stopping"]


def open_raw_streams(url: str, cookies, run_id: str, count: int, headers: str = "") -> list[socket.socket]:
    """``count`` event streams on sockets of their own, each read up to its first line (the
    response has started); the client reads nothing more, as a tab in the background."""
    host, port = url.removeprefix("http://").split(":")
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    request = (f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
               f"Accept: text/event-stream\r\n{headers}\r\n").encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=60)
        sock.sendall(request)
        socks.append(sock)
    for sock in socks:
        head = b""
        while b"retry:" not in head and b"\r\n\r\n{" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the server closed a stream"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return socks


def timed_health(client: httpx.Client) -> float:
    started = time.monotonic()
    r = client.get("/health")
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def test_hundreds_of_open_streams_leave_other_clients_answered(tmp_path, monkeypatch):
    """The finding: ~100 streams of one user (each polling its run with a pooled connection
    of the embedded default's 5 + 10) made /health of another client time out for the whole
    window. Streams now wait on one poller and hold no connection."""
    count = 300
    app, url, server, thread = start_embedded(tmp_path, monkeypatch, max_event_streams_per_user=count,
                                              max_event_streams=count)
    socks = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client, httpx.Client(base_url=url, timeout=30) as other:
            sign_up(client)
            run_id = add_running_run(app, client)
            baseline = min(timed_health(other) for _ in range(3))
            socks = open_raw_streams(url, client.cookies, run_id, count)
            assert app.state.stream_slots.open == count
            # several poll periods with every stream open: each answer comes at once
            worst = max(timed_health(other) for _ in range(8) if time.sleep(0.3) is None)
            print(f"/health with {count} streams open: worst {worst * 1000:.0f} ms (alone {baseline * 1000:.0f} ms)")
            assert worst < max(1.0, 10 * baseline), f"/health took {worst:.2f} s with {count} streams open"
            assert client.get(f"/api/runs/{run_id}").status_code == 200
            # one more stream than the cap: 429 with the reason, the open ones are not disturbed
            r = client.get(f"/api/runs/{run_id}/events")
            assert r.status_code == 429 and "streams open" in r.json()["detail"] and r.headers["retry-after"]
            for sock in socks:  # the client goes away: every slot comes back, the app keeps answering
                sock.close()
            socks = []
            wait_for(lambda: app.state.stream_slots.open == 0, 60, "the streams to close")
            assert timed_health(other) < max(1.0, 10 * baseline)
    finally:
        for sock in socks:
            sock.close()
        server.should_exit = True
        thread.join(10)


def test_event_stream_caps_per_user_and_in_all(tmp_path, monkeypatch):
    app, url, server, thread = start_embedded(tmp_path, monkeypatch, max_event_streams_per_user=2,
                                              max_event_streams=3)
    socks = []
    try:
        with httpx.Client(base_url=url, timeout=30) as first, httpx.Client(base_url=url, timeout=30) as second:
            sign_up(first)
            sign_up(second)
            run_a, run_b = add_running_run(app, first), add_running_run(app, second)
            socks += open_raw_streams(url, first.cookies, run_a, 2)
            r = first.get(f"/api/runs/{run_a}/events")  # a third of one user's
            assert r.status_code == 429 and "2 live progress streams" in r.json()["detail"]
            socks += open_raw_streams(url, second.cookies, run_b, 1)
            r = second.get(f"/api/runs/{run_b}/events")  # the user's second, the server's fourth
            assert r.status_code == 429 and "as many live progress streams" in r.json()["detail"]
            socks.pop(0).close()  # one closes: its place is free again
            wait_for(lambda: app.state.stream_slots.open == 2, 20, "the stream to close")
            socks += open_raw_streams(url, second.cookies, run_b, 1)
            assert app.state.stream_slots.by_user and app.state.stream_slots.open == 3
            # a refused or failed request takes no place: a 404 and an absurd Last-Event-ID
            for sock in socks:
                sock.close()
            socks = []
            wait_for(lambda: app.state.stream_slots.open == 0, 20, "the streams to close")
            assert first.get(f"/api/runs/{uuid.uuid4()}/events").status_code == 404
            r = first.get(f"/api/runs/{run_a}/events", headers={"Last-Event-ID": "9" * 5000})
            assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]
            assert app.state.stream_slots.open == 0 and app.state.stream_slots.by_user == {}
    finally:
        for sock in socks:
            sock.close()
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------------------- report
def seed_reported_run(client) -> tuple[str, str]:
    ps = new_photo_set(client, n_photos=0)
    team = client.get("/api/me").json()["user"]["team_id"]
    history = []
    for step in range(1, 6):
        history = add_loss_point(history, loss_point(step, step, {"total": 1.0 / step, "simple": 0.5, "img": 0.01}))
    created = datetime.now(timezone.utc) - timedelta(minutes=5)
    run_id = add_run(client, ps, status="succeeded", step=5, total_steps=5, loss_history=history,
                     losses=history[-1]["terms"],
                     settings={"steps": 5, "mode": "full", "base_model": "builtin:tiny-ddpm", "class_word": "bottle"},
                     stage_times={"queued": 2.5, "download": 0.4, "adapt": 61.0, "publish": 1.5}, created_at=created)
    with client.app.state.sessionmaker() as db:
        db.add(Checkpoint(team_id=team, run_id=run_id, kind="full", base_model="builtin:tiny-ddpm", prefix="x",
                          download_key="x/model.zip", download_name="model.zip", size_bytes=3, files=[],
                          settings={"steps": 5, "mode": "full", "batch_size": 10, "learning_rate": 1e-4,
                                    "base_model": "builtin:tiny-ddpm", "class_word": "bottle", "seed": 0,
                                    "base_fingerprint": "builtin:tiny-ddpm"}))
        measured = Gallery(team_id=team, run_id=run_id, size=8, steps=2, status="succeeded",
                           feature_network="builtin:tiny-features", near_copy_threshold=0.1,
                           diversity={"mean_pairwise_distance": 0.4321, "proxy_intra_lpips": None, "images": 8})
        db.add_all([measured, Gallery(team_id=team, run_id=run_id, size=4, steps=2, status="queued")])
        db.commit()
    return run_id, str(measured.id)


def test_report_json_and_page(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    run_id, gallery_id = seed_reported_run(client)

    report = client.get(f"/api/runs/{run_id}/report").json()
    assert report["run"]["id"] == run_id and report["run"]["stage_times"]["adapt"] == 61.0
    settings = {s["name"]: s for s in report["settings"]}
    # the resolved settings of the checkpoint, each with its readable name and help
    assert settings["batch_size"] == {"name": "batch_size", "label": "Photos per step", "value": 10, "chosen": False,
                                      "help": SETTING_TEXTS["batch_size"].help}
    assert settings["steps"]["chosen"] and settings["steps"]["label"] == "Training steps"
    assert [s["name"] for s in report["settings"]][:2] == ["base_model", "mode"]  # the core's order
    assert "base_fingerprint" not in settings  # the core's identity check of the weights, not a setting
    assert len(report["loss_history"]) == 5 and report["loss_terms"] == ["img", "simple", "total"]
    assert report["stage_times"] == [{"stage": "queued", "seconds": 2.5}, {"stage": "download", "seconds": 0.4},
                                     {"stage": "adapt", "seconds": 61.0}, {"stage": "publish", "seconds": 1.5},
                                     {"stage": "gallery_queued", "seconds": None}, {"stage": "gallery", "seconds": None}]
    assert report["total_seconds"] == 65.4
    measured, waiting = report["galleries"]
    assert measured["id"] == gallery_id and measured["diversity"]["mean_pairwise_distance"] == 0.4321
    assert measured["feature_network"] == "builtin:tiny-features" and waiting["diversity"] is None

    page = client.get(f"/runs/{run_id}/report")
    assert page.status_code == 200
    html = page.text
    assert 'href="/static/run.css"' in html and 'src="/static/run.js"' in html
    assert "Photos per step" in html and SETTING_TEXTS["batch_size"].help in html
    assert "0:01:01" in html and "Waiting in the queue" in html  # the adapt stage, as h:mm:ss
    assert "0.4321" in html and "builtin:tiny-features" in html
    assert "Not measured yet" in html  # the second gallery
    history = html.split('<script type="application/json" id="loss-history">', 1)[1].split("</script>", 1)[0]
    assert [p["step"] for p in json.loads(history)] == [1, 2, 3, 4, 5]
    texts = json.loads(html.split('<script type="application/json" id="run-text">', 1)[1].split("</script>", 1)[0])
    assert texts["terms"]["total"] == "Total" and "{term}" in texts["chart"]
    # the run page links to it and carries the chart's points
    run_page = client.get(f"/runs/{run_id}").text
    assert f'href="/runs/{run_id}/report"' in run_page and 'id="loss-history"' in run_page
    assert 'Step <strong id="run-step">5</strong> of <strong id="run-total">5</strong>' in run_page
    assert 'Denoising <code class="setting-name">simple</code></td><td>0.5</td>' in run_page  # the latest losses
    # "Elapsed" of a finished run is the report's total (65.4 s), not the core's training time
    assert 'id="run-elapsed" data-seconds="65.4">0:01:05</dd>' in run_page

    # in Japanese the page's own words change; the numbers stay
    client.cookies.set("domainstudio_lang", "ja")
    assert client.get(f"/runs/{run_id}/report").status_code == 200


def test_report_of_a_run_without_measurements(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    run_id = add_run(client, new_photo_set(client, n_photos=0), status="queued")
    report = client.get(f"/api/runs/{run_id}/report").json()
    assert report["loss_history"] == [] and report["total_seconds"] is None and report["galleries"] == []
    assert {s["name"] for s in report["settings"]} == {"steps", "mode", "base_model", "class_word"}
    html = client.get(f"/runs/{run_id}/report").text
    assert "Not measured yet" in html and "The loss curves appear after the first training steps." in html
    page = client.get(f"/runs/{run_id}").text
    assert f'data-events="/api/runs/{run_id}/events?after=-1"' in page and 'id="cancel-form"' in page


# ------------------------------------------------------------------ with a real worker
@pytest.mark.slow
def test_real_run_fills_loss_history_and_stage_times(make_client, pg_settings, celery_worker):
    client = make_client(pg_settings)
    sign_up(client)
    ps = new_photo_set(client, n_photos=10)
    body = {"preset": "quick", "base_model": "builtin:tiny-ddpm",
            "settings": {"steps": 4, "batch_size": 4, "preview_every": 2, "num_previews": 1, "checkpoint_every": 2}}
    r = client.post(f"/api/photo-sets/{ps}/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    events = parse_events(client.get(f"/api/runs/{run_id}/events").text)  # until the run is over
    assert events[-1] == ("end", {"status": "succeeded"}, None), events[-3:]
    runs = [data for name, data, _ in events if name == "run"]
    assert runs[-1]["status"] == "succeeded" and runs[-1]["step"] == 4
    points = [p for x in runs for p in x["history"]]
    assert points and points[-1]["step"] == 4 and {"simple", "total"} <= set(points[-1]["terms"])

    run = client.get(f"/api/runs/{run_id}").json()
    # succeeded: the times up to the checkpoint are there, in the same commit
    assert {"queued", "download", "adapt", "publish"} <= set(run["stage_times"]), run["stage_times"]
    assert all(v >= 0 for v in run["stage_times"].values())
    # the gallery adds its own once its images are generated
    report = poll(client, f"/api/runs/{run_id}/report",
                  lambda rep: any(s["stage"] == "gallery" and s["seconds"] is not None for s in rep["stage_times"]),
                  120, "the gallery's stage time")
    assert report["loss_history"][-1]["step"] == 4
    assert {s["name"] for s in report["settings"]} >= {"steps", "batch_size", "learning_rate", "ema_decay"}
    assert client.get(f"/runs/{run_id}/report").status_code == 200
