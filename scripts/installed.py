"""Exits 0 when the Python packages pyproject.toml asks for are installed in versions it
allows, 1 otherwise (naming the first one that is not). Reads the installed packages'
metadata without importing them, so ``scripts/run`` knows in a blink whether it must
install first; a dependency added to pyproject.toml makes the next start install it.

    python3 scripts/installed.py [--test]     # --test: the test extras too
"""
from __future__ import annotations

import operator
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}


def _numbers(text: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); pre-release tails count as the release (a close enough check)."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _allowed(installed: str, spec: str) -> bool:
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = next((o for o in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(o)), None)
        if op is None:
            continue  # a form this check does not read (~=, ===): pip will judge it
        have, want = _numbers(installed), _numbers(clause[len(op):].strip())
        width = max(len(have), len(want))
        have, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if not _OPS[op](have, want):
            return False
    return True


def requirements(with_test: bool) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"])
    if with_test:
        reqs += project["optional-dependencies"]["test"]
    return reqs + [project["name"]]


def not_installed(reqs: list[str]) -> str | None:
    """The first requirement that is missing or in a version outside its range."""
    for req in reqs:
        match = _REQUIREMENT.match(req)
        name, spec = match.group(1), match.group(2).strip()
        try:
            installed = version(name)
        except PackageNotFoundError:
            return req
        if spec and not _allowed(installed, spec):
            return f"{req} (installed: {installed})"
    return None


if __name__ == "__main__":
    gap = not_installed(requirements("--test" in sys.argv[1:]))
    if gap:
        print(f"not installed: {gap}", file=sys.stderr)
    sys.exit(1 if gap else 0)
