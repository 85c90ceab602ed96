"""Train, export and load the text-to-image demo model ``builtin:fmnist-sd-32``.

A Stable-Diffusion-shaped model small enough to train on two CPU cores: an ``AutoencoderKL``
(32x32 RGB <-> 8x8x4 latents), a CLIP text encoder with the byte-level tokenizer of
``tiny.py`` (any text tokenizes), a ``UNet2DConditionModel`` with cross-attention and SD's
scaled-linear schedule. It is trained on every Fashion-MNIST class except sneaker, with
captions in plain words, so that "shoe" is a word it knows (sandals and ankle boots) while
a sneaker is a product it has never seen: the few-shot task our users have, in miniature.

Two stages, each resumable from its checkpoint in ``--state-dir``:
1. the autoencoder (L1 + a small KL term), then the latents' scale is measured;
2. the UNet and the text encoder together (epsilon MSE, t ~ U{0..999} per sample, 10% empty
   captions for classifier-free guidance), EMA weights exported.

    domainstudio pretrain-sd --threads 1   # 1,500 autoencoder + 4,000 UNet steps
    domainstudio pretrain-sd --export-only
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import fmnist
from .pretrain import (_ema_update, _exit_on_sigterm, _fmt_seconds, _log, _save_atomic, _zero_ema,
                       ema_weights)
from .demo_words import (CLASS_WORD_ALIASES, CLASS_WORDS, DEMO_DEFAULT_SETTINGS, SHOE_CLASSES,  # noqa: F401
                         TEMPLATES, article, class_prompt, demo_vocabulary)
from .tiny import SD_SCHEDULER, tiny_tokenizer

MODEL_NAME = "fmnist-sd-32"
DEFAULT_FOLDER = Path(__file__).resolve().parent / "weights" / MODEL_NAME
DEFAULT_STATE_DIR = Path("var/pretrain-sd")
RESOLUTION = 32
# Sneaker (7) stays out: the class a team's few photos will bring.
TRAIN_CLASSES = tuple(c for c in range(10) if c != 7)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=RESOLUTION,
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
# Sized for two CPU cores (measured at batch 64, one thread: 0.63 s a step; cross-attention
# at 8x8 as well would cost 1.1 s, 19M parameters 3.5 s): cross-attention at the 4x4 level
# and in the middle block, where 16 queries make the 77 text tokens cheap.
UNET_CONFIG = dict(
    sample_size=RESOLUTION // 4, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(64, 128), norm_num_groups=32, cross_attention_dim=64,
    attention_head_dim=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2,
                   max_position_embeddings=77)


@dataclass
class PretrainSDConfig:
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    steps: int = 4000
    batch_size: int = 64
    lr: float = 3e-4
    text_lr: float = 3e-4
    ema_decay: float = 0.999
    empty_caption_rate: float = 0.1
    shoe_caption_rate: float = 0.3
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50
    max_images: int = 0  # 0: all 54,000; tests train on a few


# ---------------------------------------------------------------- captions

def caption(label: int, rng: random.Random, config: PretrainSDConfig) -> str:
    """A plain-words caption of one training image: template, class word (or "shoe"), article
    half the time (so both "a photo of a shoe" and the default class prompt "a photo of shoe"
    are known)."""
    if rng.random() < config.empty_caption_rate:
        return ""
    word = CLASS_WORDS[label]
    if label in SHOE_CLASSES and rng.random() < config.shoe_caption_rate:
        word = "shoe"
    art = article(word) if rng.random() < 0.5 else ""
    return rng.choice(TEMPLATES).format(article=art, word=word)


# ---------------------------------------------------------------- components

def build_components() -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": DDPMScheduler(**SD_SCHEDULER)}


def training_data(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, 32, 32] in [-1, 1], labels [N]) of the training classes: the grey photo on
    three channels, so the model flows through the same code as colour SD photos."""
    import numpy as np

    images, labels = fmnist.load_split(split)
    keep = np.isin(labels, TRAIN_CLASSES)
    x = fmnist.to_tensor(images[keep]).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels[keep])


def _checkpoint(state_dir: Path, name: str) -> dict | None:
    path = state_dir / name
    # our own training state, written by this module on this machine
    return torch.load(path, weights_only=False) if path.exists() else None


# ---------------------------------------------------------------- stage 1: autoencoder

def _vae_step(vae, opt, x, config: PretrainSDConfig) -> tuple[float, float]:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    kl = posterior.kl().mean()
    loss = rec + config.kl_weight * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
    opt.step()
    return rec.item(), kl.item()


