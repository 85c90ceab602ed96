"""The GPU benchmark: real model shapes with random weights, every figure from one process.

Models (built in code, nothing downloaded): SD-1.5 at 512 px (worker/domainstudio/tiny.py
``sd15``) and SDXL at 1024 px (UNet with its added time ids, VAE, two text encoders; the
shapes below). For each, measured interleaved, round-robin:

  (a) diffusers-style DreamBooth LoRA step, written as diffusers'
      examples/dreambooth/train_dreambooth_lora(_sdxl).py does it: the frozen UNet, VAE and
      text encoders held in the mixed-precision dtype (the SDXL VAE in fp32), LoRA weights
      in fp32, photos VAE-encoded and prompts text-encoded every step, one t per sample,
      prior preservation, gradients clipped to norm 1;
  (b) our DreamBooth LoRA step: the core's TextToImageTrainer with the DomainStudio
      weights at 0, prepared and stepped as adapt() does (adapt.prepare_for_training,
      adapt._step);
  (c) our DomainStudio LoRA step with the text-to-image defaults, the terms applied on
      every step (the worst case: ds_max_timestep=1000); (c3) the same, the VAE decoding
      the S=3 samples at once (vae_decode_chunk=3) instead of one by one;
  (d) our full-UNet DomainStudio step, the same terms.

Per step: seconds (median), the step's peak memory above what was held before it, and the
total a GPU must hold (weights + optimizer state + gradients + that peak); the largest batch
whose total fits the budget (12 GiB for SD-1.5, 24 GiB for SDXL: the targets). Sampling:
images/s of our sampler (``sampling.sample``, as galleries call it) against the diffusers
pipeline call on the same fp16 weights and scheduler (DPM-Solver++, 25 steps, CFG).

SDXL: rows (b)-(d) and our sampler run on the SDXL components through ``core_sdxl_base``;
where the core has no SDXL path yet, the table says "not measured" with the core's error.

Usage:
  python benchmarks/gpu.py                 # on a CUDA GPU: the table (sized for under 8 minutes on one modern GPU)
  python benchmarks/gpu.py --smoke         # the same code on the CPU at tiny shapes (the suite runs this)
  python benchmarks/gpu.py --only sd15     # one model family
Writes benchmarks/results/gpu-<device>.md and .json (or into --out). Every row holds its own
copy of the weights: SD-1.5 needs about 40 GB of GPU memory in all; SDXL about 30 GB while
the core has no SDXL path, and 100+ GB once rows (b)-(d) run (an H100 80 GB: --only sd15,
then --only sdxl, and (d) may not fit: it says so).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._measure import PeakMemory, timed  # noqa: E402
from worker.domainstudio.config import AdaptConfig  # noqa: E402
from worker.domainstudio.model_kinds import SD1, SDXL  # noqa: E402
from worker.domainstudio.models import BaseModel  # noqa: E402
from worker.domainstudio.tiny import SD_SCHEDULER, sd_components, tiny_tokenizer  # noqa: E402
from worker.domainstudio.training import autocast_dtype, make_optimizer  # noqa: E402

GIB = 2**30
PROMPT = "a photo of sks bottle"
CLASS_PROMPT = "a photo of bottle"


@dataclass
class Plan:
    """How much to run: the full GPU plan, or the CPU smoke plan at tiny shapes."""
    families: dict[str, str]  # family -> shape name
    batch: int
    warmup: int
    rounds: int
    batches: tuple[int, ...]  # tried for the largest batch, in order
    budget_gib: dict[str, float]
    sample_images: int
    sample_steps: int


GPU_PLAN = Plan({"sd15": "sd15", "sdxl": "sdxl"}, batch=2, warmup=2, rounds=5, batches=(1, 2, 4, 8, 16, 32),
                budget_gib={"sd15": 12.0, "sdxl": 24.0}, sample_images=4, sample_steps=25)
SMOKE_PLAN = Plan({"sd15": "tiny", "sdxl": "tiny-sdxl"}, batch=2, warmup=1, rounds=2, batches=(1, 2),
                  budget_gib={"sd15": 12.0, "sdxl": 24.0}, sample_images=2, sample_steps=2)


@dataclass
class Row:
    family: str
    variant: str
    batch: int
    step_s: float | None = None
    step_peak_gib: float | None = None
    total_gib: float | None = None
    largest_batch: int | None = None
    note: str = ""


@dataclass
class SampleRow:
    family: str
    sampler: str
    images_per_s: float | None = None
    note: str = ""


@dataclass
class Report:
    device: str
    smoke: bool
    dtype: str
    steps: list[Row] = field(default_factory=list)
    sampling: list[SampleRow] = field(default_factory=list)


# -- SDXL shapes, in code --------------------------------------------------------------------
SDXL_SHAPES = {
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/ configs
        "resolution": 1024,
        "unet": dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
            force_upcast=True, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                     projection_dim=768, hidden_act="quick_gelu"),
        "text_2": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                       projection_dim=1280, hidden_act="gelu"),
    },
    "tiny-sdxl": {  # diffusers' SDXL pipeline tests' dummy components, smaller still
        "resolution": 32,
        "unet": dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), attention_head_dim=(2, 4), cross_attention_dim=64,
            transformer_layers_per_block=(1, 2), use_linear_projection=True, norm_num_groups=8,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=32, scaling_factor=0.13025,
            block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ),
        "text": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        "text_2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
    },
}


def sdxl_components(size: str) -> dict:
    """SDXL-shaped UNet (text_time added conditioning), VAE and two CLIP text encoders, seeded."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    shapes = SDXL_SHAPES[size]
    tokenizer = tiny_tokenizer()
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, max_position_embeddings=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**shapes["unet"])
        vae = AutoencoderKL(**shapes["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**ids, **shapes["text"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **shapes["text_2"]))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer, "tokenizer_2": tiny_tokenizer(), "scheduler": DDPMScheduler(**SD_SCHEDULER),
            "resolution": shapes["resolution"], "sdxl": True}


def components(shape: str, device: torch.device) -> dict:
    """Random-weight components built straight on the device (random init on a GPU takes seconds)."""
    with torch.device(device):
        return sdxl_components(shape) if shape in SDXL_SHAPES else {**sd_components(shape), "sdxl": False}


def core_base(c: dict, spec: str) -> BaseModel:
    """The core's BaseModel over these components (SDXL: both text encoders and tokenizers)."""
    return BaseModel(spec, "text-to-image", c["unet"], c["scheduler"], c["resolution"], 3, vae=c["vae"],
                     text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], fingerprint=spec,
                     text_encoder_2=c.get("text_encoder_2"), tokenizer_2=c.get("tokenizer_2"),
                     family=SDXL if c["sdxl"] else SD1)


