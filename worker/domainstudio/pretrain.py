"""Train, export and load the demo source model ``builtin:fmnist-ddpm-32``.

An unconditional DDPM on the seven non-footwear Fashion-MNIST classes, so that shoes are a
domain it has never seen and few-shot adaptation to them can be measured. The loop follows
nanoGPT's shape: one readable loop, a checkpoint holding model, EMA, optimizer, step and RNG
state, written atomically so that a killed run resumes where it stopped.

    python -m worker.domainstudio.pretrain pretrain --steps 6000
    python -m worker.domainstudio.pretrain pretrain --export-only   # export the last checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import fmnist
from .training import autocast

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "fmnist-ddpm-32.safetensors"
# Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
# itself"): the model's samples are steered away from the errors of a weaker model of the
# same data, eps = guide + AUTOGUIDANCE * (model - guide). The guide is this model's own
# first weights, 3,000 steps (it then had 10,000 more). On 2,048 images no choice was made on
# it brings the share the classifier is unsure of from 11.9% to 9.6% with the classifier-
# feature FID to the photos unchanged (14.9 / 15.4), where longer training, small-t weighting
# and a wider UNet had stalled (benchmarks/results/fmnist-source.md). Above 2 it sharpens the
# clothes past the photos' own texture; a smaller guide games the classifier (see there).
GUIDE_WEIGHTS = WEIGHTS_DIR / "fmnist-ddpm-32-guide.safetensors"
AUTOGUIDANCE = 2.0
# The model's own sampler. Its noise prediction at small t is rough: the deterministic
# samplers (DPM-Solver++, DDIM) carry that error into speckled images, the stochastic
# DPM-Solver++ washes it out at the same 25 steps (benchmarks/results/fmnist-source.md).
SAMPLER = "sde-dpmsolver++"
DEFAULT_STATE_DIR = Path("var/pretrain")

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    # Attention only at the 8x8 level: cheap on a CPU, and enough for global shape.
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear",
                        beta_start=1e-4, beta_end=0.02, clip_sample=True)


@dataclass
class PretrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-4
    ema_decay: float = 0.999
    seed: int = 0
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 50
    classes: tuple = field(default_factory=lambda: fmnist.NON_FOOTWEAR_CLASSES)
    # Share of each batch whose t is drawn below small_t_max instead of from all 1,000: the
    # first 3,000 steps left the small-t noise prediction undertrained (speckled samples,
    # benchmarks/results/fmnist-source.md), and the last sampler steps are all small t.
    small_t_share: float = 0.0
    small_t_max: int = 250
    # exported weights to start from when the state folder has no checkpoint (fine-tuning
    # the shipped model further without its original training state)
    init_from: str = ""
    # Cosine decay of the learning rate from ``lr`` to ``lr_final`` over the run's steps (None:
    # constant). A decayed rate settles the weights where a constant one keeps them jittering,
    # which an EMA only partly smooths out.
    lr_final: float | None = None
    # bfloat16 autocast for the forward pass (the weights and optimizer stay float32): 1.25x
    # faster a step on a 2-core CPU with AMX, 1.7x for a 4x wider UNet (measured 2026-12-02);
    # 14x slower on an AVX2-only AMD EPYC, which emulates it (20 s a step against 1.4, 2026-12-03).
    bf16: bool = False
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's epsilon loss times
    # min(SNR, gamma) / SNR, so the nearly clean small-t samples, whose large losses dominate
    # the gradient, weigh less and the mid noise levels where shapes form weigh more (None: off).
    min_snr_gamma: float | None = None
    # The UNet's width per resolution (32x32, 16x16, 8x8). The shipped model is (32, 64, 64),
    # 1.1M parameters; (48, 96, 96) has 2.5M (1.6x a step with --bf16) and, trained from
    # scratch for 8,000 steps, sampled no better (benchmarks/results/fmnist-source.md);
    # (64, 128, 128) has 4.4M and costs about 2x a step.
    block_out_channels: tuple = UNET_CONFIG["block_out_channels"]
    # "cuda" on a GPU machine; the data sampling stays on a CPU generator, so a run draws the
    # same batches wherever it trains and resumes on either kind of machine.
    device: str = "cpu"


def min_snr_weights(sched: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights min(SNR_t, gamma) / SNR_t for epsilon prediction."""
    alpha_bar = sched.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def unet_config(block_out_channels=UNET_CONFIG["block_out_channels"]) -> dict:
    return dict(UNET_CONFIG, block_out_channels=tuple(block_out_channels))


