"""Readable names and explanations of a run's settings, for the run report.

The explanations are the core's help texts (``AdaptConfig`` field metadata: config.py
imports no torch); the labels are the web's. Both are English msgids (the help texts are
extracted from config.py's ``_f``, see scripts/translations.py); the page translates them
when it renders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.i18n import N_
from worker.domainstudio.config import AdaptConfig


@dataclass(frozen=True)
class SettingText:
    label: str
    help: str


# the web's short name of each setting; its explanation is the core's help text
LABELS: dict[str, str] = {
    "base_model": N_("Base model"),
    "mode": N_("What is trained"),
    "steps": N_("Training steps"),
    "batch_size": N_("Photos per step"),
    "learning_rate": N_("Learning rate"),
    "resolution": N_("Resolution"),
    "l_img": N_("Image similarity weight"),
    "l_hf": N_("High-frequency similarity weight"),
    "l_hfmse": N_("High-frequency MSE weight"),
    "prior_weight": N_("Class prior weight"),
    "num_similarity_samples": N_("Similarity samples"),
    "ds_max_timestep": N_("Largest timestep of the high-frequency MSE term"),
    "pairwise_max_timestep": N_("Largest timestep of the pairwise terms"),
    "max_grad_norm": N_("Gradient clipping"),
    "ema_decay": N_("EMA decay"),
    "source": N_("Source side"),
    "class_word": N_("Class word"),
    "instance_token": N_("Instance token"),
    "instance_prompt": N_("Instance prompt"),
    "class_prompt": N_("Class prompt"),
    "caption_dropout": N_("Caption dropout"),
    "num_class_images": N_("Class images"),
    "class_images_dir": N_("Class image folder"),
    "lora_rank": N_("LoRA rank"),
    "gradient_checkpointing": N_("Gradient checkpointing"),
    "mixed_precision": N_("Mixed precision"),
    "sampling_precision": N_("Sampling precision"),
    "optimizer": N_("Optimizer"),
    "gradient_accumulation_steps": N_("Gradient accumulation"),
    "lr_warmup_steps": N_("Learning-rate warmup"),
    "attention": N_("Attention kernel"),
    "torch_compile": N_("Compile the UNet"),
    "vae_decode_chunk": N_("VAE decode chunk"),
    "checkpoint_every": N_("Save training state every"),
    "preview_every": N_("Previews every"),
    "num_previews": N_("Previews"),
    "seed": N_("Seed"),
    "device": N_("Device"),
}

SETTING_TEXTS: dict[str, SettingText] = {
    f["name"]: SettingText(LABELS.get(f["name"], f["name"]), f["help"]) for f in AdaptConfig.fields_help()
}


# stored with a run's resolved settings but not settings anyone chooses: the base model's
# weights fingerprint is the core's check that a checkpoint is applied to the same weights
# it was trained on (an identity, not a setting), so the report leaves it out
INTERNAL = frozenset({"base_fingerprint"})


def describe_settings(values: dict[str, Any], chosen: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The settings in the core's order, each with its readable name and explanation.
    ``chosen`` (the run's own settings: preset and expert overrides) tells which values
    were picked for this run; the rest are the base model's defaults. A name the web
    side does not know (a newer core) is shown as it is; the INTERNAL ones are left out."""
    chosen = values if chosen is None else chosen
    known = [n for n in SETTING_TEXTS if n in values] + sorted(
        n for n in values if n not in SETTING_TEXTS and n not in INTERNAL)
    out = []
    for name in known:
        text = SETTING_TEXTS.get(name)
        out.append({"name": name, "label": text.label if text else name, "help": text.help if text else "",
                    "value": values[name], "chosen": name in chosen})
    return out
