"""Every setting of an adaptation, in one dataclass shared by the CLI, the web app and the worker.

Fields left as None take the default of the base model's kind (unconditional DDPM or
text-to-image), filled in by :meth:`AdaptConfig.resolved` once the model is known; the
run's saved ``config.json`` always holds resolved values.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

UNCONDITIONAL = "unconditional"
TEXT_TO_IMAGE = "text-to-image"
# Samplers. DPM-Solver++ is the default; a model may name another as its own
# (BaseModel.default_sampler): the stochastic variant for pixel-space models whose noise
# prediction at small t is rough (builtin:fmnist-ddpm-32, benchmarks/results/fmnist-source.md).
SCHEDULERS = ("dpmsolver++", "sde-dpmsolver++", "ddim", "ddpm")
DEFAULT_SCHEDULER = "dpmsolver++"
DEFAULT_SAMPLING_STEPS = 25


def _f(default: Any, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Bound:
    """The values a number setting may take: low..high, each end allowed unless marked open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


# The bounds of every number setting: the one place the CLI, the API, the web's expert form
# and validate() take them from.
BOUNDS: dict[str, Bound] = {
    "steps": Bound(1, 1_000_000),
    "batch_size": Bound(1, 4096),
    "learning_rate": Bound(0, 1, low_open=True, high_open=True),
    "resolution": Bound(8, 4096),
    "l_img": Bound(0, 1e6),
    "l_hf": Bound(0, 1e6),
    "l_hfmse": Bound(0, 1e6),
    "prior_weight": Bound(0, 1e6),
    # the pairwise terms compare each sample with the others: with 2 that is always equal
    "num_similarity_samples": Bound(3, 64),
    "ds_max_timestep": Bound(1, 1000),
    "pairwise_max_timestep": Bound(1, 1000),
    "max_grad_norm": Bound(0, 1e6),
    "ema_decay": Bound(0, 1, high_open=True),
    "caption_dropout": Bound(0, 1),
    "num_class_images": Bound(2, 100_000),  # loaded as photos: at least 2 must be usable
    "lora_rank": Bound(1, 1024),
    "gradient_accumulation_steps": Bound(1, 1024),
    "lr_warmup_steps": Bound(0, 1_000_000),
    "vae_decode_chunk": Bound(1, 64),
    "checkpoint_every": Bound(1, 10_000_000),
    "preview_every": Bound(0, 10_000_000),
    "num_previews": Bound(0, 16),
    "seed": Bound(0, 2**31 - 1),
}


