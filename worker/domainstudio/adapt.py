"""``adapt()``: the DomainStudio training loop, read top to bottom.

Load the base model and photos, resume from a saved state when there is one, run the
steps (losses -> backward -> AdamW -> EMA), save the training state every
``checkpoint_every`` steps and whenever the loop dies, report progress, then publish the
adapted model. Nothing half-written is left: a folder this call created is removed if it
fails before the first saved state, and files are written under temporary names first.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .checkpoints import publish, read_checkpoint, write_json_atomic
from .config import AdaptConfig
from .data import Photos, load_photos
from .errors import Canceled, InputError, ModelError, Notice
from .layout import CONFIG_FILE, STATE_FILE
from .models import BaseModel, load_base_model
from .sampling import sample_with
from .training import (autocast_dtype, check_optimizer, compile_module, hold_frozen_weights_in,
                       load_state, make_optimizer, resolve_device, rng_state, sampling_dtype, save_atomic,
                       set_attention, set_rng_state, warmup_learning_rate)

log = logging.getLogger("domainstudio.adapt")


@dataclass
class ProgressEvent:
    step: int
    total: int
    losses: dict[str, float]
    eta_seconds: float | None
    elapsed_seconds: float
    previews: list[Image.Image] | None = None
    stage: str = "training"  # "class_images" while prior images are generated, then "training"


@dataclass
class AdaptResult:
    output_dir: Path
    steps: int
    kind: str
    mode: str
    losses: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    resumed_from: int = 0
    elapsed_seconds: float = 0.0
    prompts: dict[str, str] = field(default_factory=dict)  # text-to-image: photo name -> trained prompt


Progress = Callable[[ProgressEvent], None]


def adapt(config: AdaptConfig, photos, output_dir: str | Path, progress: Progress | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True) -> AdaptResult:
    """Adapt ``config.base_model`` to ``photos`` with DomainStudio; the result lands in ``output_dir``."""
    config.validate()
    out = Path(output_dir)
    created = not out.exists()
    try:
        return _adapt(config, photos, out, progress, should_stop, resume)
    except BaseException:
        if created and out.exists() and not (out / STATE_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming from
        raise


def _adapt(config, photos, out: Path, progress, should_stop, resume) -> AdaptResult:
    device = resolve_device(config.device)
    check_optimizer(config.optimizer, device)
    base = load_base_model(config.base_model).forget_guide()  # the run adapts these weights
    set_attention((base.unet, base.vae), config.attention)
    loaded = load_photos(photos, config.resolution or base.resolution, base.channels)
    cfg = config.resolved(base.kind, len(loaded.names), base.resolution, base.extra.get("default_settings"))
    cfg, notices = known_class_word(cfg, base)
    done = _finished(out, cfg, base) if resume else None
    if done is not None:
        return done
    state = _resume_state(out, cfg, base, resume)
    out.mkdir(parents=True, exist_ok=True)
    prompts = _trained_prompts(base, cfg, loaded)
    write_json_atomic(out / CONFIG_FILE, {**cfg.to_dict(), "base_fingerprint": base.fingerprint,
                                          "photos": loaded.names, "gallery_prompts": gallery_prompts(cfg, base),
                                          "prompts": prompts})
    amp = autocast_dtype(cfg.mixed_precision, device)
    trainer = _make_trainer(base, cfg, loaded, device, amp, out, progress)
    prepare_for_training(trainer, cfg, amp)
    result = _train(trainer, base, cfg, len(loaded.names), out, device, amp, state, progress, should_stop)
    result.warnings, result.prompts = loaded.warnings + notices, prompts
    return result


def known_class_word(cfg: AdaptConfig, base: BaseModel) -> tuple[AdaptConfig, list[Notice]]:
    """A model that knows only a few words (the demo model) gets one of them: its alias of the
    photo set's word ("sneaker" -> "shoe"), or the word as it is, with a notice that the model
    has never read it (the instance prompt still teaches it; the class images will not fit)."""
    words = base.extra.get("class_words")
    if not base.is_text_to_image or not words or cfg.class_word in words:
        return cfg, []
    word = cfg.class_word.strip().lower()
    if word in words:  # "Shoe" is its word "shoe" (the run form shows it so: demo_words.model_word)
        return dataclasses.replace(cfg, class_word=word), []
    alias = base.extra.get("class_word_aliases", {}).get(word)
    if alias:
        note = Notice("%(model)s does not know the word %(word)s; its prompts use its own word %(alias)s",
                      model=base.spec, word=repr(cfg.class_word), alias=repr(alias))
        return dataclasses.replace(cfg, class_word=alias), [note]
    note = Notice("%(model)s does not know the word %(word)s (it knows: %(words)s); the class images "
                  "for prior preservation will not show your kind of product",
                  model=base.spec, word=repr(cfg.class_word), words=", ".join(words))
    return cfg, [note]


def gallery_prompts(cfg: AdaptConfig, base: BaseModel) -> list[str] | None:
    """The prompts a gallery cycles through (image i takes prompt i mod n): the instance prompt,
    or for a model that knows only its captions' templates, each of them with the trigger word."""
    if not base.is_text_to_image:
        return None
    templates = base.extra.get("prompt_templates") or [cfg.instance_prompt]
    return [cfg.prompt(t) for t in templates]