def train_vae(vae, data: torch.Tensor, config: PretrainSDConfig, state_dir: Path) -> None:
    """Stage 1, resumable: ``vae.pt`` in ``state_dir`` holds weights, optimizer, step and RNG."""
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0
    ckpt = _checkpoint(state_dir, "vae.pt")
    if ckpt:
        vae.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt["elapsed_seconds"]
        gen.set_state(ckpt["data_rng"]); torch.set_rng_state(ckpt["rng"])
    if step >= config.vae_steps:
        return
    _log(f"autoencoder: steps {step}->{config.vae_steps}")

    def save(step, now):
        _save_atomic({"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "elapsed_seconds": now, "data_rng": gen.get_state(), "rng": torch.get_rng_state(),
                      "config": asdict(config)}, state_dir / "vae.pt")

    def train_step(step):
        for group in opt.param_groups:  # cosine decay to 10% over the stage
            group["lr"] = config.vae_lr * (0.55 + 0.45 * math.cos(math.pi * step / config.vae_steps))
        idx = torch.randint(len(data), (config.vae_batch_size,), generator=gen)
        return _vae_step(vae, opt, data[idx], config)

    def describe(running):
        return (f"rec {sum(r for r, _ in running) / len(running):.4f} "
                f"kl {sum(k for _, k in running) / len(running):.1f}")

    vae.train()
    _resumable_stage("autoencoder", step, config.vae_steps, elapsed, config, train_step, save, describe)


def _resumable_stage(name: str, step: int, total: int, elapsed: float, config: PretrainSDConfig,
                     train_step, save, describe) -> int:
    """The loop both stages share: ``train_step(step)`` until ``total``, a log line every
    ``log_every`` steps, ``save(step, elapsed_seconds)`` every ``checkpoint_every`` steps, at
    the end and when the loop dies (so rerunning resumes). Returns the last step."""
    t0, step0, running = time.time(), step, []
    try:
        while step < total:
            running.append(train_step(step))
            step += 1
            if step % config.log_every == 0 or step == total:
                rate = (time.time() - t0) / max(step - step0, 1)
                _log(f"{name} step {step}/{total} {describe(running)} {rate:.3f} s/step "
                     f"elapsed {_fmt_seconds(elapsed + time.time() - t0)} ETA {_fmt_seconds(rate * (total - step))}")
                running = []
            if step % config.checkpoint_every == 0:
                save(step, elapsed + time.time() - t0)
    except BaseException:
        save(step, elapsed + time.time() - t0)
        _log(f"{name} interrupted at step {step}; checkpoint saved, rerun to resume")
        raise
    save(step, elapsed + time.time() - t0)
    return step


