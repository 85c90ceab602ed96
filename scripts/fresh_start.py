"""Proves the README's first command on a fresh clone in a fresh Python environment, timed.

    python3 scripts/fresh_start.py [--keep] [--workdir DIR]

Clones this repository's committed HEAD into a new folder, makes a new virtual environment
there (``python3 -m venv``, no system packages) and runs ``scripts/run`` with only that
environment on the PATH, as a newcomer would after ``source .venv/bin/activate``. It waits
until ``/health`` answers 200 (database, queue and object store all ok) and the sign-in page
shows, stops the app with Ctrl+C, starts it again and times the second start, which must not
install anything. Prints both times; exits 1 (with the app's output) when a start fails.
Needs the package registry (or pip's configured find-links) for the first install. Uses
only the standard library, so it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLING = "First start: installing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def fresh_env(venv: Path) -> dict[str, str]:
    """The newcomer's shell after activating the new environment: nothing of ours set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOMAINSTUDIO_", "PYTHON", "VIRTUAL_ENV", "OMP_"))}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONUNBUFFERED="1")
    return env


def start(clone: Path, env: dict, log: Path, timeout: float) -> tuple[subprocess.Popen, float]:
    """scripts/run in the clone; seconds until /health is 200 and /login shows."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["scripts/run", "--port", str(port)], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"scripts/run exited with {proc.returncode}")
        if answers(url + "/health") == 200 and answers(url + "/login") == 200:
            return proc, time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError(f"scripts/run did not answer at {url}/health within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Ctrl+C, as in a terminal; the app stops its workers itself."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the clone and its environment")
    p.add_argument("--timeout", type=float, default=1800, help="seconds the first start may take")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="domainstudio-fresh-"))
    clone, venv = work / "domainstudio", work / "domainstudio" / ".venv"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = fresh_env(venv)
    logs = [work / "first-start.log", work / "second-start.log"]
    seconds = []
    try:
        for log, timeout in zip(logs, (args.timeout, 120)):
            proc, took = start(clone, env, log, timeout)
            seconds.append(took)
            stop(proc)
            print(f"{log.stem}: app up after {took:.1f} s", flush=True)
        if INSTALLING in logs[1].read_text(errors="replace"):
            raise RuntimeError("the second start installed again")
        if INSTALLING not in logs[0].read_text(errors="replace"):
            raise RuntimeError("the first start did not install (was the environment fresh?)")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        for log in logs:
            if log.exists():
                print(f"--- {log.name} (last 3,000 characters)\n{log.read_text(errors='replace')[-3000:]}")
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"commit {head}: fresh clone + fresh venv, scripts/run alone: first start {seconds[0]:.0f} s "
          f"(installing included), second start {seconds[1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