# -- (a) the diffusers-style DreamBooth LoRA step ----------------------------------------------
class DiffusersStyleLoRA:
    """train_dreambooth_lora(_sdxl).py's step on these components (see the module docstring)."""

    def __init__(self, c: dict, device: torch.device, amp: torch.dtype | None, pool: torch.Tensor, rank: int = 8):
        from peft import LoraConfig

        weight_dtype = amp or torch.float32
        self.c, self.device, self.amp, self.pool = c, device, amp, pool
        self.unet = c["unet"].to(device, weight_dtype).requires_grad_(False)
        self.vae = c["vae"].to(device, torch.float32 if c["sdxl"] else weight_dtype).requires_grad_(False)
        self.encoders = [c["text_encoder"]] + ([c["text_encoder_2"]] if c["sdxl"] else [])
        self.tokenizers = [c["tokenizer"]] + ([c["tokenizer_2"]] if c["sdxl"] else [])
        for encoder in self.encoders:
            encoder.to(device, weight_dtype).requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.params:  # diffusers' cast_training_params: trainable weights in fp32
            p.data = p.data.float()
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-2)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.modules = [self.unet, self.vae, *self.encoders]

    def enable_checkpointing(self, on: bool) -> None:
        if on:
            self.unet.enable_gradient_checkpointing()

    def step(self, batch: int) -> None:
        c, dev = self.c, self.device
        pixels = self.pool[: 2 * batch].to(dev, self.vae.dtype)  # [instance; class] as the script's collate_fn
        latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
        latents = latents.to(self.unet.dtype)
        noise = torch.randn_like(latents)
        t = torch.randint(0, c["scheduler"].config.num_train_timesteps, (latents.shape[0],), device=dev)
        noisy = c["scheduler"].add_noise(latents, noise, t)
        prompts = [PROMPT] * batch + [CLASS_PROMPT] * batch
        hidden, extra = self._encode(prompts)
        with torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None):
            pred = self.unet(noisy, t, hidden, added_cond_kwargs=extra).sample
        pred, prior_pred = pred.chunk(2)
        target, prior_target = noise.chunk(2)
        loss = F.mse_loss(pred.float(), target.float()) + F.mse_loss(prior_pred.float(), prior_target.float())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _encode(self, prompts: list[str]):
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            if not self.c["sdxl"]:
                return encoder(ids)[0], None
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]  # the second encoder's projected text embedding
            hidden.append(out.hidden_states[-2])
        size = self.c["resolution"]
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), device=self.device, dtype=pooled.dtype)
        return torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