def _trained_prompts(base: BaseModel, cfg: AdaptConfig, photos: Photos) -> dict[str, str]:
    """Each photo's instance prompt: the trigger words, then its caption (text-to-image)."""
    if not base.is_text_to_image:
        return {}
    return {name: cfg.photo_prompt(caption) for name, caption in zip(photos.names, photos.captions)}


def _finished(out: Path, cfg: AdaptConfig, base: BaseModel) -> AdaptResult | None:
    """A finished run with at least the asked-for steps is returned as is (idempotent retries)."""
    info = read_checkpoint(out) if out.is_dir() else None
    if info is None or info.get("steps", 0) < cfg.steps:
        return None
    _check_compatible(info, cfg, base, out)
    saved = json.loads((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else {}
    return AdaptResult(out, info["steps"], info["kind"], info["mode"], info.get("losses", {}),
                       resumed_from=info["steps"], prompts=saved.get("prompts") or {})


def _resume_state(out: Path, cfg: AdaptConfig, base: BaseModel, resume: bool) -> dict | None:
    if not out.exists():
        return None
    if not out.is_dir():
        raise InputError("output %(path)s is a file; give a folder", path=str(out))
    state_path = out / STATE_FILE
    if not resume:
        if any(out.iterdir()):
            raise InputError("output folder %(folder)s is not empty; choose a new folder, or resume the run in it",
                             folder=str(out))
        return None
    if not state_path.is_file():
        if any(p for p in out.iterdir() if p.name not in (CONFIG_FILE, "class_images", "previews")):
            raise InputError("output folder %(folder)s holds other files and no run to resume; choose a new folder",
                             folder=str(out))
        return None
    state = load_state(state_path)
    _check_compatible(state["meta"], cfg, base, out)
    if state["meta"].get("optimizer", "adamw") != cfg.optimizer:  # their saved states differ
        raise InputError("%(folder)s holds a run trained with optimizer %(saved)s; resume it with that optimizer",
                         folder=str(out), saved=str(state["meta"].get("optimizer", "adamw")))
    if state["step"] > cfg.steps:
        raise InputError("%(folder)s is already at step %(step)s, beyond the %(steps)s steps asked for",
                         folder=str(out), step=state["step"], steps=cfg.steps)
    return state


def _check_compatible(meta: dict, cfg: AdaptConfig, base: BaseModel, out: Path) -> None:
    if meta.get("base_fingerprint") != base.fingerprint:
        raise ModelError(
            "%(folder)s holds a run adapted from another base model (%(base)s); "
            "resume it with that model, or choose a new output folder",
            folder=str(out), base=str(meta.get("base_model")),
        )
    if meta.get("mode") != cfg.mode:
        raise InputError("%(folder)s holds a %(mode)s run; it cannot resume in %(requested)s mode",
                         folder=str(out), mode=str(meta.get("mode")), requested=str(cfg.mode))


def _make_trainer(base, cfg, photos: Photos, device, amp, out: Path, progress):
    if base.is_text_to_image:
        from .text_to_image import TextToImageTrainer, class_images

        folder = Path(cfg.class_images_dir) if cfg.class_images_dir else out / "class_images"
        report = _class_image_progress(progress) if progress is not None else None
        prior = class_images(base, cfg, folder, device, report)
        return TextToImageTrainer(base, cfg, device, photos.pixels, prior, amp, masks=photos.masks,
                                  captions=photos.captions)
    from .unconditional import UnconditionalTrainer

    return UnconditionalTrainer(base, cfg, device, photos.pixels, masks=photos.masks)


def prepare_for_training(trainer, cfg: AdaptConfig, amp: torch.dtype | None) -> None:
    """The memory and speed options that act on a built trainer (benchmarks/gpu.py calls this too)."""
    if frozen_in_half(cfg, amp):
        hold_frozen_weights_in([m for m in (trainer.unet, trainer.base.text_encoder, trainer.base.text_encoder_2)
                                if m is not None], amp)
    if cfg.torch_compile:
        compile_module(trainer.unet)


def frozen_in_half(cfg: AdaptConfig, amp: torch.dtype | None) -> bool:
    """LoRA text-to-image runs under mixed precision hold the frozen weights in its dtype."""
    return cfg.mode == "lora" and amp is not None


def _class_image_progress(progress: Progress) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress(ProgressEvent(done, total, {}, None, 0.0, stage="class_images"))
    return report


def _train(trainer, base, cfg, n_photos, out, device, amp, state, progress, should_stop) -> AdaptResult:
    params = [p for _, p in trainer.named_params]
    optimizer = make_optimizer(params, cfg.optimizer, cfg.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if state is not None:
        start = _restore(state, trainer, optimizer, scaler, generator)
        log.info("run.resumed step=%d output=%s", start, out)
    meta = {"base_model": cfg.base_model, "base_fingerprint": base.fingerprint, "mode": cfg.mode,
            "optimizer": cfg.optimizer}
    clock = _Clock(start, cfg.steps)
    # RNG as of the last completed step: a crash mid-step resumes exactly where it left off.
    completed, rng_done, terms = start, rng_state(generator), {}
    saved = start  # the step of the state on disk: a stop right after a checkpoint saves nothing twice
    try:
        for step in range(start, cfg.steps):
            if should_stop is not None and should_stop():
                raise Canceled("the run was canceled at step %(step)s of %(steps)s", step=step, steps=cfg.steps)
            batches = [torch.randperm(n_photos, generator=generator)[: cfg.batch_size]
                       for _ in range(cfg.gradient_accumulation_steps)]
            lr = warmup_learning_rate(cfg.learning_rate, cfg.lr_warmup_steps, step)
            terms = _step(trainer, optimizer, scaler, batches, generator, step, lr, cfg.max_grad_norm)
            completed, rng_done = step + 1, rng_state(generator)
            if completed % cfg.checkpoint_every == 0 or completed == cfg.steps:
                _save(out, completed, trainer, optimizer, scaler, rng_done, meta)
                saved = completed
            previews = _previews(trainer, base, cfg, device, amp, completed)
            if progress is not None:
                progress(ProgressEvent(completed, cfg.steps, terms, clock.eta(completed), clock.elapsed(), previews))
    except Canceled:
        raise
    except BaseException:
        # Keep what was learned: a resumed run continues from the last completed step.
        if completed > saved:
            _save(out, completed, trainer, optimizer, scaler, rng_done, meta)
        raise
    return _publish(trainer, cfg, out, meta, terms, start, clock)


def _step(trainer, optimizer, scaler, batches, generator, step: int, lr: float,
          max_grad_norm: float = 0.0) -> dict[str, float]:
    """One optimizer step over ``batches`` (gradient accumulation: their mean gradient);
    returns the terms averaged over them. With ``max_grad_norm`` the accumulated gradient is
    clipped to that norm before the step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    averaged: dict[str, float] = {}
    for index in batches:
        terms = trainer.losses(index, generator)
        total = terms["total"]
        if not torch.isfinite(total):
            raise ModelError(
                "training diverged at step %(step)s (loss %(loss)s): lower the learning rate "
                "or the DomainStudio weights, or keep ds_max_timestep small",
                step=step, loss=total.item(),
            )
        scaler.scale(total / len(batches)).backward()
        for name, value in terms.items():
            averaged[name] = averaged.get(name, 0.0) + float(value.detach()) / len(batches)
    if max_grad_norm:
        # the DomainStudio weights (100 / 100 / 0.1 for text-to-image) make rare steps with
        # huge gradients; clipping keeps one such step from undoing the adaptation. It acts on
        # the accumulated gradient, unscaled first so the norm is the true one
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    trainer.after_step()
    return averaged


def _restore(state, trainer, optimizer, scaler, generator) -> int:
    trainer.load_trainable_state(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None and state.get("ema"):
        trainer.ema.load_state_dict(state["ema"])
    set_rng_state(generator, state["rng"])
    return int(state["step"])


def _save(out, step, trainer, optimizer, scaler, rng, meta) -> None:
    save_atomic({
        "step": step, "weights": trainer.trainable_state(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "rng": rng, "meta": meta,
    }, out / STATE_FILE)
    log.info("run.checkpoint.saved step=%d", step)


def _previews(trainer, base, cfg, device, amp, completed: int) -> list[Image.Image] | None:
    if not cfg.preview_every or not cfg.num_previews:
        return None
    if completed % cfg.preview_every and completed != cfg.steps:
        return None
    prompt = cfg.prompt(cfg.instance_prompt) if base.is_text_to_image else None
    # half-precision frozen weights beside fp32 LoRA weights need autocast, whatever was asked
    precision = sampling_dtype(cfg.sampling_precision, device) or (amp if frozen_in_half(cfg, amp) else None)
    with trainer.sampling_weights():
        images = sample_with(base, cfg.num_previews, prompt=prompt, seed=cfg.seed, device=device,
                             batch_size=cfg.num_previews, resolution=cfg.resolution, precision=precision)
    return [g.image for g in images]


def _publish(trainer, cfg, out: Path, meta, terms, start, clock) -> AdaptResult:
    staging = out / ".saving"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    trainer.save_model(staging)
    publish(staging, out, {**meta, "kind": trainer.base.kind, "steps": cfg.steps, "losses": terms,
                           "resolution": cfg.resolution, "channels": trainer.base.channels,
                           "default_sampler": trainer.base.default_sampler})
    log.info("run.finished steps=%d output=%s", cfg.steps, out)
    return AdaptResult(out, cfg.steps, trainer.base.kind, cfg.mode, terms, resumed_from=start,
                       elapsed_seconds=clock.elapsed())


class _Clock:
    """ETA from the steps this process ran (a resumed run does not count earlier ones)."""

    def __init__(self, start: int, total: int):
        self.start, self.total, self.t0 = start, total, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self, done: int) -> float | None:
        ran = done - self.start
        if ran <= 0:
            return None
        return self.elapsed() / ran * (self.total - done)
