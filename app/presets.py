"""Run presets and the expert settings of the core's ``adapt``.

The settings, their types, choices and bounds are the core's ``AdaptConfig`` (config.py
imports no torch); this module only says which of them the expert form offers and turns a
form's strings into values with messages for the page. The worker turns the stored dict
into ``AdaptConfig.from_dict``, which remains the judge of what is valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import N_, Message
from worker.domainstudio.config import AdaptConfig, Bound, format_bound


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    settings: dict[str, Any]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # label and description are English msgids, translated where they are shown
        Preset("quick", N_("Quick"), N_("300 steps; LoRA for text-to-image models, full for unconditional ones; "
               "the base model's resolution"), {"mode": "auto", "steps": 300}),
        Preset("standard", N_("Standard"), N_("800 steps; LoRA for text-to-image models, full for unconditional ones"),
               {"mode": "auto", "steps": 800}),
        Preset("high", N_("High quality"), N_("2,000 steps of full fine-tuning"), {"mode": "full", "steps": 2000}),
    )
}


@dataclass(frozen=True)
class Field:
    type: type
    bound: Bound | None = None
    choices: tuple[str, ...] | None = None

    @property
    def lo(self) -> float | None:
        return self.bound.low if self.bound else None

    @property
    def hi(self) -> float | None:
        return self.bound.high if self.bound else None


# base_model, class_word and device come from the form's model choice, the photo set and the
# worker settings; the class images' folder is the worker's
NOT_EXPERT = frozenset({"base_model", "class_word", "device", "class_images_dir"})
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# Every AdaptConfig setting a user may change, in the core's order
EXPERT_FIELDS: dict[str, Field] = {
    f["name"]: Field(_TYPES[f["type"]], f["bound"], f["choices"])
    for f in AdaptConfig.fields_help() if f["name"] not in NOT_EXPERT
}


class SettingsError(ValueError):
    """Why an expert setting was refused; ``reason`` keeps msgid and params apart for
    translation (the route raises it as a BadInput)."""

    def __init__(self, msgid: str, **params):
        self.reason = Message(msgid, params)
        super().__init__(str(self.reason))


# a setting's expected type, in the words of the error message
_TYPE_ERRORS = {int: N_("setting %(name)s must be a whole number"), float: N_("setting %(name)s must be a number"),
                str: N_("setting %(name)s must be text")}


def _coerce(name: str, f: Field, value: Any) -> Any:
    if f.type is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError("setting %(name)s must be true or false", name=repr(name))
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise SettingsError(_TYPE_ERRORS[f.type], name=repr(name))
    if f.type is int and isinstance(value, float) and not value.is_integer():
        raise SettingsError(_TYPE_ERRORS[int], name=repr(name))
    try:
        value = f.type(value)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(_TYPE_ERRORS[f.type], name=repr(name)) from None
    if f.type is str:
        value = value.strip()
        if len(value) > 300:
            raise SettingsError("setting %(name)s is too long", name=repr(name))
        if f.choices and value not in f.choices:
            raise SettingsError("setting %(name)s must be one of: %(choices)s", name=repr(name),
                                choices=", ".join(f.choices))
        return value
    if value != value or (f.bound is not None and not f.bound.holds(value)):
        raise SettingsError("setting %(name)s must be between %(lo)s and %(hi)s", name=repr(name),
                            lo=format_bound(f.lo), hi=format_bound(f.hi))
    return value


def coerce_expert(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate expert overrides: known names, right types, within bounds. Empty values are
    ignored (an untouched form field)."""
    if not isinstance(raw, dict):
        raise SettingsError("settings must be an object of name: value")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None or value == "":
            continue
        if name not in EXPERT_FIELDS:
            raise SettingsError("unknown setting %(name)s", name=repr(name))
        out[name] = _coerce(name, EXPERT_FIELDS[name], value)
    return out


def build_settings(preset: str, base_model: str, class_word: str, expert: dict[str, Any], device: str) -> dict[str, Any]:
    """The AdaptConfig dict of a run: the preset, then the expert overrides."""
    if preset not in PRESETS:
        raise SettingsError("unknown preset %(preset)s; choose one of: %(choices)s", preset=repr(preset),
                            choices=", ".join(PRESETS))
    settings = dict(PRESETS[preset].settings)
    settings.update(coerce_expert(expert))
    settings.update(base_model=base_model, class_word=class_word, device=device)
    return settings
