"""One way in for every base model: builtin names, local diffusers folders, single-file
checkpoints, hub ids.

``load_base_model(spec)`` returns a :class:`BaseModel` holding the diffusers components
(UNet, scheduler and, for text-to-image, VAE, text encoder(s) and tokenizer(s)). Training
and sampling code only ever sees that object. Families: ``ddpm`` (unconditional
UNet2DModel), ``sd`` (Stable Diffusion 1.x/2.x) and ``sdxl`` (two text encoders, added
time ids).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import DEFAULT_SCHEDULER, TEXT_TO_IMAGE, UNCONDITIONAL
from .errors import ModelError
from .model_kinds import DDPM, SD1, SD2, SDXL, SINGLE_FILE_SUFFIXES, read_json, refuse_unsupported

BUILTIN_PREFIX = "builtin:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BaseModel:
    spec: str
    kind: str  # UNCONDITIONAL or TEXT_TO_IMAGE
    unet: Any
    scheduler: Any
    resolution: int
    channels: int
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    fingerprint: str = ""
    family: str = ""  # model_kinds.DDPM, SD1, SD2 or SDXL; set from kind when not given
    text_encoder_2: Any = None  # SDXL: the OpenCLIP bigG encoder (with projection)
    tokenizer_2: Any = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    # Autoguidance: a weaker model of the same data that sampling steers away from (unconditional
    # models only; see pretrain.AUTOGUIDANCE). Set by the loader of a model that ships one.
    guide: Any = None
    guidance_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.family:
            self.family = SD1 if self.kind == TEXT_TO_IMAGE else DDPM

    @property
    def is_text_to_image(self) -> bool:
        return self.kind == TEXT_TO_IMAGE

    @property
    def is_sdxl(self) -> bool:
        return self.family == SDXL

    @property
    def default_sampler(self) -> str:
        """The sampler this model's images come from when none is asked for."""
        return self.extra.get("default_sampler") or DEFAULT_SCHEDULER

    @property
    def modules(self) -> list:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2, self.guide) if m is not None]

    @property
    def is_guided(self) -> bool:
        """Whether sampling applies autoguidance (a weight of 1 is the model alone)."""
        return self.guide is not None and self.guidance_weight != 1.0

    def forget_guide(self) -> "BaseModel":
        """Sample without the guide from now on: it is a weaker copy of *these* weights, and
        once they are adapted to a photo set it no longer is (guiding an adapted model away from
        it would push away from the source domain, not from its errors)."""
        self.guide, self.guidance_weight = None, 1.0
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "BaseModel":
        for module in self.modules:
            module.to(device) if dtype is None else module.to(device=device, dtype=dtype)
        return self

    def pipeline(self, unet: Any = None):
        """A plain diffusers pipeline over these components (DDPMPipeline, StableDiffusionPipeline
        or StableDiffusionXLPipeline)."""
        from diffusers import DDPMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

        unet = unet if unet is not None else self.unet
        if self.is_sdxl:
            # No invisible watermark: it needs a package of its own and alters every image.
            return StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=unet,
                scheduler=self.scheduler, add_watermarker=False,
            )
        if self.is_text_to_image:
            return StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                unet=unet, scheduler=self.scheduler, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False,
            )
        return DDPMPipeline(unet=unet, scheduler=self.scheduler)


# -- builtin models ---------------------------------------------------------------------
@dataclass
class Builtin:
    description: str
    build: Callable[[], BaseModel]


def _tiny_ddpm() -> BaseModel:
    from .tiny import tiny_ddpm

    unet, scheduler = tiny_ddpm()
    return BaseModel("builtin:tiny-ddpm", UNCONDITIONAL, unet, scheduler, 32, 3,
                     fingerprint="builtin:tiny-ddpm", description=BUILTINS["tiny-ddpm"].description)


def _tiny_sd() -> BaseModel:
    from .tiny import sd_components

    c = sd_components("tiny")
    return BaseModel("builtin:tiny-sd", TEXT_TO_IMAGE, c["unet"], c["scheduler"], c["resolution"], 3,
                     vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                     fingerprint="builtin:tiny-sd", description=BUILTINS["tiny-sd"].description)


def _tiny_sdxl() -> BaseModel:
    from .tiny import sdxl_components

    c = sdxl_components()
    return BaseModel("builtin:tiny-sdxl", TEXT_TO_IMAGE, c["unet"], c["scheduler"], c["resolution"], 3,
                     vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                     text_encoder_2=c["text_encoder_2"], tokenizer_2=c["tokenizer_2"], family=SDXL,
                     fingerprint="builtin:tiny-sdxl", description=BUILTINS["tiny-sdxl"].description)