# -- (b)-(d): the core's trainer and optimizer step ------------------------------------------------
class CoreStep:
    """The core's TextToImageTrainer and its optimizer step (adapt._step), as a run uses them."""

    def __init__(self, c: dict, device: torch.device, pool: torch.Tensor, max_batch: int, **settings):
        import importlib

        from worker.domainstudio.text_to_image import TextToImageTrainer

        self.adapt = importlib.import_module("worker.domainstudio.adapt")
        cfg = AdaptConfig(base_model="benchmark", **settings).resolved("text-to-image", max_batch, c["resolution"])
        self.amp = autocast_dtype(cfg.mixed_precision, device)
        half = len(pool) // 2
        self.trainer = TextToImageTrainer(core_base(c, "benchmark"), cfg, device, pool[:half], pool[half:], self.amp)
        self.adapt.prepare_for_training(self.trainer, cfg, self.amp)  # as adapt() does
        params = [p for _, p in self.trainer.named_params]
        self.optimizer = make_optimizer(params, cfg.optimizer, cfg.learning_rate)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.generator = torch.Generator().manual_seed(0)
        self.cfg = cfg
        t = self.trainer
        self.modules = [*t.base.modules] + ([t.source] if t.source is not None else [])
        self.cached = [t.pixels, t.instance_latents, t.class_latents,
                       *[x for c in (t.instance_cond, t.class_cond) for x in (c.hidden, c.pooled, c.time_ids)]]

    def enable_checkpointing(self, on: bool) -> None:
        if not on:
            self.trainer.unet.disable_gradient_checkpointing()

    def step(self, batch: int) -> None:
        batches = [torch.arange(batch)] * self.cfg.gradient_accumulation_steps
        self.adapt._step(self.trainer, self.optimizer, self.scaler, batches, self.generator, 0, self.cfg.learning_rate,
                         self.cfg.max_grad_norm)


