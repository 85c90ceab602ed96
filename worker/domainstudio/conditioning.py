"""What a text-to-image UNet takes besides x_t and t, built once per prompt and per model family.

SD 1.x/2.x: the text encoder's hidden states. SDXL: both encoders' penultimate hidden
states side by side, the second encoder's pooled (projected) embedding, and six "added
time ids" (original height and width, crop top and left, target height and width). The
SDXL parts come from diffusers' own ``StableDiffusionXLPipeline.encode_prompt``, so
training sees exactly what sampling feeds the UNet.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import BaseModel


@dataclass
class Conditioning:
    """Rows of UNet conditioning: ``hidden`` [N, tokens, dim]; SDXL adds ``pooled`` [N, dim]
    and ``time_ids`` [N, 6]."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def rows(self, index: torch.Tensor) -> "Conditioning":
        return Conditioning(*(None if x is None else x[index] for x in self._parts()))

    def repeat(self, n: int) -> "Conditioning":
        """The single row of this conditioning, ``n`` times."""
        return self.rows(torch.zeros(n, dtype=torch.long, device=self.hidden.device))

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs

    def _parts(self):
        return self.hidden, self.pooled, self.time_ids

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        parts = list(zip(*(c._parts() for c in items)))
        return Conditioning(*(None if p[0] is None else torch.cat(p) for p in parts))


@torch.no_grad()
def encode_prompts(base: BaseModel, prompts: list[str], device: torch.device, resolution: int) -> Conditioning:
    """One row of conditioning per prompt, for a ``resolution`` x ``resolution`` training image."""
    if base.is_sdxl:
        return _sdxl(base, prompts, device, resolution)
    tokens = base.tokenizer(prompts, padding="max_length", max_length=base.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
    return Conditioning(base.text_encoder(tokens)[0])


def _sdxl(base: BaseModel, prompts: list[str], device: torch.device, resolution: int) -> Conditioning:
    pipe = base.pipeline()
    hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    # Photos are padded, never cropped, to the training square: original size = target size,
    # crop (0, 0), as the pipeline's own default when sampling at that size.
    size = (resolution, resolution)
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=hidden.dtype,
                                      text_encoder_projection_dim=int(base.text_encoder_2.config.projection_dim))
    return Conditioning(hidden, pooled, time_ids.to(device).expand(len(prompts), -1).clone())
