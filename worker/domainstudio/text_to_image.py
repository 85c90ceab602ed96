"""DomainStudio adaptation of Stable-Diffusion-family models, in latent space.

DreamBooth with class-prior preservation, plus the DomainStudio terms on VAE-decoded
one-step predictions (METHOD.md). How each part sees timesteps:
- the DreamBooth and prior losses draw t per sample, as diffusers' DreamBooth trainer and
  the official code's DreamBooth MSE do (one t for the whole batch made both gradients noisier);
- the DomainStudio terms get S (>= 3) noisy photo latents of their own on every step, sharing
  one t below ``pairwise_max_timestep``, as the unconditional path does: gated inside the
  training batch they ran on one step in five, at small t, where they barely act. The
  HF-MSE uses the same S predictions when that t is below ``ds_max_timestep``.
Each photo trains under its own prompt (the trigger words, then its caption, dropped now and
then) in the family's conditioning (conditioning.py: SDXL adds pooled embeddings and time
ids); the source side of the DomainStudio terms sees the class prompt. Padding and
transparent areas of a photo stay out of the DreamBooth loss and of the HF-MSE (masks).
Where the official code is expensive we are not: photo latents and prompt embeddings are
computed once; the VAE decodes only the S samples, with gradient checkpointing, and only
the adapted side keeps a graph; mixed precision on a GPU. Both of our pairwise KLs compute
KL(source || adapted), like the official code (whose HF pair renames its variables and swaps
its call arguments); we fix its HF-MSE target (the photos the predictions came from) and its
missing division by the VAE's scaling factor.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .conditioning import Conditioning, encode_prompts
from .config import AdaptConfig
from .data import load_photos
from .diffusion import predicted_clean, training_target
from .kohya import save_kohya_lora
from .layout import LORA_FILE
from .losses import (haar_high_frequency, high_frequency_mse, latent_mask, loss_terms, masked_mse,
                     pairwise_similarity_loss)
from .models import BaseModel
from .training import EMA, TrainableWeights, autocast, sampling_dtype

log = logging.getLogger("domainstudio.text_to_image")

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


class TextToImageTrainer(TrainableWeights):
    def __init__(self, base: BaseModel, cfg: AdaptConfig, device: torch.device, pixels: torch.Tensor,
                 class_pixels: torch.Tensor, amp_dtype: torch.dtype | None, masks: torch.Tensor | None = None,
                 captions: list[str] | None = None):
        self.base, self.cfg, self.device, self.amp_dtype = base, cfg, device, amp_dtype
        self.scheduler = base.scheduler
        self.unet = base.unet.to(device)
        self.vae = base.vae.to(device).eval().requires_grad_(False)
        for encoder in (base.text_encoder, base.text_encoder_2):
            if encoder is not None:
                encoder.to(device).eval().requires_grad_(False)
        self.scaling = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.uses_ds = any(w > 0 for w in (cfg.l_img, cfg.l_hf, cfg.l_hfmse))
        self.source = None
        self._prepare_unet()
        self.pixels = pixels.to(device)
        self.instance_latents = self._encode(self.pixels)
        # Padding and transparent areas stay out of the photo losses (data.fit_photo).
        self.masks = None if masks is None else masks.to(device)
        self.latent_masks = latent_mask(self.masks, tuple(self.instance_latents.shape[-2:]))
        self.class_latents = self._encode(class_pixels.to(device))
        self.prompts = instance_prompts(cfg, captions or [""] * len(pixels))
        self.instance_cond = self._instance_conditioning(device)
        self.class_cond = encode_prompts(base, [cfg.prompt(cfg.class_prompt)], device, cfg.resolution)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        self.named_params = [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]
        self.ema = EMA(self.named_params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def _instance_conditioning(self, device: torch.device) -> Conditioning:
        """One row per photo (its prompt with its caption), then the instance prompt alone."""
        plain = self.cfg.photo_prompt("")
        if all(p == plain for p in self.prompts):
            return encode_prompts(self.base, [plain], device, self.cfg.resolution)
        return encode_prompts(self.base, self.prompts + [plain], device, self.cfg.resolution)

    def _prompt_rows(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each photo's row; with probability ``caption_dropout`` the caption-less row instead."""
        if len(self.instance_cond) == 1:  # no captions: one prompt for every photo
            return torch.zeros(len(index), dtype=torch.long, device=self.device)
        dropped = torch.rand(len(index), generator=generator) < self.cfg.caption_dropout
        rows = torch.where(dropped, torch.full_like(index, len(self.prompts)), index)
        return rows.to(self.device)

    def _prepare_unet(self) -> None:
        cfg = self.cfg
        if cfg.mode == "lora":
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            self.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                             init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        else:
            self.unet.requires_grad_(True)
            if self.uses_ds and cfg.source == "paired":
                # The frozen base UNet; in LoRA mode the same UNet with adapters disabled serves.
                self.source = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.unet.train()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean and std of the VAE posterior of each photo, [N, 2, c, h, w]: encoded once."""
        out = []
        for chunk in pixels.split(8):
            dist = self.vae.encode(chunk).latent_dist
            out.append(torch.stack([dist.mean, dist.std], dim=1))
        return torch.cat(out)

    def _latents(self, cache: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = cache[index, 0], cache[index, 1]
        noise = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean + std * noise) * self.scaling

    def losses(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b = len(index)
        class_index = torch.randint(0, len(self.class_latents), (b,), generator=generator)
        latents = torch.cat([self._latents(self.instance_latents, index, generator),
                             self._latents(self.class_latents, class_index, generator)])
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (2 * b,), generator=generator).to(self.device)
        x_t = self.scheduler.add_noise(latents, noise, t)
        cond = Conditioning.cat([self.instance_cond.rows(self._prompt_rows(index, generator)),
                                 self.class_cond.repeat(b)])
        with autocast(self.device, self.amp_dtype):
            pred = self.unet(x_t, t, **cond.unet_kwargs()).sample.float()
        target = training_target(self.scheduler, latents, noise, t).float()
        simple = masked_mse(pred[:b], target[:b], self._rows(self.latent_masks, index))
        prior = F.mse_loss(pred[b:], target[b:])
        ds = self._domainstudio(generator) if self.uses_ds else {}
        return loss_terms(simple=simple, prior=prior, l_img=self.cfg.l_img, l_hf=self.cfg.l_hf,
                          l_hfmse=self.cfg.l_hfmse, prior_weight=self.cfg.prior_weight, **ds)

    def _domainstudio(self, generator: torch.Generator, timestep: int | None = None) -> dict:
        """L_img, L_hf (and L_hfmse below its gate) on S noisy photo latents of their own;
        ``timestep`` fixes their shared t (benchmarks/term_gradients_t2i.py measures each t)."""
        s = self.cfg.num_similarity_samples
        n = len(self.instance_latents)
        pick = torch.randperm(n, generator=generator)[:s] if n >= s else torch.randint(0, n, (s,), generator=generator)
        latents = self._latents(self.instance_latents, pick, generator)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if timestep is None:
            timestep = int(torch.randint(0, self.cfg.pairwise_max_timestep, (1,), generator=generator))
        t = torch.full((s,), timestep, dtype=torch.long, device=self.device)
        x_t = self.scheduler.add_noise(latents, noise, t)
        abar = self.alphas_cumprod[t]
        # the picked photos' own prompts (captions, with caption dropout), as the DreamBooth loss sees them
        cond = self.instance_cond.rows(self._prompt_rows(pick, generator))
        with autocast(self.device, self.amp_dtype):
            pred = self.unet(x_t, t, **cond.unet_kwargs()).sample.float()
        x0_adapted = predicted_clean(pred, x_t, abar, self.prediction_type)
        with torch.no_grad():
            x0_source = self._source_prediction(x_t, t, abar, generator)
        with autocast(self.device, self.amp_dtype):
            adapted_pixels = self._decode(x0_adapted).float()
            with torch.no_grad():
                source_pixels = self._decode(x0_source).float()
        terms = {"img": pairwise_similarity_loss(adapted_pixels, source_pixels),
                 "hf": pairwise_similarity_loss(haar_high_frequency(adapted_pixels),
                                                haar_high_frequency(source_pixels))}
        if int(t[0]) < self.cfg.ds_max_timestep:
            # the photos the predictions came from, their padding and transparency left out
            photos = pick.to(self.device)
            terms["hfmse"] = high_frequency_mse(adapted_pixels, self.pixels[photos], self._rows(self.masks, photos))
        return terms

    def _rows(self, masks: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
        return None if masks is None else masks[index.to(self.device)]

    def _source_prediction(self, x_t, t, abar, generator) -> torch.Tensor:
        """x0 of the source side: unpaired (official), the class prompt on class images' own
        noisy latents at the same t; paired, the frozen base UNet on the same noisy latents."""
        s = len(t)
        cond = self.class_cond.repeat(s)
        if self.cfg.source == "unpaired":
            pick = torch.randint(0, len(self.class_latents), (s,), generator=generator)
            latents = self._latents(self.class_latents, pick, generator)
            x_t = self.scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator).to(self.device), t)
            with autocast(self.device, self.amp_dtype):
                out = self.unet(x_t, t, **cond.unet_kwargs()).sample.float()
            return predicted_clean(out, x_t, abar, self.prediction_type)
        with autocast(self.device, self.amp_dtype), self._frozen_source() as source:
            out = source(x_t, t, **cond.unet_kwargs()).sample.float()
        return predicted_clean(out, x_t, abar, self.prediction_type)

    @contextlib.contextmanager
    def _frozen_source(self):
        if self.source is not None:
            yield self.source
            return
        self.unet.disable_adapters()
        try:
            yield self.unet
        finally:
            self.unet.enable_adapters()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        # vae_decode_chunk samples at a time (default 1): the decoder's full-resolution
        # activations are the peak of a DomainStudio step, and they scale with the number
        # decoded at once.
        return torch.cat([self.vae.decode(z / self.scaling).sample
                          for z in latents.split(self.cfg.vae_decode_chunk)])

    def save_model(self, folder: Path) -> None:
        """LoRA: a safetensors file that diffusers' load_lora_weights reads, and the same adapter in
        kohya's layout for ComfyUI and A1111/Forge (kohya.py); full: a pipeline folder."""
        with self.sampling_weights():
            if self.cfg.mode == "lora":
                save_lora(self.base, self.unet, folder)
                save_kohya_lora(self.base, self.unet, self.cfg, folder)
            else:
                self.base.pipeline(unet=self.unet).save_pretrained(folder / "model", safe_serialization=True)


