"""Readable names and explanations of a run's settings, for the run report.

The help texts are the core's own (``AdaptConfig`` field metadata), copied here because
the web side never imports the core (it would pull in torch); a test checks that they
still match the core word for word. Both texts are English msgids: ``N_`` only marks them
for extraction, the page translates them when it renders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.i18n import N_


@dataclass(frozen=True)
class SettingText:
    label: str
    help: str


SETTING_TEXTS: dict[str, SettingText] = {
    "base_model": SettingText(N_("Base model"), N_(
        "Base model: builtin:NAME, a local diffusers folder, or a hub id where a hub is reachable.")),
    "mode": SettingText(N_("What is trained"), N_(
        "What is trained: full (all UNet weights) or lora (small adapter file); auto = lora for text-to-image, "
        "full for unconditional.")),
    "steps": SettingText(N_("Training steps"), N_("Training steps (default: 600 unconditional, 800 text-to-image).")),
    "batch_size": SettingText(N_("Photos per step"), N_(
        "Photos per step (default: 10 unconditional, 4 text-to-image; capped at the number of photos).")),
    "learning_rate": SettingText(N_("Learning rate"), N_(
        "AdamW learning rate (default: 1e-4; 5e-6 for a full text-to-image UNet).")),
    "resolution": SettingText(N_("Resolution"), N_("Training resolution in pixels (default: the base model's).")),
    "l_img": SettingText(N_("Image similarity weight"), N_(
        "Weight of the image pairwise-similarity term (default 4 unconditional, 100 text-to-image; 0 disables).")),
    "l_hf": SettingText(N_("High-frequency similarity weight"), N_(
        "Weight of the high-frequency pairwise-similarity term (default 4 / 100; 0 disables).")),
    "l_hfmse": SettingText(N_("High-frequency MSE weight"), N_(
        "Weight of the high-frequency MSE term (default 1 / 0.1; 0 disables).")),
    "prior_weight": SettingText(N_("Class prior weight"), N_(
        "Weight of the class-prior preservation loss (text-to-image).")),
    "num_similarity_samples": SettingText(N_("Similarity samples"), N_(
        "Samples S compared by the pairwise terms, S more noisy photos per step (at least 3: with 2 the "
        "comparison is always equal; default 4 unconditional, 3 text-to-image).")),
    "ds_max_timestep": SettingText(N_("Largest timestep of the high-frequency MSE term"), N_(
        "The high-frequency MSE term sees only noisy samples with t below this (default 200 unconditional, "
        "500 text-to-image; 1000 = every t, as the official code).")),
    "pairwise_max_timestep": SettingText(N_("Largest timestep of the pairwise terms"), N_(
        "The pairwise-similarity terms (img, hf) see t below this, on S more noisy photos per step that share "
        "one t (default 300 unconditional, 1000 = every t text-to-image).")),
    "max_grad_norm": SettingText(N_("Gradient clipping"), N_(
        "Clip the gradient norm of each step to this (0 = no clipping).")),
    "ema_decay": SettingText(N_("EMA decay"), N_(
        "EMA decay of the weights used for sampling (default 0.995 unconditional, 0 = off for text-to-image).")),
    "source": SettingText(N_("Source side"), N_(
        "Text-to-image source side: unpaired (official: class images under the class prompt) or paired "
        "(frozen base UNet on the same noisy latents).")),
    "class_word": SettingText(N_("Class word"), N_(
        "The product's class word, e.g. bottle or sneaker (text-to-image prompts).")),
    "instance_token": SettingText(N_("Instance token"), N_("Rare token that names this product in the instance prompt.")),
    "instance_prompt": SettingText(N_("Instance prompt"), N_("Instance prompt (default: 'a photo of {token} {class}').")),
    "class_prompt": SettingText(N_("Class prompt"), N_("Class prompt (default: 'a photo of {class}').")),
    "caption_dropout": SettingText(N_("Caption dropout"), N_(
        "Share of steps on which a photo's caption is left out, so that the instance prompt alone (the trigger "
        "words) learns the product (text-to-image; photos without a caption are unaffected).")),
    "num_class_images": SettingText(N_("Class images"), N_(
        "Class images generated once by the base model for prior preservation (text-to-image).")),
    "class_images_dir": SettingText(N_("Class image folder"), N_(
        "Where the class images are cached (default: OUTPUT/class_images).")),
    "lora_rank": SettingText(N_("LoRA rank"), N_("LoRA rank (lora mode).")),
    "gradient_checkpointing": SettingText(N_("Gradient checkpointing"), N_(
        "Recompute UNet/VAE activations in the backward pass to save memory (text-to-image).")),
    "mixed_precision": SettingText(N_("Mixed precision"), N_(
        "Mixed precision: auto (bf16 on a CUDA GPU that has it, else fp16 on GPU, none on CPU), no, fp16 or bf16.")),
    "sampling_precision": SettingText(N_("Sampling precision"), N_(
        "Precision of the class images and previews: auto (fp16 on a GPU, none on CPU), no, fp16 or bf16.")),
    "optimizer": SettingText(N_("Optimizer"), N_(
        "Optimizer: adamw, or adamw8bit (bitsandbytes, CUDA GPUs: its state takes a quarter of the memory).")),
    "gradient_accumulation_steps": SettingText(N_("Gradient accumulation"), N_(
        "Batches whose gradients are averaged into each optimizer step (a larger batch in the same memory, at the time of N steps).")),
    "lr_warmup_steps": SettingText(N_("Learning-rate warmup"), N_(
        "Steps over which the learning rate rises linearly to its value (0 = off).")),
    "attention": SettingText(N_("Attention kernel"), N_(
        "Attention kernel: sdpa (PyTorch scaled_dot_product_attention, memory-efficient) or classic (the attention matrix in full, as diffusers before PyTorch 2).")),
    "torch_compile": SettingText(N_("Compile the UNet"), N_(
        "Compile the UNet with torch.compile: a few minutes at the start, then faster steps on a GPU.")),
    "vae_decode_chunk": SettingText(N_("VAE decode chunk"), N_(
        "Samples the VAE decodes at once for the DomainStudio terms (text-to-image): 1 keeps peak memory lowest; more can be faster on a GPU.")),
    "checkpoint_every": SettingText(N_("Save training state every"), N_(
        "Save the training state (for resume) every N steps.")),
    "preview_every": SettingText(N_("Previews every"), N_("Report preview images every N steps (0 = never).")),
    "num_previews": SettingText(N_("Previews"), N_("Preview images per report.")),
    "seed": SettingText(N_("Seed"), N_("Random seed of the run.")),
    "device": SettingText(N_("Device"), N_("cpu, cuda, cuda:N, or auto (cuda when available).")),
}


# stored with a run's resolved settings but not settings anyone chooses: the base model's
# weights fingerprint is the core's check that a checkpoint is applied to the same weights
# it was trained on (an identity, not a setting), so the report leaves it out
INTERNAL = frozenset({"base_fingerprint"})


def describe_settings(values: dict[str, Any], chosen: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The settings in the core's order, each with its readable name and explanation.
    ``chosen`` (the run's own settings: preset and expert overrides) tells which values
    were picked for this run; the rest are the base model's defaults. A name the web
    side does not know (a newer core) is shown as it is; the INTERNAL ones are left out."""
    chosen = values if chosen is None else chosen
    known = [n for n in SETTING_TEXTS if n in values] + sorted(
        n for n in values if n not in SETTING_TEXTS and n not in INTERNAL)
    out = []
    for name in known:
        text = SETTING_TEXTS.get(name)
        out.append({"name": name, "label": text.label if text else name, "help": text.help if text else "",
                    "value": values[name], "chosen": name in chosen})
    return out
