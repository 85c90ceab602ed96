"""What kind of base model a spec names, read from its files without torch.

The web app lists the administrator's base models with their kind and resolution and
refuses the ones DomainStudio does not adapt; the core uses the same rules before it
loads anything. Only JSON configs and safetensors headers are read here (a header is a
few kilobytes of JSON naming every tensor and its shape), so the web process never
imports torch. A ``.ckpt`` is a pickle: its kind is known only once the worker loads it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

BUILTIN_PREFIX = "builtin:"
DDPM, SD1, SD2, SDXL = "ddpm", "sd1", "sd2", "sdxl"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SUPPORTED_KINDS = ("unconditional DDPM (UNet2DModel), Stable Diffusion 1.x and 2.x, and SDXL: "
                   "diffusers folders, or single .safetensors/.ckpt checkpoint files of SD 1.x, 2.x and SDXL")
LABELS = {DDPM: "unconditional DDPM", SD1: "Stable Diffusion 1.x", SD2: "Stable Diffusion 2.x", SDXL: "SDXL"}
# Native resolution of a single file's family (our configs: single_file_configs/).
SINGLE_FILE_RESOLUTION = {SD1: 512, SD2: 768, SDXL: 1024}
# Pipelines DomainStudio does not adapt: transformer (DiT/MMDiT) models, refiners, cascades.
UNSUPPORTED_PIPELINES = {
    "FluxPipeline": "Flux", "FluxKontextPipeline": "Flux", "Flux2Pipeline": "Flux",
    "StableDiffusion3Pipeline": "Stable Diffusion 3", "PixArtAlphaPipeline": "PixArt",
    "PixArtSigmaPipeline": "PixArt", "SanaPipeline": "Sana", "AuraFlowPipeline": "AuraFlow",
    "HunyuanDiTPipeline": "Hunyuan-DiT", "LuminaText2ImgPipeline": "Lumina", "QwenImagePipeline": "Qwen-Image",
    "StableDiffusionXLImg2ImgPipeline": "SDXL refiner", "StableCascadeCombinedPipeline": "Stable Cascade",
    "KandinskyV22Pipeline": "Kandinsky", "CogView4Pipeline": "CogView",
}
# Keys that tell a single file's family (the original Stability/CompVis layout).
_UNET = "model.diffusion_model.input_blocks.0.0.weight"
_SDXL_TEXT = ("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
              "conditioner.embedders.1.model.positional_embedding")
_SD2_TEXT = "cond_stage_model.model.token_embedding.weight"
_SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
_FOREIGN = {"double_blocks.": "Flux", "joint_blocks.": "Stable Diffusion 3", "single_transformer_blocks.": "Flux",
            "transformer_blocks.0.attn.add_q_proj": "Flux or Stable Diffusion 3"}


@dataclass
class ModelKind:
    """A base model's family (ddpm, sd1, sd2, sdxl, or "" when only loading will tell) and
    native resolution (0 when unknown), with a label for people."""

    family: str
    resolution: int
    source: str  # "builtin", "folder", "single file", "hub"

    @property
    def label(self) -> str:
        name = LABELS.get(self.family, "Stable Diffusion (kind read when the run starts)")
        size = f", {self.resolution} px" if self.resolution else ""
        return f"{name}, {self.source}{size}"


def model_kind(spec: str) -> ModelKind:
    """Kind of ``builtin:NAME``, a diffusers folder, a single checkpoint file or a hub id.

    Raises :class:`ModelError` for models DomainStudio does not adapt, naming the kinds it does."""
    spec = str(spec).strip()
    if spec.startswith(BUILTIN_PREFIX):
        family, size = _BUILTIN_KINDS.get(spec[len(BUILTIN_PREFIX):], ("", 0))
        return ModelKind(family, size, "builtin")
    path = Path(spec).expanduser()
    if path.is_dir():
        return folder_kind(path)
    if path.is_file():
        family = single_file_family(path)
        return ModelKind(family, SINGLE_FILE_RESOLUTION.get(family, 0), "single file")
    return ModelKind("", 0, "hub")


_BUILTIN_KINDS = {"tiny-ddpm": (DDPM, 32), "fmnist-ddpm-32": (DDPM, 32), "tiny-sd": (SD1, 32), "tiny-sdxl": (SDXL, 32),
                  "fmnist-sd-32": (SD1, 32)}


def folder_kind(folder: Path) -> ModelKind:
    index = folder / "model_index.json"
    if index.is_file():
        info = read_json(index)
        refuse_unsupported(info, str(info.get("_class_name", "")), folder)
        if "text_encoder" not in info or "vae" not in info:
            return ModelKind(DDPM, _config_size(folder / "unet" / "config.json"), "folder")
        family = SDXL if "text_encoder_2" in info else (SD2 if _is_sd2(folder) else SD1)
        vae = read_json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else {}
        scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
        return ModelKind(family, _config_size(folder / "unet" / "config.json") * scale, "folder")
    config = folder / "config.json"
    if config.is_file() and read_json(config).get("_class_name") == "UNet2DModel":
        return ModelKind(DDPM, _config_size(config), "folder")
    raise ModelError(
        "%(folder)s is not a diffusers model folder: expected model_index.json (a pipeline saved with "
        "save_pretrained) or config.json of a UNet2DModel",
        folder=str(folder),
    )


def refuse_unsupported(info: dict, pipeline_class: str, folder: Path) -> None:
    """Flux, SD3 and other models without a UNet: say so, and say what is supported."""
    name = UNSUPPORTED_PIPELINES.get(pipeline_class)
    if name is None and "unet" in info:
        return
    raise ModelError(
        "%(path)s is a %(model)s model, which DomainStudio does not adapt (it has no UNet). "
        "Supported kinds: %(supported)s",
        path=str(folder), model=name or pipeline_class or "diffusers", supported=SUPPORTED_KINDS,
    )


def single_file_family(path: Path, keys: dict[str, list[int]] | None = None) -> str:
    """sd1, sd2 or sdxl for a single checkpoint file; "" for a .ckpt not yet loaded (its keys
    are in a pickle); :class:`ModelError` for anything else, naming what was expected."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelError(
            "%(path)s is a file but not a checkpoint: give a .safetensors or .ckpt file of "
            "SD 1.x, 2.x or SDXL, or the folder of a diffusers model (with model_index.json)",
            path=str(path),
        )
    if keys is None:
        if path.suffix.lower() == ".ckpt":
            return ""
        keys = safetensors_shapes(path)
    return family_from_keys(path, keys)