def build_unet(block_out_channels=UNET_CONFIG["block_out_channels"]) -> UNet2DModel:
    from diffusers import UNet2DModel  # imported here: `domainstudio --help` stays fast

    return UNet2DModel(**unet_config(block_out_channels))


def build_scheduler() -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


# ---------------------------------------------------------------- checkpointing

def _save_atomic(obj, path: Path) -> None:
    """Write to a temporary file, then rename: a kill mid-write never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state_dir: Path, unet, ema: dict, opt, step: int, gen: torch.Generator,
                    config: PretrainConfig, elapsed: float) -> None:
    _save_atomic({
        "model": unet.state_dict(), "ema": ema, "optimizer": opt.state_dict(), "step": step,
        "rng": torch.get_rng_state(), "data_rng": gen.get_state(),
        "config": asdict(config), "elapsed_seconds": elapsed, "ema_kind": "zero-init",
    }, Path(state_dir) / "checkpoint.pt")


def load_checkpoint(state_dir: Path) -> dict | None:
    path = Path(state_dir) / "checkpoint.pt"
    # map_location: a checkpoint written on a GPU machine resumes or exports on a CPU one
    return torch.load(path, weights_only=False, map_location="cpu") if path.exists() else None


# ---------------------------------------------------------------- export / load

def export_weights(ema: dict, out: Path, recipe: dict,
                   block_out_channels=UNET_CONFIG["block_out_channels"]) -> Path:
    """Write the EMA weights as fp16 safetensors plus a JSON file with configs and recipe."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.items()}
    save_file(tensors, str(out), metadata={"format": "pt", "model": "fmnist-ddpm-32"})
    meta = {"unet": {k: list(v) if isinstance(v, tuple) else v
                     for k, v in unet_config(block_out_channels).items()},
            "scheduler": SCHEDULER_CONFIG, "recipe": recipe}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_fmnist_ddpm(path: str | Path | None = None, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[UNet2DModel, DDPMScheduler]:
    """The shipped source model ``builtin:fmnist-ddpm-32``: (UNet2DModel in eval mode, DDPMScheduler).

    Parameters keep requires_grad=True: the adaptation loop trains whatever requires grad.

    Weights are stored in fp16 to keep the repository small and cast to ``dtype`` here, since
    fp16 on a CPU is slow and training needs float32.
    """
    path = Path(path) if path else DEFAULT_WEIGHTS
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"fmnist-ddpm-32 weights not found: need {path} and {meta_path}")
    meta = json.loads(meta_path.read_text())
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(**meta["unet"])
    unet.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(path)).items()})
    unet.to(device)
    if dtype != torch.float32:  # .to(dtype) even as a no-op makes diffusers print a warning
        unet.to(dtype)
    unet.eval()
    return unet, DDPMScheduler(**meta["scheduler"])


