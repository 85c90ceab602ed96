"""Pieces every adaptation loop shares: device choice, EMA, RNG and training state on disk."""
from __future__ import annotations

import contextlib
import os
import pickle
import random
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import ModelError
from .layout import STATE_FILE


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "device %(device)s was requested but torch sees no CUDA GPU (torch %(version)s). "
            "Use --device cpu, or install the CUDA build of torch on this worker (README: GPU workers).",
            device=name, version=str(torch.__version__),
        )
    return device


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only pays on a GPU; on the CPU it is off unless asked for."""
    if setting == "no" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[setting]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sampling_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Half precision for sampling: fp16 on a GPU unless asked otherwise (2x the images/s of
    fp32, and inference needs no loss scaling); off on the CPU, where fp16 is slow."""
    if setting == "no" or (setting == "auto" and device.type != "cuda"):
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}[setting]


# -- memory and speed options (AdaptConfig: optimizer, lr_warmup_steps, attention, torch_compile)
COMPILE_BACKEND = "inductor"  # tests swap in "eager": inductor takes minutes to compile on a CPU


def check_optimizer(name: str, device: torch.device) -> None:
    """Refuse adamw8bit before any work is done where bitsandbytes cannot run it."""
    if name != "adamw8bit":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "optimizer adamw8bit needs the bitsandbytes package on this worker (pip install bitsandbytes, "
            "CUDA GPUs only); or use optimizer adamw (%(detail)s)", detail=str(exc)) from exc
    if device.type != "cuda":
        raise ModelError("optimizer adamw8bit runs on CUDA GPUs only, not on %(device)s; use optimizer adamw",
                         device=str(device))


def make_optimizer(params: list[torch.nn.Parameter], name: str, learning_rate: float) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=learning_rate, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)


def warmup_learning_rate(learning_rate: float, warmup_steps: int, step: int) -> float:
    """Learning rate of 0-based optimizer step ``step``: linear from lr/warmup up to lr at
    step warmup-1, then constant (diffusers' constant_with_warmup)."""
    if warmup_steps <= 0:
        return learning_rate
    return learning_rate * min(1.0, (step + 1) / warmup_steps)


def set_attention(modules: Iterable, kind: str) -> None:
    """sdpa: PyTorch's fused scaled_dot_product_attention (diffusers' AttnProcessor2_0), which
    never holds the [tokens x tokens] matrix; classic: the matrix in full (AttnProcessor)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for module in modules:
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def hold_frozen_weights_in(modules: Iterable, dtype: torch.dtype) -> None:
    """Frozen weights in the autocast dtype, trained ones (LoRA) in fp32, as diffusers'
    training scripts hold them: half the memory of the frozen UNet, and autocast computes in
    that dtype anyway. The VAE stays in fp32 (SDXL's overflows in fp16)."""
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)


def compile_module(module: torch.nn.Module) -> None:
    """torch.compile in place (nn.Module.compile): parameter names and state_dict keys stay
    as they are, so checkpoints and LoRA files do not change."""
    module.compile(backend=COMPILE_BACKEND)


class EMA:
    """Exponential moving average of a set of parameters, kept in fp32 on their device."""

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.params = dict(named_params)
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.params)
        current = [self.params[n].detach().float() for n in names]
        torch._foreach_lerp_([self.shadow[n] for n in names], current, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the EMA weights in (for previews and the saved model), then swap back."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


class TrainableWeights:
    """What the loop needs of a trainer besides its losses: EMA upkeep and the weights
    that go into the training state. Subclasses set ``named_params`` and ``ema``."""

    named_params: list[tuple[str, torch.nn.Parameter]]
    ema: "EMA | None"

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update()

    def sampling_weights(self):
        """Context in which the UNet holds the weights used for previews and the saved model."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def trainable_state(self) -> dict:
        return {n: p.detach().cpu() for n, p in self.named_params}

    def load_trainable_state(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(state[n])


def _numpy_state_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        # plain Python values (not numpy's array), so that the state loads with weights_only=True
        "numpy": _numpy_state_plain(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# what the training states written before the numpy RNG state was kept as plain values hold
# (numpy's array reconstruction, nothing that runs code)
_NUMPY_GLOBALS = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct, np.ndarray, np.dtype,
                  type(np.dtype(np.uint32))]


def load_state(path: Path) -> dict:
    """The training state to resume from. It may come from object storage (a run resumed on
    another worker), so only tensors and plain values are read (weights_only=True): a
    crafted file cannot run code on the worker."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelError("the training state %(path)s is unreadable (%(detail)s); delete it to start over",
                         path=str(path), detail=str(exc)) from exc
