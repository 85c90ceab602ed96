"""Write a (tiny) diffusers model in the original single-file layout of Stability/CompVis
checkpoints, as A1111, ComfyUI and Civitai files hold them: ``model.diffusion_model.*``
(the LDM UNet's input/middle/output blocks), ``first_stage_model.*`` (the VAE) and the text
encoder(s) under ``cond_stage_model.transformer.*`` (SD 1.x) or
``conditioner.embedders.0.transformer.*`` + ``conditioner.embedders.1.model.*`` (SDXL,
the second in OpenCLIP's layout). The renames are the inverse of the ones diffusers'
single-file loader applies, so a model written here and read back is the same model.
"""
from __future__ import annotations

import torch

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    layers = unet.config.layers_per_block
    state = unet.state_dict()
    with_attention = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    return {"model.diffusion_model." + _unet_key(k, layers, with_attention): v for k, v in state.items()}


def _unet_key(key: str, layers: int, up_with_attention: set[int]) -> str:
    parts = key.split(".")
    for diffusers, ldm in _UNET_TOP.items():
        if key.startswith(diffusers + "."):
            return ldm + key[len(diffusers):]
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":  # the block's last slot; the conv is called op
            return f"input_blocks.{1 + block * (layers + 1) + layers}.0.op." + ".".join(rest[1:])
        slot = 1 + block * (layers + 1) + index
        return f"input_blocks.{slot}.{0 if kind == 'resnets' else 1}." + _inner(kind, rest)
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, index)]
        return f"middle_block.{slot}." + _inner(kind, rest)
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":  # after the block's last resnet (and its attention, if any)
            position = 2 if block in up_with_attention else 1
            return f"output_blocks.{block * (layers + 1) + layers}.{position}." + ".".join(rest)
        slot = block * (layers + 1) + index
        return f"output_blocks.{slot}.{0 if kind == 'resnets' else 1}." + _inner(kind, rest)
    raise KeyError(key)


def _inner(kind: str, rest: list[str]) -> str:
    name = ".".join(rest)
    if kind == "resnets":
        for diffusers, ldm in _RESNET:
            if name.startswith(diffusers + "."):
                return ldm + name[len(diffusers):]
    return name  # attention blocks keep diffusers' names (norm, proj_in, transformer_blocks...)


_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = new.split(".")
        if parts[1] == "down_blocks":  # encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j
            new = (f"encoder.down.{parts[2]}.downsample.{'.'.join(parts[5:])}" if parts[3] == "downsamplers"
                   else f"encoder.down.{parts[2]}.block.{parts[4]}.{'.'.join(parts[5:])}")
        elif parts[1] == "up_blocks":  # decoder.up_blocks.i -> decoder.up.(n-1-i), reversed
            level = n - 1 - int(parts[2])
            new = (f"decoder.up.{level}.upsample.{'.'.join(parts[5:])}" if parts[3] == "upsamplers"
                   else f"decoder.up.{level}.block.{parts[4]}.{'.'.join(parts[5:])}")
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        elif parts[1] == "mid_block" and parts[2] == "attentions":
            name = ".".join(parts[4:])
            for diffusers, ldm in _VAE_ATTENTION:
                name = name.replace(diffusers + ".", ldm + ".")
            new = f"{parts[0]}.mid.attn_1.{name}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_original(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """CLIP-L keeps transformers' names (text_model.*) under a prefix (cond_stage_model.transformer.)."""
    return {prefix + _text_model(k): v for k, v in text_encoder.state_dict().items()}


def _text_model(key: str) -> str:
    # transformers 5 names CLIPTextModel's weights without the text_model. of the checkpoints
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def open_clip_to_original(text_encoder, prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """SDXL's second encoder in OpenCLIP's layout: fused q/k/v, resblocks, a [hidden, proj] projection."""
    state = {_text_model(k): v for k, v in text_encoder.state_dict().items()}
    out = {prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
           prefix + "text_projection": state["text_projection.weight"].T.contiguous()}
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat([state[src + f"self_attn.{p}_proj.{part}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{part}"] = state[src + f"self_attn.out_proj.{part}"]
            out[dst + f"ln_1.{part}"] = state[src + f"layer_norm1.{part}"]
            out[dst + f"ln_2.{part}"] = state[src + f"layer_norm2.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = state[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.c_proj.{part}"] = state[src + f"mlp.fc2.{part}"]
    return out


def to_original(base) -> dict[str, torch.Tensor]:
    """The whole model as one original-layout state dict (SD 1.x or SDXL)."""
    state = {**unet_to_original(base.unet), **vae_to_original(base.vae)}
    if base.is_sdxl:
        state.update(clip_to_original(base.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(base.text_encoder_2))
    else:
        state.update(clip_to_original(base.text_encoder, "cond_stage_model.transformer."))
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