def _fmnist_ddpm() -> BaseModel:
    try:
        from .pretrain import AUTOGUIDANCE, GUIDE_WEIGHTS, SAMPLER, load_fmnist_ddpm
    except ImportError as exc:  # the demo model's module is part of the package
        raise ModelError("builtin:fmnist-ddpm-32 is not available in this installation (%(detail)s)",
                         detail=str(exc)) from exc
    try:
        unet, scheduler = load_fmnist_ddpm()
        guide, _ = load_fmnist_ddpm(GUIDE_WEIGHTS)
        guide.requires_grad_(False)  # it only ever samples
    except FileNotFoundError as exc:
        raise ModelError(
            "builtin:fmnist-ddpm-32's weights are missing from this installation (%(detail)s); "
            "reinstall DomainStudio, or train them with `domainstudio pretrain`",
            detail=str(exc),
        ) from exc
    return BaseModel("builtin:fmnist-ddpm-32", UNCONDITIONAL, unet, scheduler, 32, 1,
                     fingerprint="builtin:fmnist-ddpm-32", description=BUILTINS["fmnist-ddpm-32"].description,
                     extra={"default_sampler": SAMPLER}, guide=guide, guidance_weight=AUTOGUIDANCE)


def _fmnist_sd() -> BaseModel:
    from .demo_words import DEMO_DEFAULT_SETTINGS, demo_vocabulary
    from .pretrain_sd import DEFAULT_FOLDER

    if not (DEFAULT_FOLDER / "model_index.json").is_file():
        raise ModelError(
            "builtin:fmnist-sd-32's weights are missing from this installation (no %(path)s); "
            "reinstall DomainStudio, or train them with `domainstudio pretrain-sd`",
            path=str(DEFAULT_FOLDER / "model_index.json"),
        )
    model = load_local_folder(DEFAULT_FOLDER)
    model.spec = model.fingerprint = "builtin:fmnist-sd-32"
    model.description = BUILTINS["fmnist-sd-32"].description
    model.extra.update(demo_vocabulary(), default_settings=DEMO_DEFAULT_SETTINGS)
    return model


BUILTINS: dict[str, Builtin] = {
    "tiny-ddpm": Builtin("Unconditional DDPM, 32x32 RGB, random weights (tests and smoke runs).", _tiny_ddpm),
    "tiny-sd": Builtin("Stable-Diffusion-shaped text-to-image model, 32 px, random weights (tests and smoke runs).", _tiny_sd),
    "tiny-sdxl": Builtin("SDXL-shaped text-to-image model (two text encoders, added time ids), 32 px, random weights (tests and smoke runs).", _tiny_sdxl),
    "fmnist-ddpm-32": Builtin("Demo model: unconditional DDPM, 32x32 grayscale, trained on Fashion-MNIST clothing and bags (no footwear).", _fmnist_ddpm),
    "fmnist-sd-32": Builtin("Demo model: Stable-Diffusion-shaped text-to-image model, 32x32 (grey on RGB), trained on Fashion-MNIST "
                            "with captions: t-shirt, trousers, pullover, dress, coat, shirt, bag, sandal, ankle boot, shoe (never a sneaker).", _fmnist_sd),
}


def list_builtin_models() -> dict[str, str]:
    """``{"builtin:NAME": description}`` for every builtin model."""
    return {BUILTIN_PREFIX + name: b.description for name, b in BUILTINS.items()}


# -- loading --------------------------------------------------------------------------
def load_base_model(spec: str, device: str | torch.device = "cpu") -> BaseModel:
    """Load a base model from ``builtin:NAME``, a local diffusers folder, a single checkpoint
    file (.safetensors/.ckpt of SD 1.x, 2.x, SDXL), or a hub id.

    Raises :class:`ModelError` with what to do when the model cannot be found or read.
    """
    spec = str(spec).strip()
    if spec.startswith(BUILTIN_PREFIX):
        model = _load_builtin(spec[len(BUILTIN_PREFIX):])
    elif Path(spec).expanduser().is_file():
        from .single_file import load_single_file

        model = text_to_image_model(spec, *load_single_file(Path(spec).expanduser()))
    elif Path(spec).expanduser().exists():
        model = load_local_folder(Path(spec).expanduser())
    elif spec.lower().endswith(SINGLE_FILE_SUFFIXES):  # not a hub id: a file that is not there
        raise ModelError("the checkpoint file %(path)s does not exist", path=spec)
    elif _HUB_ID.match(spec):
        model = _load_from_hub(spec)
    else:
        raise ModelError(
            "base model %(spec)s is neither a builtin name, an existing folder, nor a hub id. "
            "Builtin models: %(choices)s",
            spec=repr(spec), choices=", ".join(list_builtin_models()),
        )
    return model.to(device)


def _load_builtin(name: str) -> BaseModel:
    if name not in BUILTINS:
        raise ModelError("unknown builtin model 'builtin:%(name)s'; available: %(choices)s",
                         name=name, choices=", ".join(list_builtin_models()))
    return BUILTINS[name].build()