@torch.no_grad()
def encode_dataset(vae, data: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Posterior mean and std of every image, [N, 2, 4, 8, 8]: the UNet stage samples from these
    instead of running the encoder every step."""
    vae.eval()
    out = []
    for chunk in data.split(batch):
        dist = vae.encode(chunk).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1))
    return torch.cat(out)


def latent_scale(latents: torch.Tensor) -> float:
    """1 / std of the latents, as SD's scaling_factor: the UNet sees unit-variance latents."""
    return float(1.0 / latents[:, 0].std())


# ---------------------------------------------------------------- stage 2: UNet + text encoder

def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def _unet_step(c: dict, opt, latents: torch.Tensor, labels: torch.Tensor, rng: random.Random,
               gen: torch.Generator, scale: float, config: PretrainSDConfig) -> float:
    idx = torch.randint(len(latents), (config.batch_size,), generator=gen)
    mean, std = latents[idx, 0], latents[idx, 1]
    x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * scale
    captions = [caption(int(label), rng, config) for label in labels[idx]]
    # Few distinct captions: encode each once per step, then index (the text encoder still
    # gets every caption's gradient).
    unique = sorted(set(captions))
    states = c["text_encoder"](tokenize(c["tokenizer"], unique))[0]
    cond = states[torch.tensor([unique.index(p) for p in captions])]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(c["scheduler"].config.num_train_timesteps, (len(x0),), generator=gen)
    pred = c["unet"](c["scheduler"].add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    loss = F.mse_loss(pred, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    opt.step()
    return loss.item()


def _trained_modules(c: dict) -> dict:
    return {"unet": c["unet"], "text_encoder": c["text_encoder"]}


def _state_dict(c: dict) -> dict:
    return {f"{name}.{k}": v for name, m in _trained_modules(c).items() for k, v in m.state_dict().items()}


class _Both(torch.nn.Module):
    """UNet and text encoder as one module, so one EMA and one state dict cover both."""

    def __init__(self, c: dict):
        super().__init__()
        self.unet, self.text_encoder = c["unet"], c["text_encoder"]


def train_unet(c: dict, latents: torch.Tensor, labels: torch.Tensor, scale: float,
               config: PretrainSDConfig, state_dir: Path) -> dict:
    """Stage 2, resumable (``unet.pt``). Returns the bias-corrected EMA state dict of both modules."""
    both = _Both(c)
    opt = torch.optim.AdamW([
        {"params": c["unet"].parameters(), "lr": config.lr},
        {"params": c["text_encoder"].parameters(), "lr": config.text_lr},
    ], weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed + 1)
    rng = random.Random(config.seed)
    ema, step, elapsed = _zero_ema(both), 0, 0.0
    ckpt = _checkpoint(state_dir, "unet.pt")
    if ckpt:
        both.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])
        ema, step, elapsed = ckpt["ema"], ckpt["step"], ckpt["elapsed_seconds"]
        gen.set_state(ckpt["data_rng"]); rng.setstate(ckpt["caption_rng"]); torch.set_rng_state(ckpt["rng"])
        _log(f"resumed the UNet stage at step {step}")

    def save(step, now):
        _save_atomic({"model": both.state_dict(), "optimizer": opt.state_dict(), "ema": ema, "step": step,
                      "elapsed_seconds": now, "data_rng": gen.get_state(), "caption_rng": rng.getstate(),
                      "rng": torch.get_rng_state(), "config": asdict(config), "latent_scale": scale},
                     state_dir / "unet.pt")

    def train_step(step):
        loss = _unet_step(c, opt, latents, labels, rng, gen, scale, config)
        _ema_update(ema, both, config.ema_decay)
        return loss

    _log(f"UNet + text encoder: {sum(p.numel() for p in c['unet'].parameters()) / 1e6:.2f}M + "
         f"{sum(p.numel() for p in c['text_encoder'].parameters()) / 1e6:.2f}M params, "
         f"{torch.get_num_threads()} threads, steps {step}->{config.steps}")
    both.train()
    step = _resumable_stage("unet", step, config.steps, elapsed, config, train_step, save,
                            lambda running: f"loss {sum(running) / len(running):.4f}")
    return ema_weights(ema, config.ema_decay, step)


# ---------------------------------------------------------------- export / load

def export(state_dir: str | Path = DEFAULT_STATE_DIR, folder: str | Path = DEFAULT_FOLDER) -> Path:
    """Write the diffusers pipeline folder (float32 safetensors, ~19 MB: a pipeline saved in fp16
    loads its text encoder in fp16 under transformers 5 and then fails in a float32 UNet).

    Works mid-training too (the EMA of the steps so far), so a grid can be looked at early.
    """
    from diffusers import StableDiffusionPipeline

    state_dir, folder = Path(state_dir), Path(folder)
    vae_ckpt, unet_ckpt = _checkpoint(state_dir, "vae.pt"), _checkpoint(state_dir, "unet.pt")
    if vae_ckpt is None or unet_ckpt is None:
        raise FileNotFoundError(f"need vae.pt and unet.pt in {state_dir}: train first")
    c = build_components()
    c["vae"].load_state_dict(vae_ckpt["model"])
    scale = float(unet_ckpt["latent_scale"])
    c["vae"].register_to_config(scaling_factor=scale)
    both = _Both(c)
    both.load_state_dict(ema_weights(unet_ckpt["ema"], unet_ckpt["config"]["ema_decay"], unet_ckpt["step"]))
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                   unet=c["unet"], scheduler=c["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    recipe = dict(unet_ckpt["config"], vae_steps_done=vae_ckpt["step"], steps_done=unet_ckpt["step"],
                  vae_train_seconds=round(vae_ckpt["elapsed_seconds"]),
                  train_seconds=round(unet_ckpt["elapsed_seconds"]), latent_scale=scale,
                  data="Fashion-MNIST train, every class but sneaker (7)",
                  objective="VAE: L1 + MSE + kl_weight * KL; UNet: epsilon MSE, t ~ U{0..999} per sample",
                  ema="exported, bias-corrected", captions=list(TEMPLATES), class_words=CLASS_WORDS)
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _log(f"exported {MODEL_NAME} at UNet step {unet_ckpt['step']} to {folder} ({size / 1e6:.1f} MB)")
    return folder


def pretrain_sd(config: PretrainSDConfig | None = None, state_dir: str | Path = DEFAULT_STATE_DIR,
                folder: str | Path = DEFAULT_FOLDER) -> Path:
    """Both stages (each resumes from its checkpoint), then the export."""
    config = config or PretrainSDConfig()
    state_dir = Path(state_dir)
    torch.manual_seed(config.seed)
    c = build_components()
    data, labels = training_data("train")
    if config.max_images:
        data, labels = data[:config.max_images], labels[:config.max_images]
    _log(f"pretrain-sd: {len(data)} images of classes {list(TRAIN_CLASSES)}")
    train_vae(c["vae"], data, config, state_dir)
    latents = encode_dataset(c["vae"], data)
    scale = latent_scale(latents)
    _log(f"latents {tuple(latents.shape[2:])}, scale {scale:.4f}")
    c["vae"].requires_grad_(False)
    train_unet(c, latents, labels, scale, config, state_dir)
    return export(state_dir, folder)


# ---------------------------------------------------------------- command line

def _run(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_only:
        export(args.state_dir, args.out)
        return 0
    config = PretrainSDConfig(vae_steps=args.vae_steps, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                              log_every=args.log_every)
    pretrain_sd(config, args.state_dir, args.out)
    return 0


def add_cli(subparsers) -> None:
    d = PretrainSDConfig()
    p = subparsers.add_parser("pretrain-sd", help="train the builtin:fmnist-sd-32 text-to-image demo model")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help="autoencoder steps (stage 1)")
    p.add_argument("--steps", type=int, default=d.steps, help="UNet + text encoder steps (stage 2; a resumed run continues to this)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="checkpoint folder")
    p.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help="exported pipeline folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--export-only", action="store_true", help="export the checkpoints' EMA and stop")
    p.set_defaults(func=_run)