@dataclass
class AdaptConfig:
    base_model: str = _f(None, "Base model: builtin:NAME, a local diffusers folder, or a hub id where a hub is reachable.")
    mode: str = _f("auto", "What is trained: full (all UNet weights) or lora (small adapter file); auto = lora for text-to-image, full for unconditional.", ("auto", "full", "lora"))
    steps: int | None = _f(None, "Training steps (default: 600 unconditional, 800 text-to-image).")
    batch_size: int | None = _f(None, "Photos per step (default: 10 unconditional, 4 text-to-image; capped at the number of photos).")
    learning_rate: float | None = _f(None, "AdamW learning rate (default: 1e-4; 5e-6 for a full text-to-image UNet).")
    resolution: int | None = _f(None, "Training resolution in pixels (default: the base model's).")
    l_img: float | None = _f(None, "Weight of the image pairwise-similarity term (default 4 unconditional, 2 text-to-image; 0 disables).")
    l_hf: float | None = _f(None, "Weight of the high-frequency pairwise-similarity term (default 4 unconditional, 0.2 text-to-image; 0 disables).")
    l_hfmse: float | None = _f(None, "Weight of the high-frequency MSE term (default 1 / 0.1; 0 disables).")
    prior_weight: float = _f(1.0, "Weight of the class-prior preservation loss (text-to-image).")
    num_similarity_samples: int | None = _f(None, "Samples S compared by the pairwise terms, S more noisy photos per step (at least 3: with 2 the comparison is always equal; default 4 unconditional, 3 text-to-image).")
    ds_max_timestep: int | None = _f(None, "The high-frequency MSE term sees only noisy samples with t below this (default 200 unconditional, 500 text-to-image; 1000 = every t, as the official code).")
    pairwise_max_timestep: int | None = _f(None, "The pairwise-similarity terms (img, hf) see t below this, on S more noisy photos per step that share one t (default 300 unconditional, 1000 = every t text-to-image).")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm of each step to this (0 = no clipping).")
    ema_decay: float | None = _f(None, "EMA decay of the weights used for sampling (default 0.995 unconditional, 0 = off for text-to-image).")
    source: str = _f("unpaired", "Text-to-image source side: unpaired (official: class images under the class prompt) or paired (frozen base UNet on the same noisy latents).", ("unpaired", "paired"))
    class_word: str = _f("product", "The product's class word, e.g. bottle or sneaker (text-to-image prompts).")
    instance_token: str = _f("sks", "Rare token that names this product in the instance prompt.")
    instance_prompt: str | None = _f(None, "Instance prompt (default: 'a photo of {token} {class}').")
    class_prompt: str | None = _f(None, "Class prompt (default: 'a photo of {class}').")
    caption_dropout: float = _f(0.1, "Share of steps on which a photo's caption is left out, so that the instance prompt alone (the trigger words) learns the product (text-to-image; photos without a caption are unaffected).")
    num_class_images: int = _f(200, "Class images generated once by the base model for prior preservation (text-to-image).")
    class_images_dir: str | None = _f(None, "Where the class images are cached (default: OUTPUT/class_images).")
    lora_rank: int = _f(8, "LoRA rank (lora mode).")
    gradient_checkpointing: bool = _f(True, "Recompute UNet/VAE activations in the backward pass to save memory (text-to-image).")
    mixed_precision: str = _f("auto", "Mixed precision: auto (bf16 on a CUDA GPU that has it, else fp16 on GPU, none on CPU), no, fp16 or bf16.", ("auto", "no", "fp16", "bf16"))
    sampling_precision: str = _f("auto", "Precision of the class images and previews: auto (fp16 on a GPU, none on CPU), no, fp16 or bf16.", ("auto", "no", "fp16", "bf16"))
    optimizer: str = _f("adamw", "Optimizer: adamw, or adamw8bit (bitsandbytes, CUDA GPUs: its state takes a quarter of the memory).", ("adamw", "adamw8bit"))
    gradient_accumulation_steps: int = _f(1, "Batches whose gradients are averaged into each optimizer step (a larger batch in the same memory, at the time of N steps).")
    lr_warmup_steps: int = _f(0, "Steps over which the learning rate rises linearly to its value (0 = off).")
    attention: str = _f("sdpa", "Attention kernel: sdpa (PyTorch scaled_dot_product_attention, memory-efficient) or classic (the attention matrix in full, as diffusers before PyTorch 2).", ("sdpa", "classic"))
    torch_compile: bool = _f(False, "Compile the UNet with torch.compile: a few minutes at the start, then faster steps on a GPU.")
    vae_decode_chunk: int = _f(1, "Samples the VAE decodes at once for the DomainStudio terms (text-to-image): 1 keeps peak memory lowest; more can be faster on a GPU.")
    checkpoint_every: int = _f(200, "Save the training state (for resume) every N steps.")
    preview_every: int = _f(100, "Report preview images every N steps (0 = never).")
    num_previews: int = _f(4, "Preview images per report.")
    seed: int = _f(0, "Random seed of the run.")
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available).")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdaptConfig":
        """Build from a plain dict (JSON, a web form), rejecting unknown names and bad values."""
        if not isinstance(data, dict):
            raise InputError("settings must be a JSON object, got %(type)s", type=type(data).__name__)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError("unknown setting(s): %(names)s; known: %(known)s",
                             names=", ".join(unknown), known=", ".join(sorted(names)))
        values = {k: _coerce(cls, k, v) for k, v in data.items()}
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def fields_help(cls) -> list[dict[str, Any]]:
        """Name, type, default, help and choices of every setting (CLI options, web form)."""
        out = []
        for f in dataclasses.fields(cls):
            out.append({
                "name": f.name,
                "type": _base_type(f.type),
                "default": f.default,
                "help": f.metadata["help"],
                "choices": f.metadata["choices"],
                "bound": BOUNDS.get(f.name),
            })
        return out

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.base_model or not isinstance(self.base_model, str):
            raise InputError("base_model is required, e.g. builtin:tiny-ddpm or a local diffusers folder")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise InputError("%(name)s must be one of %(choices)s, got %(value)s",
                                 name=f.name, choices=", ".join(choices), value=repr(value))
        for name, bound in BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not bound.holds(value):
                raise _out_of_bounds(name, bound, value)

    def resolved(self, kind: str, num_photos: int, native_resolution: int,
                 model_defaults: dict[str, dict[str, Any]] | None = None) -> "AdaptConfig":
        """A copy with every None filled in with the default for this kind of model, or with the
        model's own default for its mode where it ships one (``model_defaults[mode]``: the demo
        model, 600 times smaller than Stable Diffusion, learns at ten times SD's LoRA rate)."""
        t2i = kind == TEXT_TO_IMAGE
        mode = self.mode if self.mode != "auto" else ("lora" if t2i else "full")
        if mode == "lora" and not t2i:
            raise InputError("lora mode is for text-to-image models; use mode full for an unconditional model")
        defaults = {
            "mode": mode,
            "steps": 800 if t2i else 600,
            "batch_size": 4 if t2i else 10,
            "learning_rate": (5e-6 if mode == "full" else 1e-4) if t2i else 1e-4,
            "resolution": native_resolution,
            # text-to-image: the official 100 / 100 made the pairwise terms' gradients 30-700x
            # DreamBooth's on the demo model and its Quick runs drew 2% sneakers; 2 / 0.2 keeps
            # them near L_simple's (benchmarks/term_gradients_t2i.py, fewshot-t2i-tuning.md)
            "l_img": 2.0 if t2i else 4.0,
            "l_hf": 0.2 if t2i else 4.0,
            "l_hfmse": 0.1 if t2i else 1.0,
            "ema_decay": 0.0 if t2i else 0.995,
            "num_similarity_samples": 3 if t2i else 4,
            # SD's scaled-linear schedule amplifies x0_hat's error far less than a linear-beta
            # DDPM (sqrt((1-abar)/abar) = 1.6 at t=500, 14.6 at t=999, against 156 at t=999):
            # the pairwise terms (cosines, scale-free) see every t, the HF-MSE t < 500
            "ds_max_timestep": 500 if t2i else 200,
            "pairwise_max_timestep": 1000 if t2i else 300,
            "instance_prompt": "a photo of {token} {class}",
            "class_prompt": "a photo of {class}",
        }
        defaults.update((model_defaults or {}).get(mode, {}))
        values = self.to_dict()
        for name, default in defaults.items():
            if values[name] is None or (name == "mode"):
                values[name] = default
        values["batch_size"] = min(values["batch_size"], num_photos)
        return AdaptConfig(**values)

    def prompt(self, template: str) -> str:
        return template.replace("{token}", self.instance_token).replace("{class}", self.class_word)

    def photo_prompt(self, caption: str) -> str:
        """The instance prompt of one photo: the trigger words first, then its caption."""
        prompt = self.prompt(self.instance_prompt or "a photo of {token} {class}")
        return f"{prompt}, {caption}" if caption else prompt


