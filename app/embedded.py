"""The embedded default: the web app and its workers on one machine, with SQLite, a
local-folder object store and a Celery broker in a SQLite file (no Postgres, Redis or S3).

``scripts/run`` starts this; it prints the URL and how to sign in.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

from app.settings import Settings, get_settings

DEMO_EMAIL = "demo@domainstudio.local"


def ensure_demo_account(settings: Settings) -> tuple[str, str] | None:
    """Creates the demo account on first start and keeps its password in the data folder
    (readable by this user only) so that every start can print it."""
    from app import repositories as repo
    from app.db import make_engine, make_sessionmaker
    from app.passwords import weakness
    from app.services.auth import sign_up

    secret = settings.data_dir / "demo-account.txt"
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as db:
            if repo.user_by_email(db, DEMO_EMAIL) is None:
                password = secrets.token_urlsafe(12)
                while weakness(password, DEMO_EMAIL):  # e.g. "demo" inside, one time in 80,000
                    password = secrets.token_urlsafe(12)
                sign_up(db, DEMO_EMAIL, password, "Demo team")
                secret.write_text(password)
                secret.chmod(0o600)
            elif not secret.exists():
                return None
    finally:
        engine.dispose()
    return DEMO_EMAIL, secret.read_text().strip()


def requeue_interrupted(settings: Settings) -> int:
    """Sends again the jobs of runs, galleries and packs left queued or running when the
    embedded app last stopped. Only this process group's workers work for this database,
    so nothing else holds them; the tasks are idempotent (a run resumes from its saved
    training state, a gallery samples only missing seeds, a built pack is skipped)."""

    from app import repositories as repo
    from app.db import make_engine, make_sessionmaker
    from app.jobs import JOBS, JobQueue, make_celery

    engine = make_engine(settings.resolved_database_url)
    queue = JobQueue(make_celery(settings))
    sent = 0
    try:
        with make_sessionmaker(engine)() as db:
            for model, task in JOBS:
                # their workers died with the app: free the jobs for the next claim at once
                # (and forget their holder, so that no watchdog counts this as a worker that died on the job)
                repo.release_running_jobs(db, model)
                db.commit()
                for object_id in repo.active_job_ids(db, model):
                    queue.send_row(db, model, task, object_id)
                    sent += 1
    finally:
        engine.dispose()
    return sent


def _worker_preexec() -> None:
    """Runs in each worker process before it starts: a session of its own, so the
    terminal's Ctrl+C reaches only the app (which then stops the workers), and death with
    the app, so that no orphan worker outlives a crash and duplicates a resumed job."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the app still stops its workers itself
        pass


def prepare_broker(settings: Settings) -> None:
    """Creates the SQL broker's tables and queues once, before the workers start: two
    workers creating them at the same moment on a fresh data folder collide ("table
    kombu_queue already exists"), lose their connection and print a page of warnings."""
    from app.jobs import make_celery

    celery = make_celery(settings)
    with celery.connection_for_write() as conn:
        for queue in celery.conf.task_queues:
            queue(conn.default_channel).declare()


# Celery's warning against running as root, once for both workers (each would print it)
ROOT_NOTE = ("Note: running as root, so the workers do too; Celery advises a normal user "
             "for anything beyond trying DomainStudio.")


WORKERS = ("gpu", "cpu")  # one for runs and galleries, one for packs: a pack is built while a run trains


def start_worker(settings: Settings, name: str, log_level: str, env: dict | None = None) -> subprocess.Popen:
    """One embedded worker process (its settings come from the environment, as the app's).
    Quiet: no banner, and no root warning (main prints ROOT_NOTE once instead)."""
    queue = settings.queue_gpu if name == "gpu" else settings.queue_cpu
    env = dict(env if env is not None else os.environ)
    env["PYTHONWARNINGS"] = ",".join(filter(None, (env.get("PYTHONWARNINGS"),
                                                   "ignore:You're running the worker with superuser privileges")))
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "--quiet", "-A", "worker.celery_app", "worker", "-Q", queue, "-P", "solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", log_level, "-n", f"embedded-{name}@%h"],
        env=env, preexec_fn=_worker_preexec,
    )