def load_local_folder(folder: Path) -> BaseModel:
    """A diffusers folder: a Stable Diffusion or DDPM pipeline, or a bare UNet2DModel."""
    if not folder.is_dir():
        raise ModelError("%(path)s is a file; give the folder of a diffusers model (with model_index.json)",
                         path=str(folder))
    index = folder / "model_index.json"
    if index.is_file():
        info = read_json(index)
        pipeline_class = str(info.get("_class_name", ""))
        refuse_unsupported(info, pipeline_class, folder)
        if "text_encoder" in info and "vae" in info:
            return _load_sd_folder(folder, pipeline_class, sdxl="text_encoder_2" in info)
        return _load_ddpm_folder(folder, folder / "unet", pipeline_class)
    config = folder / "config.json"
    if config.is_file() and read_json(config).get("_class_name") == "UNet2DModel":
        return _load_ddpm_folder(folder, folder, "UNet2DModel")
    raise ModelError(
        "%(folder)s is not a diffusers model folder: expected model_index.json (a pipeline saved with "
        "save_pretrained) or config.json of a UNet2DModel",
        folder=str(folder),
    )


def _load_sd_folder(folder: Path, pipeline_class: str, sdxl: bool) -> BaseModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    subs = ("unet", "vae", "text_encoder", "tokenizer", "scheduler") + (("text_encoder_2", "tokenizer_2") if sdxl else ())
    for sub in subs:
        if not (folder / sub).is_dir():
            raise ModelError("%(folder)s lacks the %(sub)s/ folder that a %(pipeline)s model needs",
                             folder=str(folder), sub=sub, pipeline=pipeline_class or "Stable Diffusion")
    try:
        parts = dict(
            unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            vae=AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            # Training adds noise the DDPM way whatever sampler the folder names.
            scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        )
        if sdxl:
            parts.update(text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"),
                         tokenizer_2=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError("could not read the model in %(folder)s: %(detail)s",
                         folder=str(folder), detail=str(exc)) from exc
    name = pipeline_class or ("Stable Diffusion XL" if sdxl else "Stable Diffusion")
    return text_to_image_model(str(folder), parts, _folder_fingerprint(folder / "unet"), f"{name} from {folder}")


def text_to_image_model(spec: str, parts: dict, fingerprint: str, description: str) -> BaseModel:
    """A BaseModel over loaded SD or SDXL components; the resolution is the UNet's latent size
    times the VAE's downscaling (512 px for SD 1.x, 768 for SD 2.x-v, 1024 for SDXL)."""
    vae, unet = parts["vae"], parts["unet"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if parts.get("text_encoder_2") is not None:
        family = SDXL
    else:  # SD 2.x: OpenCLIP ViT-H, 1024-wide hidden states
        family = SD2 if parts["text_encoder"].config.hidden_size == 1024 else SD1
    return BaseModel(spec, TEXT_TO_IMAGE, unet, parts["scheduler"], int(unet.config.sample_size) * scale, 3,
                     vae=vae, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                     text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"),
                     family=family, fingerprint=fingerprint, description=description)


def _load_ddpm_folder(folder: Path, unet_folder: Path, pipeline_class: str) -> BaseModel:
    from diffusers import DDPMScheduler, UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(unet_folder)
        if (folder / "scheduler").is_dir():
            scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        else:
            scheduler = DDPMScheduler(num_train_timesteps=1000)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError("could not read the model in %(folder)s: %(detail)s",
                         folder=str(folder), detail=str(exc)) from exc
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return BaseModel(str(folder), UNCONDITIONAL, unet, scheduler, int(size), int(unet.config.in_channels),
                     fingerprint=_folder_fingerprint(unet_folder),
                     description=f"{pipeline_class} (unconditional) from {folder}")


def _folder_fingerprint(unet_folder: Path) -> str:
    """Identifies a base model by its UNet config, so adapters are not applied to another model."""
    text = (unet_folder / "config.json").read_bytes() if (unet_folder / "config.json").is_file() else b""
    return "sha256:" + hashlib.sha256(text).hexdigest()[:16]


def _load_from_hub(repo_id: str) -> BaseModel:
    """Download a pipeline folder from the hub (where one is reachable), then load it locally."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(
            "could not fetch %(repo)s from the model hub (HF_HUB_OFFLINE is set). This machine may be offline: "
            "download the model on a connected machine (diffusers layout, save_pretrained) and give "
            "the local folder's path instead, or use a builtin model: %(choices)s",
            repo=repr(repo_id), choices=", ".join(list_builtin_models()),
        )
    try:
        from huggingface_hub import snapshot_download

        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"])
    except Exception as exc:  # any network or hub error: the answer is the same
        raise ModelError(
            "could not fetch %(repo)s from the model hub (%(error)s: %(detail)s). This machine may be offline: "
            "download the model on a connected machine (diffusers layout, save_pretrained) and give "
            "the local folder's path instead, or use a builtin model: %(choices)s",
            repo=repr(repo_id), error=type(exc).__name__, detail=str(exc)[:200],
            choices=", ".join(list_builtin_models()),
        ) from exc
    model = load_local_folder(Path(folder))
    model.spec, model.fingerprint = repo_id, repo_id
    return model