def family_from_keys(path: Path, keys: dict[str, list[int]]) -> str:
    """The family from the original layout's key names (as diffusers' own single-file code)."""
    for marker, name in _FOREIGN.items():
        if any(marker in k for k in keys):
            raise ModelError(
                "%(path)s is a %(model)s checkpoint, which DomainStudio does not adapt (it has no UNet). "
                "Supported kinds: %(supported)s",
                path=str(path), model=name, supported=SUPPORTED_KINDS,
            )
    unet = keys.get(_UNET)
    if unet is None or not any(k in keys for k in (_SD1_TEXT, _SD2_TEXT) + _SDXL_TEXT):
        raise ModelError(
            "%(path)s is not a Stable Diffusion checkpoint we know: expected the original single-file "
            "layout with a UNet (model.diffusion_model.*) and its text encoder (SD 1.x: "
            "cond_stage_model.transformer.*, SD 2.x: cond_stage_model.model.*, SDXL: conditioner.embedders.*). "
            "Supported kinds: %(supported)s",
            path=str(path), supported=SUPPORTED_KINDS,
        )
    if len(unet) > 1 and unet[1] != 4:
        raise ModelError(
            "%(path)s is an inpainting or other special checkpoint (its UNet takes %(channels)s input "
            "channels, not 4); DomainStudio adapts text-to-image base models. Supported kinds: %(supported)s",
            path=str(path), channels=unet[1], supported=SUPPORTED_KINDS,
        )
    if all(k in keys for k in _SDXL_TEXT):
        return SDXL
    if _SD2_TEXT in keys:
        return SD2
    if _SD1_TEXT in keys:
        return SD1
    raise ModelError(
        "%(path)s looks like an SDXL refiner (one text encoder); DomainStudio adapts base models. "
        "Supported kinds: %(supported)s",
        path=str(path), supported=SUPPORTED_KINDS,
    )


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header (8-byte length, then JSON)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= 100_000_000:
                raise ValueError(f"header length {length}")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError("%(path)s is not a readable .safetensors file (%(detail)s)",
                         path=str(path), detail=str(exc)[:200]) from exc
    if not isinstance(header, dict):
        raise ModelError("%(path)s is not a readable .safetensors file (%(detail)s)",
                         path=str(path), detail="header is not a JSON object")
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError("%(path)s is not valid JSON: %(detail)s", path=str(path), detail=str(exc)) from exc
    if not isinstance(data, dict):
        raise ModelError("%(path)s does not hold a JSON object", path=str(path))
    return data


def _config_size(config: Path) -> int:
    if not config.is_file():
        return 0
    size = read_json(config).get("sample_size", 0)
    return int(size[0] if isinstance(size, (list, tuple)) else size or 0)


def _is_sd2(folder: Path) -> bool:
    config = folder / "text_encoder" / "config.json"
    return config.is_file() and read_json(config).get("hidden_size") == 1024
