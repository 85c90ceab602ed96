"""The DomainStudio core: few-shot adaptation of diffusion models, sampling, checkpoints.

Importable without the web app, Celery or a database (see docs/core-api.md).
"""
from .adapt import AdaptResult, ProgressEvent, adapt
from .checkpoints import describe
from .config import TEXT_TO_IMAGE, UNCONDITIONAL, AdaptConfig
from .errors import Canceled, DomainStudioError, InputError, ModelError
from .models import BaseModel, list_builtin_models, load_base_model
from .sampling import SCHEDULERS, GeneratedImage, sample

__all__ = [
    "AdaptConfig", "AdaptResult", "BaseModel", "Canceled", "DomainStudioError", "GeneratedImage",
    "InputError", "ModelError", "ProgressEvent", "SCHEDULERS", "TEXT_TO_IMAGE", "UNCONDITIONAL",
    "adapt", "describe", "list_builtin_models", "load_base_model", "sample",
]
