"""What an adaptation leaves on disk, and how sampling and `info` read it back (the folder's
file names: layout.py)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .model_kinds import LABELS
from .models import BaseModel, load_base_model, load_local_folder
from .layout import CHECKPOINT_FILE, CONFIG_FILE, LORA_FILE

FORMAT = "domainstudio-checkpoint/1"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_checkpoint(folder: Path) -> dict | None:
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError("%(path)s is not valid JSON (%(detail)s)", path=str(path), detail=str(exc)) from exc
    if info.get("format") != FORMAT:
        raise ModelError("%(path)s is not a DomainStudio checkpoint (format %(format)s)",
                         path=str(path), format=repr(info.get("format")))
    return info


def publish(staging: Path, out: Path, info: dict) -> None:
    """Move the saved model from the staging folder into place, then write checkpoint.json."""
    for entry in staging.iterdir():
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        entry.rename(target)
    staging.rmdir()
    info = dict(info, format=FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                files=sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    write_json_atomic(out / CHECKPOINT_FILE, info)


def load_for_sampling(model: str | Path, device: torch.device | str = "cpu") -> BaseModel:
    """A run's output folder (full or LoRA), a diffusers folder, or a base-model spec."""
    path = Path(str(model)).expanduser()
    info = read_checkpoint(path) if path.is_dir() else None
    if info is None:
        return load_base_model(str(model), device)
    if info["mode"] == "lora":
        base = load_base_model(info["base_model"], device).forget_guide()  # adapted by the LoRA below
        _check_same_base(base, info, path)
        pipe = base.pipeline()
        pipe.load_lora_weights(str(path), weight_name=LORA_FILE)
        base.spec = str(path)
        return base
    model_dir = path / "model"
    if not model_dir.is_dir():
        raise ModelError("%(path)s says it holds a full model, but %(folder)s is missing",
                         path=str(path), folder=str(model_dir))
    adapted = load_local_folder(model_dir)
    adapted.spec, adapted.fingerprint = str(path), info.get("base_fingerprint", "")
    if info.get("default_sampler"):  # the base model's own sampler suits its adapted weights too
        adapted.extra["default_sampler"] = info["default_sampler"]
    return adapted.to(device)


def _check_same_base(base: BaseModel, info: dict, path: Path) -> None:
    if info.get("base_fingerprint") and base.fingerprint != info["base_fingerprint"]:
        raise ModelError(
            "%(path)s was adapted from a different base model than the one now at %(base)s "
            "(fingerprint %(expected)s vs %(actual)s); give the original base model",
            path=str(path), base=str(info["base_model"]), expected=str(info["base_fingerprint"]),
            actual=str(base.fingerprint),
        )


def describe(model: str | Path) -> dict[str, Any]:
    """What a checkpoint or a base model is: kind, base, settings, sizes (for `domainstudio info`)."""
    path = Path(str(model)).expanduser()
    info = read_checkpoint(path) if path.is_dir() else None
    if info is not None:
        config = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() else {}
        return {"type": "checkpoint", "path": str(path), **info, "size_bytes": folder_size(path, skip=("state",)),
                "settings": config}
    base = load_base_model(str(model))
    params = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("unet", base.unet), ("vae", base.vae), ("text_encoder", base.text_encoder),
                              ("text_encoder_2", base.text_encoder_2), ("guide", base.guide))
              if m is not None}
    return {"type": "base model", "spec": base.spec, "kind": base.kind, "family": LABELS.get(base.family, base.family),
            "resolution": base.resolution,
            "channels": base.channels, "description": base.description, "parameters": params,
            "fingerprint": base.fingerprint,
            **({"autoguidance": base.guidance_weight} if base.guide is not None else {})}


def folder_size(folder: Path, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and not any(part in skip for part in p.relative_to(folder).parts):
            total += p.stat().st_size
    return total