def held_bytes(variant) -> int:
    """Weights, gradients, optimizer state and cached tensors of a variant, each tensor once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for module in variant.modules:
        for t in list(module.parameters()) + list(module.buffers()):
            add(t)
            add(t.grad)
    for state in variant.optimizer.state.values():
        for value in state.values():
            add(value)
    for t in getattr(variant, "cached", []):
        add(t)
    return total


# -- measuring ---------------------------------------------------------------------------------------
def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_steps(variants: dict, plan: Plan, device: torch.device) -> dict[str, dict]:
    """Median step time (round-robin over the variants), peak and total memory at plan.batch."""
    for variant in variants.values():
        for _ in range(plan.warmup):  # allocator, kernels, optimizer state
            variant.step(plan.batch)
    times = {name: [] for name in variants}
    for _ in range(plan.rounds):
        for name, variant in variants.items():
            times[name].append(timed(lambda: variant.step(plan.batch), device))
    out = {}
    for name, variant in variants.items():
        peak, total = footprint(variant, plan.batch, device)
        out[name] = {"step_s": statistics.median(times[name]), "step_peak": peak, "total": total}
    return out


def footprint(variant, batch: int, device: torch.device) -> tuple[int, int]:
    free(device)
    with PeakMemory(device) as peak:
        variant.step(batch)
    return peak.peak_bytes, held_bytes(variant) + peak.peak_bytes


def largest_batch(variant, plan: Plan, budget_bytes: float, device: torch.device) -> tuple[int | None, str]:
    """The largest of plan.batches whose total fits the budget (and the device)."""
    best, note = None, ""
    for batch in plan.batches:
        try:
            _, total = footprint(variant, batch, device)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            variant.optimizer.zero_grad(set_to_none=True)
            free(device)
            note = f"batch {batch}: out of device memory"
            break
        if total > budget_bytes:
            note = f"batch {batch}: {total / GIB:.1f} GiB"
            break
        best = batch
    return best, note


def step_variants(c: dict, device: torch.device, amp, plan: Plan, checkpointing: bool) -> tuple[dict, dict]:
    """(a)-(d) on copies of the family's components; the core rows that cannot be built say why."""
    max_batch = max(plan.batches)
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(2 * max_batch, 3, c["resolution"], c["resolution"], generator=g) * 2 - 1
    built, skipped = {}, {}
    built["a: diffusers-style DreamBooth LoRA"] = DiffusersStyleLoRA(copy.deepcopy(c), device, amp, pool)
    core = {
        "b: ours, DreamBooth LoRA": dict(mode="lora", l_img=0.0, l_hf=0.0, l_hfmse=0.0),
        "c: ours, DomainStudio LoRA": dict(mode="lora", ds_max_timestep=1000),
        # decides the default of vae_decode_chunk (1) on a GPU: S at once, faster but a larger peak
        "c3: ours, DomainStudio LoRA, VAE decode chunk 3": dict(mode="lora", ds_max_timestep=1000, vae_decode_chunk=3),
        "d: ours, DomainStudio full UNet": dict(mode="full", ds_max_timestep=1000),
    }
    for name, settings in core.items():
        try:
            built[name] = CoreStep(copy.deepcopy(c), device, pool, max_batch, **settings)
            built[name].step(1)  # a core without this model's path fails here, not mid-table
        except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
            out_of_memory = is_out_of_memory(exc)
            if not (out_of_memory or c["sdxl"]):
                raise
            built.pop(name, None)
            skipped[name] = ("not measured: out of device memory beside the other rows (run it with --only)"
                             if out_of_memory else
                             f"not measured: the core has no SDXL path yet ({type(exc).__name__}: {first_line(exc)})")
            free(device)
    for variant in built.values():
        variant.enable_checkpointing(checkpointing)
    return built, skipped


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:120]