@torch.no_grad()
def sample_images(unet: UNet2DModel, scheduler: DDPMScheduler, n: int = 64, steps: int = 50,
                  seed: int = 0) -> torch.Tensor:
    """n samples [n, 1, 32, 32] in [-1, 1] with DDIM (eta 0); enough to judge the model by eye."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    x = torch.randn((n, 1, 32, 32), generator=torch.Generator().manual_seed(seed))
    for t in ddim.timesteps:
        x = ddim.step(unet(x, t).sample, t, x).prev_sample
    return x.clamp(-1, 1)


def save_sample_grid(path: str | Path, weights: str | Path | None = None, n: int = 64, steps: int = 50,
                     seed: int = 0) -> Path:
    """Write an 8-column PNG grid of samples from the exported weights."""
    unet, scheduler = load_fmnist_ddpm(weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmnist.image_grid(sample_images(unet, scheduler, n, steps, seed), nrow=8, scale=3).save(path)
    return path


# ---------------------------------------------------------------- training

def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


@torch.no_grad()
def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    for name, p in model.state_dict().items():
        if p.dtype.is_floating_point:
            ema[name].mul_(decay).add_(p, alpha=1 - decay)
        else:
            ema[name].copy_(p)


def _zero_ema(model: torch.nn.Module) -> dict:
    """An EMA that starts from zeros, so that ``ema_weights`` can remove the start-up bias.

    Started from the random initial weights instead, an EMA with decay 0.999 still holds
    0.999^n of them after n steps: 37% at 1,000 steps, 5% at 3,000, enough to spoil samples
    of a run this short.
    """
    return {k: torch.zeros_like(v) if v.dtype.is_floating_point else v.clone()
            for k, v in model.state_dict().items()}


def ema_weights(ema: dict, decay: float, step: int) -> dict:
    """Bias-corrected EMA (as Adam's moments): the average of the weights after steps 1..n
    with weights proportional to decay^(n - k), i.e. ema / (1 - decay^n)."""
    if step == 0:
        raise ValueError("no training step yet: the EMA is empty")
    scale = 1.0 / (1.0 - decay ** step)
    return {k: v * scale if v.dtype.is_floating_point else v for k, v in ema.items()}


def _to_zero_ema(ema: dict, initial: dict, decay: float, step: int) -> dict:
    """Convert an EMA started from the initial weights (older checkpoints) to a zero-started one."""
    return {k: v - decay ** step * initial[k] if v.dtype.is_floating_point else v for k, v in ema.items()}


def _training_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: name cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU that torch can use "
                         "(a CPU build of torch, or no driver); train with --device cpu")
    return device


def _width(config: dict) -> tuple:
    """The UNet width a saved config names; configs from before --channels are the shipped one's."""
    return tuple(config.get("block_out_channels", UNET_CONFIG["block_out_channels"]))


def _check_same_width(config: PretrainConfig, found, where: str, fix: str) -> None:
    """A width mismatch would otherwise surface as a wall of tensor-size errors."""
    if tuple(found) != tuple(config.block_out_channels):
        raise ValueError(f"{where} holds a UNet of channels {tuple(found)}, not the "
                         f"{tuple(config.block_out_channels)} asked for: pass --channels "
                         f"{','.join(map(str, found))} to continue it, or {fix}")


def learning_rate(config: PretrainConfig, step: int) -> float:
    """The rate for the step after ``step`` steps: constant, or cosine from lr to lr_final."""
    if config.lr_final is None:
        return config.lr
    progress = min(step / max(config.steps, 1), 1.0)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1 + math.cos(math.pi * progress))


