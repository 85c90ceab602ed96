"""Fault injectors for the reliability tests: a TCP proxy that can take a server off the
network and put it back (S3 down without losing its data), a private Redis that can be
restarted empty, and Postgres stopped and started by its cluster tool."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from web_helpers import CeleryWorker, free_port, wait_for


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target. stop() closes the listener and cuts every open
    connection (clients then get 'connection refused'); start() listens again."""

    def __init__(self, target_port: int):
        self.target, self.port = target_port, free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()


class RedisServer:
    """A Redis of our own on a free loopback port, without persistence: restart() is a
    crash and a fresh start, so every queued message is lost."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        def up():
            try:
                return redis.Redis(port=self.port, socket_timeout=1).ping()
            except redis.RedisError:
                return False

        wait_for(up, 20, "the private Redis")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def pg_cluster(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True).returncode == 0


def events(log_text: str, name: str) -> list[dict]:
    """The worker's JSON log events of one name, in order."""
    out = []
    for line in log_text.splitlines():
        line = line[line.find("{"):] if "{" in line else ""
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def until(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, what, interval=0.2)


def now() -> float:
    return time.monotonic()


class LiveServer:
    """The app served by uvicorn on a free loopback port, in a thread of this process
    (for raw sockets, real concurrency and streamed bodies, which TestClient buffers)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_keep_alive=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class PreforkWorker(CeleryWorker):
    """A Celery worker as production runs it (`-P prefork -c 1`): the job runs in a child
    process, which the OOM killer would pick."""

    pool = ("-P", "prefork", "-c", "1", "--prefetch-multiplier", "1")

    def __init__(self, settings, log_path: Path):
        super().__init__(settings, log_path, name=f"prefork-{free_port()}")

    def children(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children()]