# -- sampling ----------------------------------------------------------------------------------------
def sampling_rows(family: str, c: dict, device: torch.device, plan: Plan) -> list[SampleRow]:
    """Images/s of our sampler and of the diffusers pipeline call, same fp16 weights, interleaved."""
    from worker.domainstudio.sampling import make_scheduler, sample_with

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16  # fp16 on a CPU is slow and partial
    # the SDXL VAE overflows in fp16: its pipeline upcasts it for the decode (force_upcast)
    half = {k: (v.to(device, dtype) if isinstance(v, torch.nn.Module) else v) for k, v in copy.deepcopy(c).items()}
    pipe = diffusers_pipeline(half, make_scheduler("dpmsolver++", c["scheduler"].config))
    n, size = plan.sample_images, c["resolution"]
    base = core_base(half, f"benchmark:{family}")

    def ours():  # what sampling.sample runs for a gallery once it has cast a run's weights
        sample_with(base, n, prompt=PROMPT, steps=plan.sample_steps, batch_size=n, device=device)

    def theirs():
        pipe(prompt=[PROMPT] * n, num_inference_steps=plan.sample_steps, guidance_scale=7.5, height=size, width=size,
             generator=torch.Generator(device).manual_seed(0), output_type="pil")

    runners, rows = {"diffusers pipeline call": theirs, "ours (sample_with)": ours}, {}
    try:
        ours()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        if not c["sdxl"]:
            raise
        runners.pop("ours (sample_with)")
        rows["ours (sample_with)"] = SampleRow(family, "ours (sample_with)", None,
                                                   f"not measured: the core's sampler has no SDXL path yet ({first_line(exc)})")
    theirs()
    times = {name: [] for name in runners}
    for _ in range(max(2, plan.rounds // 2)):
        for name, fn in runners.items():
            times[name].append(timed(fn, device))
    for name in runners:
        rows[name] = SampleRow(family, name, n / statistics.median(times[name]))
    return [rows[name] for name in ("diffusers pipeline call", "ours (sample_with)")]


def diffusers_pipeline(c: dict, scheduler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if c["sdxl"]:
        pipe = StableDiffusionXLPipeline(vae=c["vae"], text_encoder=c["text_encoder"], text_encoder_2=c["text_encoder_2"],
                                         tokenizer=c["tokenizer"], tokenizer_2=c["tokenizer_2"], unet=c["unet"],
                                         scheduler=scheduler, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                       unet=c["unet"], scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- one family, the whole run, the table ------------------------------------------------------------
def run_family(family: str, shape: str, device: torch.device, amp, plan: Plan, checkpointing: bool, report: Report):
    t0 = time.monotonic()
    c = components(shape, device)
    variants, skipped = step_variants(c, device, amp, plan, checkpointing)
    measured = measure_steps(variants, plan, device)
    budget = plan.budget_gib[family] * GIB
    for name in sorted(list(variants) + list(skipped), key=lambda n: n.split(":")[0]):
        if name in skipped:
            report.steps.append(Row(family, name, plan.batch, note=skipped[name]))
            continue
        m = measured[name]
        best, note = largest_batch(variants[name], plan, budget, device)
        report.steps.append(Row(family, name, plan.batch, m["step_s"], m["step_peak"] / GIB, m["total"] / GIB, best, note))
    del variants
    free(device)
    report.sampling.extend(sampling_rows(family, c, device, plan))
    del c
    free(device)
    print(f"{family}: measured in {time.monotonic() - t0:.0f} s", file=sys.stderr)


def ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}" if x is not None and y else "-"


def table(report: Report, plan: Plan) -> str:
    kind = "SMOKE: tiny shapes on the CPU; the ratios say nothing about a GPU" if report.smoke else "real shapes, random weights"
    lines = [f"# GPU benchmark ({kind})", "",
             f"device: {report.device}; mixed precision: {report.dtype}; batch {plan.batch} photos + {plan.batch} "
             f"class images per step; median of {plan.rounds} interleaved rounds; ratios to (b), our DreamBooth LoRA step.",
             "", "| model | step | s/step | x time | step peak GiB | total GiB | x memory | largest batch in budget |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for family in dict.fromkeys(r.family for r in report.steps):
        rows = [r for r in report.steps if r.family == family]
        ref = next((r for r in rows if r.variant.startswith("b:") and r.step_s is not None), None)
        for r in rows:
            if r.step_s is None:
                lines.append(f"| {family} | {r.variant} | - | - | - | - | - | {r.note} |")
                continue
            budget = f"{r.largest_batch if r.largest_batch is not None else 'none'} (of {plan.budget_gib[family]:g} GiB)"
            lines.append(f"| {family} | {r.variant} | {r.step_s:.3f} | {ratio(r.step_s, ref and ref.step_s)} | "
                         f"{r.step_peak_gib:.2f} | {r.total_gib:.2f} | {ratio(r.total_gib, ref and ref.total_gib)} | "
                         f"{budget}{'; ' + r.note if r.note else ''} |")
    lines += ["", f"Sampling: {plan.sample_images} images per call, {plan.sample_steps} DPM-Solver++ steps, CFG 7.5, "
              f"{'fp16' if not report.smoke else 'bf16 (CPU)'} weights.", "",
              "| model | sampler | images/s | x diffusers |", "|---|---|---:|---:|"]
    for family in dict.fromkeys(r.family for r in report.sampling):
        rows = [r for r in report.sampling if r.family == family]
        ref = rows[0].images_per_s
        for r in rows:
            value = f"{r.images_per_s:.3f}" if r.images_per_s is not None else r.note
            lines.append(f"| {family} | {r.sampler} | {value} | {ratio(r.images_per_s, ref)} |")
    lines += ["", "Targets:"] + [f"- {t}" for t in targets(report, plan)]
    return "\n".join(lines) + "\n"


def targets(report: Report, plan: Plan) -> list[str]:
    out = []

    def row(family, prefix):
        return next((r for r in report.steps if r.family == family and r.variant.startswith(prefix)), None)
    for family in dict.fromkeys(r.family for r in report.steps):
        b, c = row(family, "b:"), row(family, "c:")
        if b is None or c is None or b.step_s is None or c.step_s is None:
            out.append(f"{family}: DomainStudio LoRA vs our DreamBooth LoRA: not measured")
            continue
        t, m = c.step_s / b.step_s, c.total_gib / b.total_gib
        out.append(f"{family}: DomainStudio LoRA step {t:.2f}x time (target <= 1.3: {verdict(t <= 1.3)}), "
                   f"{m:.2f}x memory (target <= 1.2: {verdict(m <= 1.2)})")
        limit = plan.budget_gib[family]
        out.append(f"{family}: DomainStudio LoRA at batch {plan.batch} holds {c.total_gib:.2f} GiB "
                   f"(target <= {limit:g}: {verdict(c.total_gib <= limit)})")
    for family in dict.fromkeys(r.family for r in report.sampling):
        rows = {r.sampler: r.images_per_s for r in report.sampling if r.family == family}
        ours, theirs = rows.get("ours (sample_with)"), rows.get("diffusers pipeline call")
        if ours is None or theirs is None:
            out.append(f"{family}: sampler vs diffusers: not measured")
        else:
            out.append(f"{family}: our sampler {ours / theirs:.2f}x the pipeline's images/s "
                       f"(target >= 1: {verdict(ours >= theirs * 0.98)}, within 2% timing noise)")
    if report.smoke:
        out.append("smoke run: the verdicts above are about tiny CPU shapes, not the GPU targets")
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def quiet_libraries() -> None:
    """The tables are the output: no per-cast warnings of diffusers and transformers."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, the same code (under 2 minutes)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--only", choices=("sd15", "sdxl"), action="append", help="measure only this model family")
    parser.add_argument("--unet-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="UNet gradient checkpointing in every training step (the core's default: on)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the table")
    args = parser.parse_args(argv)
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible to torch: run with --smoke on the CPU, or on a GPU machine")
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    quiet_libraries()
    amp = autocast_dtype("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = Report(device=name, smoke=args.smoke, dtype=str(amp).replace("torch.", "") if amp else "none (fp32)")
    t0 = time.monotonic()
    for family, shape in plan.families.items():
        if args.only and family not in args.only:
            continue
        run_family(family, shape, device, amp, plan, args.unet_checkpointing, report)
    text = table(report, plan) + f"\nwall time: {time.monotonic() - t0:.0f} s\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-smoke" if args.smoke else "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
