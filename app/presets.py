"""Run presets and the expert settings of the core's ``adapt``.

The web side never imports the core (it would pull in torch), so the settings a user may
change are listed here with their types and bounds; the worker turns the stored dict into
``AdaptConfig.from_dict``, which remains the judge of what is valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import N_, Message


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
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None


# Every AdaptConfig setting a user may change (tests check the names against the core);
# base_model, class_word and device come from the form's model choice, the photo set and
# the worker settings.
EXPERT_FIELDS: dict[str, Field] = {
    "mode": Field(str, choices=("auto", "full", "lora")),
    "steps": Field(int, 1, 100_000),
    "batch_size": Field(int, 1, 64),
    "learning_rate": Field(float, 1e-8, 0.5),
    "resolution": Field(int, 8, 2048),
    "l_img": Field(float, 0.0, 1e6),
    "l_hf": Field(float, 0.0, 1e6),
    "l_hfmse": Field(float, 0.0, 1e6),
    "prior_weight": Field(float, 0.0, 1e6),
    "num_similarity_samples": Field(int, 3, 64),
    "ds_max_timestep": Field(int, 1, 1000),
    "pairwise_max_timestep": Field(int, 1, 1000),
    "max_grad_norm": Field(float, 0.0, 1e6),
    "ema_decay": Field(float, 0.0, 0.999999),
    "source": Field(str, choices=("unpaired", "paired")),
    "instance_token": Field(str),
    "instance_prompt": Field(str),
    "class_prompt": Field(str),
    "caption_dropout": Field(float, 0.0, 1.0),
    "num_class_images": Field(int, 2, 10_000),  # the core needs 2 usable images (as photos)
    "lora_rank": Field(int, 1, 256),
    "gradient_checkpointing": Field(bool),
    "mixed_precision": Field(str, choices=("auto", "no", "fp16", "bf16")),
    "sampling_precision": Field(str, choices=("auto", "no", "fp16", "bf16")),
    "optimizer": Field(str, choices=("adamw", "adamw8bit")),
    "gradient_accumulation_steps": Field(int, 1, 1024),
    "lr_warmup_steps": Field(int, 0, 1_000_000),
    "attention": Field(str, choices=("sdpa", "classic")),
    "torch_compile": Field(bool),
    "vae_decode_chunk": Field(int, 1, 64),
    "checkpoint_every": Field(int, 1, 10_000_000),
    "preview_every": Field(int, 0, 10_000_000),
    "num_previews": Field(int, 0, 16),
    "seed": Field(int, 0, 2**31 - 1),
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
    if value != value or (f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi):
        raise SettingsError("setting %(name)s must be between %(lo)s and %(hi)s", name=repr(name), lo=f"{f.lo:g}",
                            hi=f"{f.hi:g}")
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
