"""DomainStudio adaptation of an unconditional DDPM (diffusers UNet2DModel).

The frozen source copy and the adapted model see the same noisy images; all four terms
of METHOD.md apply, the DomainStudio ones only to samples with ``t < ds_max_timestep``
(x0_hat divides by sqrt(abar_t): at large t its gradients swamp L_simple).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import AdaptConfig
from .losses import domainstudio_terms, loss_terms
from .models import BaseModel
from .training import EMA, TrainableWeights
from .diffusion import predicted_clean, training_target


class UnconditionalTrainer(TrainableWeights):
    def __init__(self, base: BaseModel, cfg: AdaptConfig, device: torch.device, pixels: torch.Tensor):
        self.base, self.cfg, self.device = base, cfg, device
        self.pixels = pixels.to(device)
        self.unet = base.unet.to(device).train()
        self.uses_ds = any(w > 0 for w in (cfg.l_img, cfg.l_hf, cfg.l_hfmse))
        # The source model is a frozen copy made before any update (eps_s in METHOD.md).
        self.source = copy.deepcopy(self.unet).eval().requires_grad_(False) if self.uses_ds else None
        self.named_params = [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]
        self.ema = EMA(self.named_params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.alphas_cumprod = base.scheduler.alphas_cumprod.to(device)
        self.prediction_type = base.scheduler.config.get("prediction_type", "epsilon")

    def losses(self, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x0 = self.pixels[index.to(self.device)]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (x0.shape[0],), generator=generator).to(self.device)
        x_t = self.base.scheduler.add_noise(x0, noise, t)
        pred = self._eps(self.unet(x_t, t).sample, x0.shape[1])
        simple = F.mse_loss(pred.float(), training_target(self.base.scheduler, x0, noise, t).float())
        ds = {}
        small_t = t < self.cfg.ds_max_timestep
        if self.uses_ds and small_t.any():
            ds = self._domainstudio(x0[small_t], x_t[small_t], t[small_t], pred[small_t], generator)
        return loss_terms(simple=simple, l_img=self.cfg.l_img, l_hf=self.cfg.l_hf, l_hfmse=self.cfg.l_hfmse, **ds)

    def _domainstudio(self, x0, x_t, t, pred, generator) -> dict:
        with torch.no_grad():
            pred_source = self._eps(self.source(x_t, t).sample, x0.shape[1])
        abar = self.alphas_cumprod[t]
        x0_adapted = predicted_clean(pred, x_t, abar, self.prediction_type)
        x0_source = predicted_clean(pred_source, x_t, abar, self.prediction_type)
        return domainstudio_terms(x0_adapted, x0_source, x0, self.cfg.num_similarity_samples, generator)

    @staticmethod
    def _eps(output: torch.Tensor, channels: int) -> torch.Tensor:
        # A model that learns its variance outputs 2C channels; the first C are the prediction.
        return output[:, :channels]

    def save_model(self, folder: Path) -> None:
        """FOLDER/model: a DDPMPipeline folder (unet/ + scheduler/) with the EMA weights, safetensors."""
        with self.sampling_weights():
            self.base.pipeline(unet=self.unet).save_pretrained(folder / "model", safe_serialization=True)
