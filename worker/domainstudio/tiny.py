"""Builtin models built in code: seeded random weights, tiny, for tests and smoke runs.

They follow diffusers' ``get_dummy_components`` habit: real classes, real shapes, just
small. Nothing here is downloaded; the CLIP tokenizer's vocabulary is the 256 byte
symbols of byte-level BPE, so any text tokenizes (one token per character).
"""
from __future__ import annotations

import torch

SD_SCHEDULER = dict(  # Stable Diffusion 1.x training schedule
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
)


def _seeded():
    """Build modules under a fixed seed without touching the caller's RNG state."""
    return torch.random.fork_rng(devices=[])


def byte_level_vocab() -> dict[str, int]:
    """Byte-to-unicode table of GPT-2/CLIP byte-level BPE, each symbol also with </w>."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in codes]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[s] = len(vocab)
    return vocab


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=byte_level_vocab(), merges=[])
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_ddpm():
    """Unconditional UNet2DModel, 32x32 RGB, and a linear DDPM schedule."""
    from diffusers import DDPMScheduler, UNet2DModel

    with _seeded():
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    return unet, DDPMScheduler(num_train_timesteps=1000)


def sd_components(size: str = "tiny"):
    """Stable-Diffusion-shaped components with random weights.

    ``tiny``: 32 px images, 16x16 latents, for tests. ``small``: 64 px, two attention
    levels, for CPU benchmarks. ``sd15``: the SD-1.5 UNet/VAE/text-encoder shapes at
    512 px (860M UNet parameters), for GPU benchmarks only.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shapes = _SD_SHAPES[size]
    tokenizer = tiny_tokenizer()
    with _seeded():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**shapes["unet"])
        vae = AutoencoderKL(**shapes["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=77, **shapes["text"],
        ))
    return {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
        "scheduler": DDPMScheduler(**SD_SCHEDULER), "resolution": shapes["resolution"],
    }


def sdxl_components():
    """SDXL-shaped components with random weights: two CLIP text encoders (the second with a
    projection, whose pooled output and the six added time ids feed the UNet's "text_time"
    embedding), 32 px images, 16x16 latents. The shapes follow diffusers' own SDXL tests."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()

    def text(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, max_position_embeddings=77, hidden_size=hidden,
            intermediate_size=2 * hidden, num_attention_heads=4, num_hidden_layers=2, projection_dim=hidden,
        )

    with _seeded():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**_SDXL_UNET)
        vae = AutoencoderKL(**_SD_SHAPES["tiny"]["vae"])
        # Two widths, as SDXL's CLIP-L (768) and OpenCLIP bigG (1280): single-file loading
        # tells the encoders apart by their width.
        text_encoder = CLIPTextModel(text(32))
        text_encoder_2 = CLIPTextModelWithProjection(text(48))
    return {
        "unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2, "tokenizer_2": tiny_tokenizer(),
        "scheduler": DDPMScheduler(**SD_SCHEDULER), "resolution": 32,
    }


_SDXL_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=(2, 4),
    use_linear_projection=True, transformer_layers_per_block=(1, 2),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=80,  # the two text encoders' hidden states side by side (32 + 48)
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 48,  # six time ids + the pooled text embedding
)


_SD_SHAPES = {
    "tiny": {
        "resolution": 32,
        "unet": dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
            block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ),
        "text": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2),
    },
    "small": {
        "resolution": 64,
        "unet": dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(64, 128, 128), norm_num_groups=32, cross_attention_dim=64,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
            block_out_channels=(32, 64, 64), norm_num_groups=32, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        ),
        "text": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2),
    },
    "sd15": {
        "resolution": 512,
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    },
}
