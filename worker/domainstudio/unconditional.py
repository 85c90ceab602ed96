"""DomainStudio adaptation of an unconditional DDPM (diffusers UNet2DModel).

The frozen source copy and the adapted model see the same noisy images; all four terms
of METHOD.md apply. The high-frequency MSE acts only on samples with ``t < ds_max_timestep``
(x0_hat divides by sqrt(abar_t): at large t its gradient swamps L_simple's, a norm of 137
against 0.07 at t = 800 on the demo model); the two pairwise terms act on S more noisy
photos of their own, below ``pairwise_max_timestep``, see ``_pairwise_terms``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .config import AdaptConfig
from .losses import haar_high_frequency, high_frequency_mse, loss_terms, masked_mse, pairwise_similarity_loss
from .models import BaseModel
from .training import EMA, TrainableWeights
from .diffusion import predicted_clean, training_target


class UnconditionalTrainer(TrainableWeights):
    def __init__(self, base: BaseModel, cfg: AdaptConfig, device: torch.device, pixels: torch.Tensor,
                 masks: torch.Tensor | None = None):
        self.base, self.cfg, self.device = base, cfg, device
        self.pixels = pixels.to(device)
        # Padding and transparent areas stay out of the photo losses (data.fit_photo).
        self.masks = None if masks is None else masks.to(device)
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
        mask = None if self.masks is None else self.masks[index.to(self.device)]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (x0.shape[0],), generator=generator).to(self.device)
        x_t = self.base.scheduler.add_noise(x0, noise, t)
        pred = self._eps(self.unet(x_t, t).sample, x0.shape[1])
        simple = masked_mse(pred.float(), training_target(self.base.scheduler, x0, noise, t).float(), mask)
        ds = {}
        if self.uses_ds:
            ds = self._pairwise_terms(generator) if self.cfg.l_img > 0 or self.cfg.l_hf > 0 else {}
            small_t = t < self.cfg.ds_max_timestep
            if small_t.any():
                x0_hat = self._x0(pred[small_t], x_t[small_t], t[small_t])
                ds["hfmse"] = high_frequency_mse(x0_hat, x0[small_t], None if mask is None else mask[small_t])
        return loss_terms(simple=simple, l_img=self.cfg.l_img, l_hf=self.cfg.l_hf, l_hfmse=self.cfg.l_hfmse, **ds)

    def _pairwise_terms(self, generator: torch.Generator) -> dict:
        """L_img and L_hf on S more noisy photos that share one t < pairwise_max_timestep.

        Why a batch of their own, with a gate of their own: the pairwise terms compare
        cosine similarities, which do not grow with x0_hat's 1/sqrt(abar_t), so their
        gradients stay within 0.1-6x of L_simple's even at t = 600-950, while at small t both
        models predict nearly the input and the terms fade (at t = 100: 0.0003x for L_img,
        0.01x for L_hf; benchmarks/term_gradients.py). The training batch would give them
        only its few samples under a gate, often one or two, and with two the softmax over
        the single other sample is always 1 (KL = 0). The default gate, t < 300, won the
        few-shot benchmark (README).
        """
        s = self.cfg.num_similarity_samples
        n = self.pixels.shape[0]
        pick = torch.randperm(n, generator=generator)[:s] if n >= s else torch.randint(0, n, (s,), generator=generator)
        x0 = self.pixels[pick.to(self.device)]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.randint(0, self.cfg.pairwise_max_timestep, (1,), generator=generator).expand(s).to(self.device)
        x_t = self.base.scheduler.add_noise(x0, noise, t)
        pred = self._eps(self.unet(x_t, t).sample, x0.shape[1])
        with torch.no_grad():
            pred_source = self._eps(self.source(x_t, t).sample, x0.shape[1])
        adapted, source = self._x0(pred, x_t, t), self._x0(pred_source, x_t, t)
        # the same S samples in both terms, in the same order (no subset drawn: all S)
        return {"img": pairwise_similarity_loss(adapted, source),
                "hf": pairwise_similarity_loss(haar_high_frequency(adapted), haar_high_frequency(source))}

    def _x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return predicted_clean(pred, x_t, self.alphas_cumprod[t], self.prediction_type)

    @staticmethod
    def _eps(output: torch.Tensor, channels: int) -> torch.Tensor:
        # A model that learns its variance outputs 2C channels; the first C are the prediction.
        return output[:, :channels]

    def save_model(self, folder: Path) -> None:
        """FOLDER/model: a DDPMPipeline folder (unet/ + scheduler/) with the EMA weights, safetensors."""
        with self.sampling_weights():
            self.base.pipeline(unet=self.unet).save_pretrained(folder / "model", safe_serialization=True)