def _train_step(unet, sched, opt, data, gen, config: PretrainConfig, step: int) -> float:
    for group in opt.param_groups:  # from the step count, so a resumed run continues the schedule
        group["lr"] = learning_rate(config, step)
    device = data.device
    idx = torch.randint(len(data), (config.batch_size,), generator=gen)
    x0 = data[idx.to(device)]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    small = round(config.small_t_share * len(t))
    if small:
        t[:small] = torch.randint(config.small_t_max, (small,), generator=gen)
    noise, t = noise.to(device), t.to(device)
    with autocast(device, torch.bfloat16 if config.bf16 else None):
        prediction = unet(sched.add_noise(x0, noise, t), t).sample
    if config.min_snr_gamma:
        per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (min_snr_weights(sched, t, config.min_snr_gamma) * per_sample).mean()
    else:
        loss = F.mse_loss(prediction.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
    opt.step()
    return loss.item()


def pretrain(config: PretrainConfig | None = None, state_dir: str | Path = DEFAULT_STATE_DIR,
             out: str | Path = DEFAULT_WEIGHTS, resume: bool = True,
             progress: Callable[[dict], None] | None = None) -> Path:
    """Train the source model (resuming from ``state_dir`` if a checkpoint is there) and export it.

    ``progress`` receives a dict (step, total, loss, elapsed_seconds, eta_seconds) every
    ``log_every`` steps; the same line is printed. Returns the exported weights path.
    """
    config = config or PretrainConfig()
    state_dir = Path(state_dir)
    device = _training_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    unet, sched = build_unet(config.block_out_channels), build_scheduler()
    ema = _zero_ema(unet)
    step, elapsed = 0, 0.0
    ckpt = load_checkpoint(state_dir) if resume else None
    if ckpt:
        _check_same_width(config, _width(ckpt["config"]), f"the checkpoint in {state_dir}",
                          "--no-resume or another --state-dir")
        ema, step, elapsed = ckpt["ema"], ckpt["step"], ckpt["elapsed_seconds"]
        if ckpt.get("ema_kind") != "zero-init":  # the seeded initial weights are rebuilt exactly
            ema = _to_zero_ema(ema, unet.state_dict(), ckpt["config"]["ema_decay"], step)
        unet.load_state_dict(ckpt["model"])
        torch.set_rng_state(ckpt["rng"]); gen.set_state(ckpt["data_rng"])
        _log(f"resumed from {state_dir / 'checkpoint.pt'} at step {step}")
    elif config.init_from:
        start_meta = Path(config.init_from).with_suffix(".json")
        start = json.loads(start_meta.read_text())["unet"] if start_meta.is_file() else {}
        _check_same_width(config, _width(start), config.init_from,
                          "another --init-from of the width asked for")
        unet.load_state_dict({k: v.float() for k, v in load_file(config.init_from).items()})
        _log(f"starting from the exported weights {config.init_from}")
    unet.to(device)
    ema = {k: v.to(device) for k, v in ema.items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr)
    if ckpt:  # after unet.to(device): the optimizer state follows its parameters' device
        opt.load_state_dict(ckpt["optimizer"])
    data = torch.cat([fmnist.class_images(config.classes, ("train",))]).to(device)
    _log(f"pretrain: {len(data)} images of classes {list(config.classes)}, "
         f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, "
         f"{torch.get_num_threads()} threads, steps {step}->{config.steps}")
    unet.train()
    t0, step0, running = time.time(), step, []
    try:
        while step < config.steps:
            running.append(_train_step(unet, sched, opt, data, gen, config, step))
            _ema_update(ema, unet, config.ema_decay)
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                now = elapsed + time.time() - t0
                rate = (time.time() - t0) / (step - step0)
                info = {"step": step, "total": config.steps, "loss": sum(running) / len(running),
                        "elapsed_seconds": now, "eta_seconds": rate * (config.steps - step)}
                running = []
                _log(f"step {step}/{config.steps} loss {info['loss']:.4f} {rate:.3f} s/step "
                     f"elapsed {_fmt_seconds(now)} ETA {_fmt_seconds(info['eta_seconds'])}")
                if progress:
                    progress(info)
            if step % config.checkpoint_every == 0:
                save_checkpoint(state_dir, unet, ema, opt, step, gen, config, elapsed + time.time() - t0)
    except BaseException:
        # Killed by Ctrl-C or an error: keep the work done so far, then let it propagate.
        save_checkpoint(state_dir, unet, ema, opt, step, gen, config, elapsed + time.time() - t0)
        _log(f"interrupted at step {step}; checkpoint saved, rerun to resume")
        raise
    elapsed += time.time() - t0
    save_checkpoint(state_dir, unet, ema, opt, step, gen, config, elapsed)
    return export_from_checkpoint(state_dir, out)


def export_from_checkpoint(state_dir: str | Path = DEFAULT_STATE_DIR,
                           out: str | Path = DEFAULT_WEIGHTS) -> Path:
    """Export the EMA weights of the checkpoint in ``state_dir`` (also works mid-training)."""
    ckpt = load_checkpoint(Path(state_dir))
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {state_dir}")
    recipe = dict(ckpt["config"], steps_done=ckpt["step"],
                  train_seconds=round(ckpt["elapsed_seconds"]),
                  threads=torch.get_num_threads(), data="Fashion-MNIST train, non-footwear classes",
                  objective="epsilon MSE, t ~ U{0..999}" + (
                      f", {ckpt['config'].get('small_t_share', 0):.0%} of each batch t ~ U{{0..{ckpt['config'].get('small_t_max', 250) - 1}}}"
                      if ckpt["config"].get("small_t_share") else "") + (
                      f", min-SNR-{ckpt['config']['min_snr_gamma']:g} weighted"
                      if ckpt["config"].get("min_snr_gamma") else ""),
                  ema="exported, bias-corrected")
    if ckpt["config"].get("init_from"):
        previous = Path(ckpt["config"]["init_from"]).with_suffix(".json")
        if previous.is_file():  # the recipe of the weights this run started from
            recipe["started_from"] = json.loads(previous.read_text()).get("recipe")
    weights = ema_weights(ckpt["ema"], ckpt["config"]["ema_decay"], ckpt["step"])
    path = export_weights(weights, Path(out), recipe, _width(ckpt["config"]))
    _log(f"exported EMA weights at step {ckpt['step']} to {path} "
         f"({path.stat().st_size / 1e6:.1f} MB)")
    return path


# ---------------------------------------------------------------- command line

def _exit_on_sigterm() -> None:
    """Turn `kill <pid>` into SystemExit, so the loop's handler saves a checkpoint first."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _run_pretrain(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_only:
        export_from_checkpoint(args.state_dir, args.out)
    else:
        config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                ema_decay=args.ema_decay, seed=args.seed,
                                checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                                small_t_share=args.small_t_share, small_t_max=args.small_t_max,
                                init_from=str(args.init_from or ""), lr_final=args.lr_final,
                                bf16=args.bf16, min_snr_gamma=args.min_snr_gamma,
                                block_out_channels=args.channels, device=args.device)
        pretrain(config, state_dir=args.state_dir, out=args.out, resume=not args.no_resume)
    if args.grid:
        _log(f"sample grid written to {save_sample_grid(args.grid, args.out)}")
    return 0


def _run_train_classifier(args: argparse.Namespace) -> int:
    from . import metric_net  # imported here so `pretrain` does not pay for it

    if args.threads:
        torch.set_num_threads(args.threads)
    metric_net.train_classifier(epochs=args.epochs, seed=args.seed, out=args.out)
    return 0


def _channels(text: str) -> tuple:
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) != 3 or any(c <= 0 or c % 8 for c in channels):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give three positive multiples of 8 (GroupNorm's 8 groups), e.g. 64,128,128")
    return channels


def add_cli(subparsers) -> None:
    """Add the ``pretrain`` and ``train-classifier`` subcommands; each sets ``func(args) -> int``."""
    p = subparsers.add_parser("pretrain", help="train the builtin:fmnist-ddpm-32 source model")
    d = PretrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help="total steps (a resumed run continues to this)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-final", type=float, default=d.lr_final,
                   help="decay the learning rate to this over the steps (cosine; default: constant)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for the forward pass (faster on CPUs with AMX or AVX-512 BF16, "
                        "much slower without: compare the logged s/step)")
    p.add_argument("--min-snr-gamma", type=float, default=d.min_snr_gamma,
                   help="weight each sample's loss by min(SNR, gamma)/SNR (5 is the paper's; default: off)")
    p.add_argument("--channels", type=_channels, default=d.block_out_channels,
                   help="UNet width at 32x32, 16x16 and 8x8, e.g. 64,128,128 (default: the shipped 32,64,64)")
    p.add_argument("--device", default=d.device, help="cpu, or cuda on a GPU machine")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--small-t-share", type=float, default=d.small_t_share,
                   help="share of each batch with t drawn below --small-t-max")
    p.add_argument("--small-t-max", type=int, default=d.small_t_max)
    p.add_argument("--init-from", type=Path, default=None,
                   help="exported weights to start from when --state-dir holds no checkpoint")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="checkpoint folder")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="exported .safetensors path")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--export-only", action="store_true", help="export the checkpoint's EMA and stop")
    p.add_argument("--grid", type=Path, default=None, help="then write a PNG grid of 64 samples here")
    p.set_defaults(func=_run_pretrain)

    c = subparsers.add_parser("train-classifier", help="train the Fashion-MNIST metric classifier")
    c.add_argument("--epochs", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--out", type=Path, default=None, help="default: the shipped weights path")
    c.set_defaults(func=_run_train_classifier)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.domainstudio.pretrain")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
