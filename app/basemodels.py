"""The administrator's base models (DOMAINSTUDIO_BASE_MODELS) as users see them: each with
its kind and resolution, read from its files without torch (the core's model_kinds), and
the ones DomainStudio does not adapt (Flux, SD3, no UNet) refused with the reason."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from app.errors import N_, BadInput, Message, message_of
from worker.domainstudio.errors import ModelError
from worker.domainstudio.model_kinds import DDPM, SD1, SD2, SDXL, ModelKind, model_kind

log = logging.getLogger("domainstudio.basemodels")
# the families' names as msgids (the pages translate them; the API gives them in English)
FAMILY_LABELS = {DDPM: N_("unconditional DDPM"), SD1: N_("Stable Diffusion 1.x"), SD2: N_("Stable Diffusion 2.x"),
                 SDXL: N_("SDXL")}


@dataclass
class BaseModelChoice:
    spec: str
    family: str = ""  # ddpm, sd1, sd2, sdxl; "" when only the worker can tell (a .ckpt, a hub id)
    family_label: str = ""
    source: str = ""  # builtin, folder, single file, hub
    resolution: int = 0
    refused: Message | None = None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "family": self.family, "kind": self.family_label, "source": self.source,
                "resolution": self.resolution or None,
                "refused": self.refused.render() if self.refused is not None else None}


def describe(spec: str) -> BaseModelChoice:
    try:
        kind: ModelKind = model_kind(spec)
    except ModelError as exc:
        return BaseModelChoice(spec, refused=message_of(exc))
    return BaseModelChoice(spec, kind.family, FAMILY_LABELS.get(kind.family, ""), kind.source, kind.resolution)


def base_model_choices(specs: list[str]) -> list[BaseModelChoice]:
    """Every listed base model, described (a few small JSON files or a safetensors header each)."""
    return [describe(spec) for spec in specs]


def log_refused(specs: list[str]) -> None:
    """At start: tell the administrator which listed models are not offered, and why."""
    for c in base_model_choices(specs):
        if c.refused is not None:
            log.error("basemodels.refused", extra={"spec": c.spec, "reason": c.refused.render()})


def check_base_model(spec: str) -> None:
    """A run cannot start on a model DomainStudio does not adapt: say why, and what is supported."""
    choice = describe(spec)
    if choice.refused is not None:
        raise BadInput(choice.refused.msgid, params=choice.refused.params)
