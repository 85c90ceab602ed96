"""The first command's own set-up: scripts/installed.py decides in a blink whether
scripts/run must install first (missing packages, versions outside pyproject's ranges), and
scripts/run --help says what it does. The fresh-clone proof itself (a new venv, minutes of
pip) is scripts/fresh_start.py, run by hand: its figures are in the README."""
from __future__ import annotations

import subprocess
import sys
import time

from web_helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import installed  # noqa: E402


def test_version_ranges_are_read_as_pip_reads_them():
    assert installed._allowed("2.13.0+cpu", "==2.13.0")
    assert not installed._allowed("2.12.1", "==2.13.0")
    assert installed._allowed("0.36.0", ">=0.35,<0.50") and not installed._allowed("0.50.0", ">=0.35,<0.50")
    assert installed._allowed("5.0.0rc1", ">=5.0,<6") and not installed._allowed("6.1", ">=5.0,<6")
    assert installed._allowed("1.2", "~=1.0")  # a form it does not read: left to pip


def test_missing_or_wrong_versions_are_named():
    assert installed.not_installed(["no-such-package-domainstudio>=1"]) == "no-such-package-domainstudio>=1"
    assert installed.not_installed(["pytest>=999"]).startswith("pytest>=999 (installed: ")
    assert installed.not_installed(["pytest>=1", "celery[redis]>=5.4"]) is None
    # this checkout's own requirements are met here (the test suite runs)
    assert installed.not_installed(installed.requirements(with_test=True)) is None


def test_installed_check_is_instant_and_run_help_is_whole():
    started = time.monotonic()
    assert subprocess.run([sys.executable, str(ROOT / "scripts" / "installed.py"), "--test"]).returncode == 0
    assert time.monotonic() - started < 5  # no imports of torch and friends
    out = subprocess.run(["bash", str(ROOT / "scripts" / "run"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "with SQLite, a local-folder object store and a Celery broker in a SQLite file" in text
    assert "First start" not in out.stderr  # nothing to install here