def save_lora(base: BaseModel, unet, folder: Path) -> None:
    """The UNet adapter in diffusers' layout, for the family's ``load_lora_weights``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline = StableDiffusionXLPipeline if base.is_sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_FILE, safe_serialization=True)


def instance_prompts(cfg: AdaptConfig, captions: list[str]) -> list[str]:
    """The prompt each photo is trained with: the trigger words, then its caption."""
    return [cfg.photo_prompt(c) for c in captions]


def class_images(base: BaseModel, cfg: AdaptConfig, folder: Path, device: torch.device,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The class images for prior preservation: generated once by the base model, cached as PNGs."""
    from .sampling import sample_with

    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("class-*.png"))
    missing = cfg.num_class_images - len(have)
    if missing > 0:
        log.info("run.class_images.generate count=%d folder=%s", missing, folder)
        images = sample_with(base, missing, prompt=cfg.prompt(cfg.class_prompt), seed=10_000 + len(have),
                             resolution=cfg.resolution, device=device, progress=progress,
                             precision=sampling_dtype(cfg.sampling_precision, device))
        for i, generated in enumerate(images, start=len(have)):
            tmp = folder / f".class-{i:05d}.png"
            generated.image.save(tmp)
            tmp.rename(folder / f"class-{i:05d}.png")
    files = sorted(folder.glob("class-*.png"))[: max(cfg.num_class_images, 1)]
    return load_photos(files, cfg.resolution, 3).pixels
