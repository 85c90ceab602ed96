"""Single-file checkpoints (.safetensors / .ckpt of SD 1.x, 2.x, SDXL), as A1111, Forge,
ComfyUI and Civitai users keep them, loaded through diffusers' ``from_single_file``.

diffusers would fetch the matching diffusers configs from the model hub; we hand it our
own instead (``single_file_configs/<family>/``: the UNet, VAE, text-encoder and scheduler
configs of SD 1.5, SD 2.1-v and SDXL base), so loading never touches the network. The CLIP
tokenizers, which a checkpoint does not hold, are built from CLIP's BPE merges shipped
beside them (MIT, CLIP_LICENSE.txt). An administrator can point
``DOMAINSTUDIO_SINGLE_FILE_CONFIGS`` at a folder of their own ``sd1/``, ``sd2/``, ``sdxl/``
diffusers folders (configs and tokenizers, no weights needed), e.g. for an SD 2.x base
(512 px, epsilon) model instead of 2.1-v.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from .errors import ModelError
from .model_kinds import SD2, SDXL, SUPPORTED_KINDS, single_file_family

CONFIGS_ENV = "DOMAINSTUDIO_SINGLE_FILE_CONFIGS"
PACKAGE_CONFIGS = Path(__file__).parent / "single_file_configs"
CLIP_BPE = PACKAGE_CONFIGS / "clip_bpe_simple_vocab_16e6.txt.gz"


def configs_folder(family: str) -> Path:
    root = Path(os.environ.get(CONFIGS_ENV) or PACKAGE_CONFIGS).expanduser()
    folder = root / family
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            "no diffusers configs for %(family)s single files in %(folder)s (model_index.json missing); "
            "unset %(env)s to use the ones DomainStudio ships, or put a diffusers folder there",
            family=family, folder=str(folder), env=CONFIGS_ENV,
        )
    return folder


def load_single_file(path: Path) -> tuple[dict, str, str]:
    """The components of one checkpoint file (unet, vae, text encoder(s), tokenizer(s),
    scheduler), its fingerprint and a description; offline, with a clear error for
    anything else. models.load_base_model makes the BaseModel."""
    family = single_file_family(path) or _family_of_pickle(path)
    folder = configs_folder(family)
    pipe = _from_single_file(path, family, folder)
    parts = dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                 scheduler=_training_scheduler(pipe.scheduler))
    if family == SDXL:
        parts.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
    return parts, _file_fingerprint(path), f"{type(pipe).__name__} from the single file {path.name}"


def _from_single_file(path: Path, family: str, folder: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline if family == SDXL else StableDiffusionPipeline
    has_tokenizer = any((folder / "tokenizer" / name).is_file() for name in ("vocab.json", "tokenizer.json"))
    extra = {} if has_tokenizer else clip_tokenizers(family)
    if family != SDXL:
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        return pipeline.from_single_file(str(path), config=str(folder), local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(
            "could not read %(path)s as a %(family)s checkpoint (%(error)s: %(detail)s). "
            "Supported kinds: %(supported)s",
            path=str(path), family=family, error=type(exc).__name__, detail=str(exc)[:300], supported=SUPPORTED_KINDS,
        ) from exc


def _family_of_pickle(path: Path) -> str:
    """A .ckpt's keys are known once it is unpickled (weights only: no code runs)."""
    import torch

    from .model_kinds import family_from_keys

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a broken or foreign pickle: the answer is the same
        raise ModelError("%(path)s is not a readable .ckpt checkpoint (%(error)s: %(detail)s)",
                         path=str(path), error=type(exc).__name__, detail=str(exc)[:200]) from exc
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return family_from_keys(path, {k: list(getattr(v, "shape", [])) for k, v in state.items()})


def _training_scheduler(scheduler):
    from diffusers import DDPMScheduler

    # Training adds noise the DDPM way whatever sampler the config names.
    return DDPMScheduler.from_config(scheduler.config)


def clip_tokenizers(family: str) -> dict:
    """CLIP's BPE tokenizer(s) for the family: SD 2.x and SDXL's second encoder (OpenCLIP) pad with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()

    def tokenizer(pad: str):
        t = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad)
        t.model_max_length = 77
        return t

    if family == SDXL:
        return {"tokenizer": tokenizer("<|endoftext|>"), "tokenizer_2": tokenizer("!")}
    return {"tokenizer": tokenizer("!" if family == SD2 else "<|endoftext|>")}


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, built as CLIP's own tokenizer builds them: the 256 byte
    symbols, the same with </w>, one token per merge, then the two special tokens."""
    from .tiny import byte_level_vocab

    lines = gzip.open(CLIP_BPE).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = [s for s in byte_level_vocab() if not s.startswith("<|")]
    tokens = symbols + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _file_fingerprint(path: Path) -> str:
    """Name, size and the first MiB: tells files apart without hashing gigabytes."""
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return "sha256:" + digest.hexdigest()[:16]
