"""The DomainStudio core: few-shot adaptation of diffusion models, sampling, checkpoints.

Importable without the web app, Celery or a database (see docs/core-api.md). The names
below load on first use (PEP 562, as diffusers' ``_LazyModule``): importing a torch-free
module of the core, such as ``model_kinds`` or ``config``, does not import torch, so the
web app can read base-model files without it.
"""
from __future__ import annotations

import importlib
import sys
import types

_NAMES = {
    "adapt": ("AdaptResult", "ProgressEvent", "adapt"),
    "checkpoints": ("describe",),
    "config": ("TEXT_TO_IMAGE", "UNCONDITIONAL", "AdaptConfig"),
    "errors": ("Canceled", "DomainStudioError", "InputError", "ModelError"),
    "models": ("BaseModel", "list_builtin_models", "load_base_model"),
    "sampling": ("SCHEDULERS", "GeneratedImage", "sample"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``adapt`` the function: importing the submodule of the same name makes Python set
    the package's attribute to that module, which ``from worker.domainstudio import adapt``
    would then return instead (the eager imports this replaces rebound it afterwards)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _MODULE_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
