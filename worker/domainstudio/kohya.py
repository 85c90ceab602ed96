"""The LoRA in kohya's layout, for ComfyUI, AUTOMATIC1111/Forge, SD.Next and InvokeAI.

diffusers' own file (``lora.safetensors``) names layers ``unet.down_blocks...to_k.lora.down.weight``
and carries no alpha: those tools skip such keys silently, so the LoRA "does nothing". The
kohya file names the same weights ``lora_unet_down_blocks_..._to_k.lora_down.weight`` and
gives each layer an ``.alpha`` (here the rank: we train with lora_alpha = rank, scale 1),
with kohya's ``ss_*`` and ``modelspec.*`` metadata. diffusers reads it back through its
kohya path (``load_lora_weights``), which the tests use to check both files give the same
images.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import AdaptConfig
from .model_kinds import SD2, SDXL
from .layout import KOHYA_FILE, LORA_FILE
from .models import BaseModel

# Which file goes where (shown beside the downloads and in the README).
WHICH_FILE = {
    LORA_FILE: "diffusers (pipe.load_lora_weights)",
    KOHYA_FILE: "ComfyUI (LoraLoader), AUTOMATIC1111 / Forge (models/Lora), SD.Next, InvokeAI",
}


def kohya_state_dict(unet) -> dict[str, torch.Tensor]:
    """kohya keys and weights of the UNet's PEFT adapter, with one float ``.alpha`` per layer."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    peft = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    converted = convert_state_dict_to_kohya(peft)
    return {k: (v.float() if k.endswith(".alpha") else v.detach().cpu().contiguous()) for k, v in converted.items()}


def kohya_metadata(base: BaseModel, cfg: AdaptConfig, steps: int) -> dict[str, str]:
    """kohya's training metadata (strings only, as safetensors requires)."""
    architecture, version = {SDXL: ("stable-diffusion-xl-v1-base", "sdxl_base_v1-0"),
                             SD2: ("stable-diffusion-v2", "sd_v2")}.get(base.family, ("stable-diffusion-v1", "sd_v1"))
    trigger = f"{cfg.instance_token} {cfg.class_word}"
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.lora_rank),
        "ss_network_alpha": str(float(cfg.lora_rank)),
        "ss_base_model_version": version,
        "ss_sd_model_name": cfg.base_model,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_max_train_steps": str(steps),
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_training_comment": f"DomainStudio few-shot LoRA; trigger words: {trigger}",
        "ss_tag_frequency": json.dumps({"photos": {trigger: 1}}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": f"DomainStudio {trigger}",
        "modelspec.resolution": f"{cfg.resolution}x{cfg.resolution}",
        "modelspec.trigger_phrase": trigger,
        "domainstudio.base_model": cfg.base_model,
        "domainstudio.instance_prompt": cfg.prompt(cfg.instance_prompt or ""),
    }


def save_kohya_lora(base: BaseModel, unet, cfg: AdaptConfig, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / KOHYA_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(kohya_state_dict(unet), str(tmp), metadata=kohya_metadata(base, cfg, int(cfg.steps)))
    tmp.replace(path)
    return path
