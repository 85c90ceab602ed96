"""The names of what an adaptation leaves in its output folder.

Torch-free and importing nothing, so every module that writes or reads an output folder
(the loops, checkpoints, sampling, the kohya export, the worker's state sync, the web's
downloads) takes the names from here instead of from each other: checkpoints.py used to
import text_to_image.py for LORA_FILE, which reaches sampling.py, which reaches back into
checkpoints.py, a cycle.

A run's output folder:
    config.json        the run's resolved settings (written at the start)
    checkpoint.json    kind, base model, steps, files (written last: its presence means done)
    model/             full mode: a diffusers pipeline folder (safetensors)
    lora.safetensors   LoRA mode: the UNet adapter, for diffusers' load_lora_weights
    lora_kohya.safetensors  the same adapter in kohya's layout (ComfyUI, A1111/Forge)
    state/             training state for resume (optimizer, step, RNG, EMA)
    previews/          preview grids reported during training
"""
from __future__ import annotations

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.json"
LORA_FILE = "lora.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
STATE_FILE = "state/training_state.pt"
