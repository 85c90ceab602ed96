"""What a run will ask of its worker, worked out when it is created (the web app never
imports torch): the base model's kind and size, read from its files, and an estimate of
the peak memory of one training step, checked against ``worker_memory_mb``.

The estimate was fitted on the demo model (``builtin:fmnist-ddpm-32``, 1.1 M UNet
parameters), one training step on CPU, peak RSS (`docs/reliability.md` has the table):

    peak MB = 450 + 6 x weights MB + pixels x (0.0076 x batch + 0.0102 x S) x sqrt(params / 1.1 M)

450 MB is the process (Python, torch, the photos); 6 x the weights: the trained copy, its
gradients, Adam's two moments, the frozen source copy and the EMA copy (full mode; LoRA
keeps one frozen copy of each network); the activations grow with the pixels the UNet
sees per sample (the latent's for a text-to-image model: the resolution / 8, squared), with
the photos of the batch and with the S samples of the pairwise terms, and with the
network's width (the square root of its size). For Stable Diffusion 1.5 (860 M UNet
parameters) it says ~12 GB for LoRA at 512 px, batch 4, and ~30 GB for full mode: in line
with what such training takes in fp32, but extrapolated, not measured here; where it
refuses runs that your workers handle, raise DOMAINSTUDIO_WORKER_MEMORY_MB.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

UNCONDITIONAL, TEXT_TO_IMAGE = "unconditional", "text-to-image"
PROCESS_MB = 450.0
BATCH_MB_PER_PIXEL = 0.0076
SAMPLE_MB_PER_PIXEL = 0.0102
DEMO_PARAMS = 1_112_801


@dataclass(frozen=True)
class ModelFacts:
    kind: str
    resolution: int  # native, in pixels
    unet_params: int
    other_params: int = 0  # the text encoder and the VAE of a text-to-image model
    latent_factor: int = 1  # the VAE's downsampling (8 for Stable Diffusion)


# counted once from the builtin models (sum of p.numel() over each network)
BUILTINS = {
    "builtin:tiny-ddpm": ModelFacts(UNCONDITIONAL, 32, 177_427),
    "builtin:fmnist-ddpm-32": ModelFacts(UNCONDITIONAL, 32, DEMO_PARAMS),
    "builtin:tiny-sd": ModelFacts(TEXT_TO_IMAGE, 32, 985_444, 167_959 + 36_064, 2),
    # the text-to-image demo model, as read from its shipped folder (worker/domainstudio/weights/fmnist-sd-32)
    "builtin:fmnist-sd-32": ModelFacts(TEXT_TO_IMAGE, 32, 3_918_532, 819_831, 4),
}


def model_facts(spec: str) -> ModelFacts | None:
    """A builtin's facts, or a local diffusers folder's from its JSON files and the
    headers of its safetensors weights; None where they cannot be read without loading
    the model (a hub id, .bin weights, another layout): no estimate is made then."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    folder = Path(spec)
    try:
        if (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text())
            if "text_encoder" in index and "vae" in index:
                vae = json.loads((folder / "vae" / "config.json").read_text())
                factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
                unet = json.loads((folder / "unet" / "config.json").read_text())
                others = sum(_params(folder / sub) or 0 for sub in ("vae", "text_encoder"))
                return _facts(TEXT_TO_IMAGE, unet, _params(folder / "unet"), others, factor)
            return _facts(UNCONDITIONAL, json.loads((folder / "unet" / "config.json").read_text()),
                          _params(folder / "unet"))
        config = folder / "config.json"
        if config.is_file():
            unet = json.loads(config.read_text())
            if unet.get("_class_name") == "UNet2DModel":
                return _facts(UNCONDITIONAL, unet, _params(folder))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return None


def _facts(kind: str, unet_config: dict, params: int | None, others: int = 0, factor: int = 1) -> ModelFacts | None:
    size = unet_config.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if params is None or not isinstance(size, int):
        return None
    return ModelFacts(kind, size * factor, params, others, factor)


def _params(folder: Path) -> int | None:
    """Parameters in the safetensors files of a folder, from their headers alone."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 1024 * 1024:
                return None
            header = json.loads(f.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def resolved(facts: ModelFacts, settings: dict, num_photos: int) -> dict:
    """The settings that decide the memory, with the core's defaults (AdaptConfig.resolved)."""
    t2i = facts.kind == TEXT_TO_IMAGE
    mode = settings.get("mode") or "auto"
    return {
        "mode": mode if mode != "auto" else ("lora" if t2i else "full"),
        "batch_size": min(int(settings.get("batch_size") or (4 if t2i else 10)), num_photos),
        "resolution": int(settings.get("resolution") or facts.resolution),
        "num_similarity_samples": int(settings.get("num_similarity_samples") or (3 if t2i else 4)),
    }


def estimate_mb(facts: ModelFacts, values: dict) -> float:
    """Peak memory of one training step in MB (see the module's docstring)."""
    weights_mb = (facts.unet_params + facts.other_params) * 4 / 2**20
    copies = 6 if values["mode"] == "full" else 1
    unet_mb = facts.unet_params * 4 / 2**20
    weights = unet_mb * copies + (weights_mb - unet_mb) + (0 if values["mode"] == "full" else unet_mb * 0.05)
    pixels = (values["resolution"] / facts.latent_factor) ** 2
    per_pixel = BATCH_MB_PER_PIXEL * values["batch_size"] + SAMPLE_MB_PER_PIXEL * values["num_similarity_samples"]
    return PROCESS_MB + weights + pixels * per_pixel * math.sqrt(facts.unet_params / DEMO_PARAMS)