def _out_of_bounds(name: str, bound: Bound, value: Any) -> InputError:
    """The message of a setting outside its bounds; a few say why the bound is there."""
    if name == "num_similarity_samples":
        return InputError("num_similarity_samples must be between 3 and 64: the pairwise terms compare each "
                          "sample with the others, and with 2 that comparison is always equal (a zero loss)")
    if name == "ema_decay":
        return InputError("ema_decay must be in [0, 1)")
    if name == "max_grad_norm":
        return InputError("max_grad_norm must be between 0 and 1e6 (0 = no clipping)")
    return InputError("%(name)s must be between %(low)s and %(high)s, got %(value)s",
                      name=name, low=_plain(bound.low), high=_plain(bound.high), value=value)


def _plain(number: float) -> int | float:
    """A bound as a message param: 1e6 as 1000000 (an int), 0.5 as it is."""
    return int(number) if float(number).is_integer() else number


def format_bound(number: float) -> str:
    """1000000 and 1e+06 as 1000000, 0.5 as 0.5."""
    return str(_plain(number)) if float(number).is_integer() else f"{number:g}"


def _base_type(annotation: Any) -> str:
    text = str(annotation)
    for name in ("bool", "int", "float", "str"):
        if name in text:
            return name
    return "str"


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Accept what JSON and HTML forms send (strings for numbers, 'true'), reject the rest."""
    kind = next(_base_type(f.type) for f in dataclasses.fields(cls) if f.name == name)
    if value is None or value == "":
        return None if kind != "str" or name in ("instance_prompt", "class_prompt", "class_images_dir") else value
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise InputError("%(name)s must be a %(kind)s, got %(value)s",
                         name=name, kind=kind, value=repr(value)) from None
