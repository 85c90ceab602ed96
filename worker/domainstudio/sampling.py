"""Sampling N images from a base model or an adapted run, in batches, deterministic per seed.

Image i is drawn from seed ``seed + i`` with its own generator, so an image does not
depend on the batch it was drawn in, and "generate more" continues with new seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from .config import DEFAULT_SAMPLING_STEPS as DEFAULT_STEPS
from .config import SCHEDULERS
from .data import to_pil
from .errors import Canceled, InputError
from .models import BaseModel
from .training import autocast, resolve_device, sampling_dtype



@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    prompt: str | None
    steps: int
    scheduler: str
    model: str
    metadata: dict = field(default_factory=dict)


def make_scheduler(name: str, config):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name in ("dpmsolver++", "sde-dpmsolver++"):
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type=name)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    raise InputError("unknown scheduler %(name)s; choose one of %(choices)s",
                     name=repr(name), choices=", ".join(SCHEDULERS))


def sample(
    model: str | Path | BaseModel,
    n: int,
    prompt: str | Sequence[str] | None = None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    scheduler: str | None = None,
    guidance_scale: float = 7.5,
    batch_size: int = 8,
    device: str = "auto",
    negative_prompt: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "auto",
) -> list[GeneratedImage]:
    """Sample ``n`` images. ``model``: a run's output folder, a diffusers folder or builtin spec.

    For text-to-image models ``prompt`` is one prompt or one per image; classifier-free
    guidance uses ``guidance_scale``. ``scheduler``: one of SCHEDULERS, None for the model's
    own (BaseModel.default_sampler). ``progress(done, n)`` is called after each batch.
    ``precision``: auto (fp16 on a GPU, fp32 on the CPU), no, fp16 or bf16; a model loaded
    here has its weights cast to it, a BaseModel passed in runs under autocast.
    """
    from .checkpoints import load_for_sampling

    dev = resolve_device(device)
    dtype = sampling_dtype(precision, dev)
    if isinstance(model, BaseModel):
        base = model
    else:
        base = load_for_sampling(model, dev)
        if dtype is not None:
            # Weights of our own copy: cast once, then no autocast (it would re-cast fp32
            # weights on every call, twice the memory traffic).
            base.to(dev, dtype)
            dtype = None
    return sample_with(base, n, prompt=prompt, seed=seed, steps=steps, scheduler=scheduler,
                       guidance_scale=guidance_scale, batch_size=batch_size, device=dev,
                       negative_prompt=negative_prompt, progress=progress, should_stop=should_stop,
                       precision=dtype)


def _settings(base: BaseModel, guidance_scale: float) -> dict:
    """How an image was guided, for its metadata line."""
    if base.is_text_to_image:
        return {"guidance_scale": guidance_scale}
    if base.is_guided:
        return {"guidance_scale": None, "autoguidance": base.guidance_weight}
    return {"guidance_scale": None}


def _check(n: int, steps: int, batch_size: int, scheduler: str, prompts: list | None, base: BaseModel) -> None:
    if not 1 <= n <= 100_000:
        raise InputError("n must be between 1 and 100000, got %(value)s", value=n)
    if not 1 <= steps <= 1000:
        raise InputError("steps must be between 1 and 1000, got %(value)s", value=steps)
    if not 1 <= batch_size <= 1024:
        raise InputError("batch_size must be between 1 and 1024, got %(value)s", value=batch_size)
    if scheduler not in SCHEDULERS:
        raise InputError("unknown scheduler %(name)s; choose one of %(choices)s",
                         name=repr(scheduler), choices=", ".join(SCHEDULERS))
    if base.is_text_to_image and not prompts:
        raise InputError("a text-to-image model needs a prompt")
    if prompts is not None and len(prompts) != n:
        raise InputError("got %(count)s prompts for %(n)s images: give one prompt, or one per image",
                         count=len(prompts), n=n)


def sample_with(
    base: BaseModel,
    n: int,
    prompt: str | Sequence[str] | None = None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    scheduler: str | None = None,
    guidance_scale: float = 7.5,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    negative_prompt: str | None = None,
    resolution: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: torch.dtype | None = None,
) -> list[GeneratedImage]:
    """Sample from an already loaded model (used by the sampler above and for previews);
    ``precision``: autocast dtype (None: the weights' own)."""
    scheduler = scheduler or base.default_sampler
    prompts = None
    if base.is_text_to_image and prompt is not None:
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    _check(n, steps, batch_size, scheduler, prompts, base)
    device = torch.device(device)
    base.to(device)
    out: list[GeneratedImage] = []
    for first in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            raise Canceled("sampling was canceled")
        seeds = list(range(seed + first, seed + min(n, first + batch_size)))
        with autocast(device, precision):
            if base.is_text_to_image:
                batch_prompts = prompts[first:first + len(seeds)]
                images = _text_to_image_batch(base, batch_prompts, seeds, steps, scheduler, guidance_scale,
                                              negative_prompt, resolution, device)
            else:
                batch_prompts = [None] * len(seeds)
                images = _unconditional_batch(base, seeds, steps, scheduler, device)
        for image, s, p in zip(images, seeds, batch_prompts):
            out.append(GeneratedImage(image, s, p, steps, scheduler, base.spec, _settings(base, guidance_scale)))
        if progress is not None:
            progress(len(out), n)
    return out


def _noise(seeds: list[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([
        torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds
    ]).to(device=device, dtype=dtype)


@torch.no_grad()
def _unconditional_batch(base: BaseModel, seeds: list[int], steps: int, scheduler_name: str,
                         device: torch.device) -> list[Image.Image]:
    unet = base.unet
    was_training = unet.training
    unet.eval()
    scheduler = make_scheduler(scheduler_name, base.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    dtype = next(unet.parameters()).dtype
    x = _noise(seeds, (base.channels, base.resolution, base.resolution), device, dtype)
    x = x * scheduler.init_noise_sigma
    generators = [torch.Generator(device=device).manual_seed(s + 1) for s in seeds]
    # A model that learns its variance outputs 2C channels: DDPM's "learned_range" variance
    # reads the second C, the other samplers take the prediction alone (DPM-Solver's own
    # slicing assumes 3 channels, so they are given just the first C).
    learned = scheduler_name == "ddpm" and base.scheduler.config.get("variance_type") in ("learned", "learned_range")
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        out = unet(model_in, t).sample
        out = out[:, : 2 * base.channels] if learned else out[:, : base.channels]
        if base.is_guided:
            out = _autoguided(base, model_in, t, out)
        x = scheduler.step(out, t, x, generator=generators).prev_sample
    unet.train(was_training)
    return to_pil(x)


def _autoguided(base: BaseModel, model_in: torch.Tensor, t, out: torch.Tensor) -> torch.Tensor:
    """guide + w * (model - guide) on the noise prediction (a learned variance, if any, is the model's own)."""
    c = base.channels
    weak = base.guide(model_in, t).sample[:, :c]
    guided = weak + base.guidance_weight * (out[:, :c] - weak)
    return torch.cat([guided, out[:, c:]], dim=1)


@torch.no_grad()
def _text_to_image_batch(base: BaseModel, prompts: list[str], seeds: list[int], steps: int,
                         scheduler_name: str, guidance_scale: float, negative_prompt: str | None,
                         resolution: int | None, device: torch.device) -> list[Image.Image]:
    pipe = base.pipeline()
    pipe.scheduler = make_scheduler(scheduler_name, base.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    was_training = base.unet.training
    base.unet.eval()
    size = resolution or base.resolution
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    result = pipe(prompt=prompts, negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
                  num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                  height=size, width=size, output_type="pil")
    base.unet.train(was_training)
    return list(result.images)