class WorkerSupervisor:
    """Keeps the embedded workers running. A worker that died (the OOM killer's SIGKILL, a
    crash) used to stay a zombie while new runs waited forever and /health said ok; now it
    is reaped and started again after a delay that doubles while it keeps dying (1 s up
    to a minute). The new worker's watchdog re-queues the job the dead one held, and gives
    it up after max_job_attempts deaths. ``missing()`` names the workers not running now,
    for /health."""

    def __init__(self, settings: Settings, log_level: str, check_seconds: float = 1.0, restart_delay: float = 1.0,
                 start=start_worker):
        self.settings, self.log_level, self.check_seconds = settings, log_level, check_seconds
        self.restart_delay, self.start = restart_delay, start
        self.procs = {name: start(settings, name, log_level) for name in WORKERS}
        self.deaths: dict[str, list[float]] = {name: [] for name in WORKERS}
        self.restarts = dict.fromkeys(WORKERS, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def missing(self) -> list[str]:
        with self._lock:
            return [name for name, proc in self.procs.items() if proc is None or proc.poll() is not None]

    def _watch(self) -> None:
        due: dict[str, float] = {}
        while not self._stop.wait(self.check_seconds):
            for name in WORKERS:
                with self._lock:
                    proc = self.procs[name]
                if proc is not None and proc.poll() is None:
                    continue
                now = time.monotonic()
                if name not in due:  # just found dead (poll() reaped it)
                    recent = [t for t in self.deaths[name] if now - t < 300] + [now]
                    self.deaths[name] = recent
                    due[name] = now + min(self.restart_delay * 2 ** (len(recent) - 1), 60.0)
                    print(f"DomainStudio: the {name} worker stopped (exit code {proc.returncode if proc else '?'}); "
                          f"starting it again in {due[name] - now:.0f} s", file=sys.stderr, flush=True)
                elif now >= due[name] and not self._stop.is_set():
                    with self._lock:
                        self.procs[name] = self.start(self.settings, name, self.log_level)
                        self.restarts[name] += 1
                    del due[name]

    def stop(self) -> None:
        """Stops at once, mid-job if need be: the next start re-queues the interrupted jobs
        and a run resumes from its last saved training state (checkpoint_every steps)."""
        self._stop.set()
        self._thread.join(10)
        procs = [p for p in self.procs.values() if p is not None]
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def serve(app, host: str, port: int, log_level: str) -> None:
    import uvicorn

    try:
        make_server(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl+C again once it stopped (as uvicorn.run)
        pass


def make_server(config):
    """A uvicorn server that, told to stop (Ctrl+C), first ends the run pages' live event
    streams: uvicorn waits for every open response before it stops."""
    import uvicorn

    from app.routes import live

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            live.stop_streams()
            super().handle_exit(sig, frame)

    return Server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/run", description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="Every setting can be changed with DOMAINSTUDIO_* environment variables (README, Settings). "
               "The first start installs what the app needs (scripts/install --app).")
    parser.add_argument("--host", default=os.environ.get("DOMAINSTUDIO_HOST", "127.0.0.1"),
                        help="address to listen on (default: %(default)s; 0.0.0.0 for other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DOMAINSTUDIO_PORT", "8000")),
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--log-level", default="warning", help="web server and worker log level (default: %(default)s)")
    args = parser.parse_args(argv)

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from app.migrate import upgrade

    upgrade(settings.resolved_database_url)
    account = ensure_demo_account(settings)
    prepare_broker(settings)
    resumed = requeue_interrupted(settings)
    workers = WorkerSupervisor(settings, args.log_level.upper())

    from app.main import create_app

    url = f"http://{args.host}:{args.port}"
    print(f"\nDomainStudio is running at {url}", flush=True)
    if account:
        print(f"Sign in as {account[0]} with password {account[1]}", flush=True)
    print(f"or create an account at {url}/signup", flush=True)
    print(f"Base models: {', '.join(settings.base_model_list)}; data in {settings.data_dir.resolve()}", flush=True)
    if resumed:
        print(f"Resuming {resumed} job(s) interrupted when DomainStudio last stopped.", flush=True)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print(ROOT_NOTE, flush=True)
    print("Stop with Ctrl+C.\n", flush=True)
    try:
        serve(create_app(settings, workers=workers), args.host, args.port, args.log_level)
    finally:
        workers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
