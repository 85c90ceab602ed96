"""Core error messages are translatable: a literal English msgid plus JSON-able params.

The web app's message extractor (Babel, keyword = the error class, first argument) reads
the msgid from the source, so it must be one literal string, never an f-string; and
``str(exc)`` stays the English text the CLI and the logs show."""
import ast
import json
from pathlib import Path

import pytest

from worker import copyguard
from worker.domainstudio import AdaptConfig, InputError, ModelError, load_base_model
from worker.domainstudio.sampling import sample_with

WORKER = Path(__file__).resolve().parents[2] / "worker"
SOURCES = sorted((WORKER / "domainstudio").rglob("*.py")) + [WORKER / "copyguard.py"]
ERROR_CLASSES = {"DomainStudioError", "InputError", "ModelError", "Canceled", "CopyGuardError", "Notice"}


def _error_calls(tree: ast.AST):
    """Every call of an error class (in a raise or not), as ``raise X(...)`` or ``errors.X(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in ERROR_CLASSES:
                yield node


def _is_literal(node: ast.expr) -> bool:
    # Implicit concatenation of plain literals parses to one ast.Constant; with an f-string
    # part in it, it parses to ast.JoinedStr.
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_every_error_has_a_literal_msgid():
    bad, seen = [], 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _error_calls(tree):
            if path.name == "errors.py" and not call.args:
                continue
            seen += 1
            where = f"{path.relative_to(WORKER.parent)}:{call.lineno}"
            if not call.args or not _is_literal(call.args[0]):
                kind = type(call.args[0]).__name__ if call.args else "no argument"
                bad.append(f"{where}: first argument is {kind}, not a literal string")
            elif len(call.args) > 1:
                bad.append(f"{where}: params must be keyword arguments")
            elif any(isinstance(n, ast.JoinedStr) for n in ast.walk(call)):
                bad.append(f"{where}: f-string in the call; pass the value as a param")
            else:
                names = {kw.arg for kw in call.keywords}
                msgid = call.args[0].value
                if names:
                    try:
                        msgid % {n: "x" for n in names}
                    except (KeyError, ValueError, TypeError) as exc:
                        bad.append(f"{where}: msgid does not format with its params ({exc!r})")
    assert seen > 40, "the scan found too few raise sites; did the sources move?"
    assert not bad, "\n".join(bad)


def _check_exposed(exc, msgid_part: str):
    assert msgid_part in exc.msgid
    assert "{" not in exc.msgid
    assert exc.msgid % exc.params == str(exc)
    json.dumps(exc.params)
    assert all(type(v) in (str, int, float) for v in exc.params.values())


def test_config_range_error_keeps_its_english_text():
    with pytest.raises(InputError) as info:
        AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", "steps": 0})
    exc = info.value
    assert str(exc) == "steps must be between 1 and 1000000, got 0"
    assert exc.msgid == "%(name)s must be between %(low)s and %(high)s, got %(value)s"
    assert exc.params == {"name": "steps", "low": 1, "high": 1_000_000, "value": 0}
    _check_exposed(exc, "must be between")


def test_config_choice_and_type_errors_keep_their_english_text():
    with pytest.raises(InputError) as info:
        AdaptConfig(base_model="builtin:tiny-ddpm", mode="half").validate()
    assert str(info.value) == "mode must be one of auto, full, lora, got 'half'"
    assert info.value.params["value"] == "'half'"
    _check_exposed(info.value, "must be one of")

    with pytest.raises(InputError) as info:
        AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", "steps": "many"})
    assert str(info.value) == "steps must be a int, got 'many'"
    _check_exposed(info.value, "must be a")

    with pytest.raises(InputError) as info:
        AdaptConfig.from_dict({"base_model": "builtin:tiny-ddpm", "stepz": 3})
    assert str(info.value).startswith("unknown setting(s): stepz; known: ")
    _check_exposed(info.value, "unknown setting(s)")


def test_sampling_argument_errors_keep_their_english_text():
    base = load_base_model("builtin:tiny-ddpm")
    with pytest.raises(InputError) as info:
        sample_with(base, 2, steps=0)
    assert str(info.value) == "steps must be between 1 and 1000, got 0"
    assert info.value.msgid == "steps must be between 1 and 1000, got %(value)s"
    _check_exposed(info.value, "steps must be")

    with pytest.raises(InputError) as info:
        sample_with(base, 2, scheduler="euler")
    assert str(info.value) == "unknown scheduler 'euler'; choose one of dpmsolver++, sde-dpmsolver++, ddim, ddpm"
    _check_exposed(info.value, "unknown scheduler")


def test_model_error_with_a_percent_in_a_param(tmp_path):
    folder = tmp_path / "100% model"
    folder.mkdir()
    with pytest.raises(ModelError) as info:
        load_base_model(str(folder))
    assert str(info.value).startswith(f"{folder} is not a diffusers model folder: expected model_index.json")
    assert info.value.params == {"folder": str(folder)}
    _check_exposed(info.value, "is not a diffusers model folder")


def test_copy_guard_error_exposes_msgid_and_params(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(copyguard.CopyGuardError) as info:
        copyguard.PretrainedFeatures(missing)
    assert str(info.value) == (f"the copy guard model folder {missing} does not exist "
                               "(DOMAINSTUDIO_COPY_GUARD_MODEL)")
    _check_exposed(info.value, "copy guard model folder")
