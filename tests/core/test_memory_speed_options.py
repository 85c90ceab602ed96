"""The memory and speed options of AdaptConfig, each run on the CPU where it can run there:
mixed precision (bf16; fp16 with loss scaling), half-precision sampling, gradient
accumulation, learning-rate warmup, the attention kernel, torch.compile and the chunked VAE
decode. 8-bit Adam needs bitsandbytes and a CUDA GPU: here only its refusal is tested."""
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from worker.domainstudio import AdaptConfig, adapt, sample
from worker.domainstudio import training
from worker.domainstudio.errors import InputError, ModelError
from worker.domainstudio.text_to_image import LORA_FILE
from worker.domainstudio.tiny import sd_components

adapt_module = importlib.import_module("worker.domainstudio.adapt")  # the package exports adapt() by that name


def tiny_sd(**kw):
    values = dict(base_model="builtin:tiny-sd", steps=2, batch_size=3, num_class_images=3,
                  preview_every=0, checkpoint_every=100, ds_max_timestep=1000, class_word="bottle")
    values.update(kw)
    return AdaptConfig(**values)


@pytest.fixture
def unet_output_dtypes(monkeypatch):
    """The dtype of every UNet output of a run: class images first, then training steps."""
    seen = []
    load = adapt_module.load_base_model

    def load_and_watch(spec):
        base = load(spec)
        # the pipeline asks for a tuple (return_dict=False), training for an output object
        base.unet.register_forward_hook(lambda module, args, out: seen.append(
            (out[0] if isinstance(out, tuple) else out.sample).dtype))
        return base
    monkeypatch.setattr(adapt_module, "load_base_model", load_and_watch)
    return seen


def test_bf16_training_and_sampling_run_under_autocast_on_the_cpu(photos, tmp_path, unet_output_dtypes):
    result = adapt(tiny_sd(mixed_precision="bf16", sampling_precision="bf16"), photos, tmp_path / "run")
    assert set(unet_output_dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    assert (tmp_path / "run" / LORA_FILE).is_file()


def test_lora_under_mixed_precision_holds_the_frozen_weights_in_half(photos, tmp_path, monkeypatch):
    """As diffusers' scripts: frozen UNet and text encoder in the autocast dtype, LoRA in fp32;
    previews (autocast, whatever sampling_precision says) and the saved file work."""
    from safetensors.torch import load_file

    held = {}
    prepare = adapt_module.prepare_for_training

    def prepare_and_look(trainer, cfg, amp):
        prepare(trainer, cfg, amp)
        for name, p in trainer.unet.named_parameters():
            held.setdefault((p.requires_grad, p.dtype), name)
        held["text"] = {p.dtype for p in trainer.base.text_encoder.parameters()}
        held["vae"] = {p.dtype for p in trainer.vae.parameters()}
    monkeypatch.setattr(adapt_module, "prepare_for_training", prepare_and_look)
    events = []
    adapt(tiny_sd(mixed_precision="bf16", sampling_precision="no", preview_every=1, num_previews=2),
          photos, tmp_path / "run", progress=events.append)
    assert {k for k in held if isinstance(k, tuple)} == {(False, torch.bfloat16), (True, torch.float32)}
    assert held["text"] == {torch.bfloat16} and held["vae"] == {torch.float32}
    assert [len(e.previews) for e in events if e.stage == "training"] == [2, 2]
    assert {t.dtype for t in load_file(tmp_path / "run" / LORA_FILE).values()} == {torch.float32}
    # full fine-tuning trains every weight: nothing is frozen, nothing is cast
    held.clear()
    adapt(tiny_sd(mixed_precision="bf16", mode="full"), photos, tmp_path / "full")
    assert {k for k in held if isinstance(k, tuple)} == {(True, torch.float32)}


def test_full_precision_is_the_cpu_default(photos, tmp_path, unet_output_dtypes):
    adapt(tiny_sd(), photos, tmp_path / "run")
    assert set(unet_output_dtypes) == {torch.float32}


def test_fp16_training_scales_the_loss(photos, tmp_path):
    adapt(tiny_sd(mixed_precision="fp16", steps=2, checkpoint_every=1), photos, tmp_path / "run")
    state = training.load_state(tmp_path / "run" / training.STATE_FILE)
    # GradScaler starts at 2**16; an unscaled run would store no scale at all
    assert 0 < state["scaler"]["scale"] <= 2.0 ** 16


@pytest.mark.parametrize("installed", [False, True])
def test_adamw8bit_is_refused_before_any_work_where_it_cannot_run(photos, tmp_path, monkeypatch, installed):
    # bitsandbytes present or absent, whatever this machine has
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes") if installed else None)
    with pytest.raises(ModelError) as caught:
        adapt(tiny_sd(optimizer="adamw8bit", device="cpu"), photos, tmp_path / "run")
    assert ("CUDA GPUs only" if installed else "needs the bitsandbytes package") in str(caught.value)
    assert "use optimizer adamw" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_run_resumes_only_with_the_optimizer_it_was_trained_with(photos, tmp_path, monkeypatch):
    adapt(tiny_sd(steps=2, checkpoint_every=1), photos, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(adapt_module, "check_optimizer", lambda name, device: None)  # as on a GPU worker
    with pytest.raises(InputError) as caught:
        adapt(tiny_sd(steps=3, optimizer="adamw8bit"), photos, tmp_path / "run")
    assert "trained with optimizer adamw" in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="8-bit Adam runs on CUDA GPUs with bitsandbytes installed (benchmarks/gpu.py measures it)")
def test_adamw8bit_trains_on_a_gpu(photos, tmp_path):
    result = adapt(tiny_sd(optimizer="adamw8bit", device="cuda"), photos, tmp_path / "run")
    assert result.steps == 2


class _Line(training.TrainableWeights):
    """A one-weight model whose per-batch gradient is known: loss = w * sum(x[index])."""

    def __init__(self):
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.named_params, self.ema = [("w", self.w)], None
        self.x = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def losses(self, index, generator):
        total = self.w * self.x[index].sum()
        return {"total": total, "simple": total}


def test_gradient_accumulation_averages_the_batch_gradients():
    line = _Line()
    optimizer = torch.optim.SGD([line.w], lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = [torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([3])]
    adapt_module._step(line, optimizer, scaler, batches, None, 0, lr=0.5)
    assert line.w.grad.item() == pytest.approx((1 + 5 + 4) / 3)
    assert line.w.item() == pytest.approx(-0.5 * 10 / 3)


def test_gradient_accumulation_runs_every_batch_of_a_step(photos, tmp_path, monkeypatch):
    from worker.domainstudio.text_to_image import TextToImageTrainer

    calls = []
    losses = TextToImageTrainer.losses
    monkeypatch.setattr(TextToImageTrainer, "losses", lambda self, i, g: calls.append(len(i)) or losses(self, i, g))
    events = []
    adapt(tiny_sd(gradient_accumulation_steps=3, batch_size=2), photos, tmp_path / "run", progress=events.append)
    assert calls == [2] * 6
    assert [e.step for e in events if e.stage == "training"] == [1, 2]


def test_learning_rate_warms_up_linearly():
    assert [training.warmup_learning_rate(1e-4, 4, s) for s in range(6)] == pytest.approx(
        [2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert training.warmup_learning_rate(1e-4, 0, 0) == 1e-4


def test_a_run_with_warmup_stores_the_warmed_up_rate(photos, tmp_path):
    adapt(tiny_sd(lr_warmup_steps=4, learning_rate=1e-3, checkpoint_every=1, attention="classic"),
          photos, tmp_path / "run")
    state = training.load_state(tmp_path / "run" / training.STATE_FILE)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 2 / 4)


def test_both_attention_kernels_compute_the_same_attention():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = sd_components("tiny")["unet"].eval()
    x, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 77, 32)
    outputs = {}
    for kind, cls in (("sdpa", AttnProcessor2_0), ("classic", AttnProcessor)):
        training.set_attention([unet], kind)
        assert {type(p) for p in unet.attn_processors.values()} == {cls}
        with torch.no_grad():
            outputs[kind] = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(outputs["sdpa"], outputs["classic"], atol=1e-5, rtol=1e-4)


def test_torch_compile_trains_and_saves_the_same_lora_keys(photos, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr(training, "COMPILE_BACKEND", "eager")  # inductor: minutes of C++ builds on a CPU
    compiled = []
    compile_module = adapt_module.compile_module
    monkeypatch.setattr(adapt_module, "compile_module", lambda m: compiled.append(m) or compile_module(m))
    adapt(tiny_sd(torch_compile=True), photos, tmp_path / "compiled")
    adapt(tiny_sd(), photos, tmp_path / "plain")
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is not None
    assert set(load_file(tmp_path / "compiled" / LORA_FILE)) == set(load_file(tmp_path / "plain" / LORA_FILE))


def test_chunked_vae_decode_gives_the_same_pixels(photos, tmp_path):
    from worker.domainstudio.models import load_base_model
    from worker.domainstudio.text_to_image import TextToImageTrainer

    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    decoded = {}
    for chunk in (1, 3):
        base = load_base_model("builtin:tiny-sd")
        cfg = tiny_sd(vae_decode_chunk=chunk).resolved("text-to-image", 3, 32)
        trainer = TextToImageTrainer(base, cfg, torch.device("cpu"), pixels, pixels, None)
        with torch.no_grad():
            decoded[chunk] = trainer._decode(trainer.instance_latents[:, 0] * trainer.scaling)
    torch.testing.assert_close(decoded[1], decoded[3], atol=1e-5, rtol=1e-4)


def test_half_precision_sampling_casts_the_weights_and_stays_close():
    full = sample("builtin:tiny-sd", 2, prompt="a photo", steps=2, seed=1, device="cpu", precision="no")
    default = sample("builtin:tiny-sd", 2, prompt="a photo", steps=2, seed=1, device="cpu")
    half = sample("builtin:tiny-sd", 2, prompt="a photo", steps=2, seed=1, device="cpu", precision="bf16")
    assert [a.image.tobytes() for a in full] == [b.image.tobytes() for b in default]  # auto = fp32 on a CPU
    diff = [torch.tensor(list(a.image.getdata()), dtype=torch.float) - torch.tensor(list(b.image.getdata()), dtype=torch.float)
            for a, b in zip(full, half)]
    assert 0 < max(d.abs().mean().item() for d in diff) < 8  # bf16 rounding, not another image


@pytest.mark.parametrize("name,bad", [("gradient_accumulation_steps", 0), ("lr_warmup_steps", -1),
                                      ("vae_decode_chunk", 65), ("optimizer", "sgd"), ("attention", "flash"),
                                      ("sampling_precision", "fp8")])
def test_bad_option_values_are_refused_with_the_name(name, bad):
    with pytest.raises(InputError) as caught:
        AdaptConfig.from_dict({"base_model": "builtin:tiny-sd", name: bad})
    assert name in str(caught.value)


def test_options_come_from_a_form_as_strings():
    config = AdaptConfig.from_dict({"base_model": "builtin:tiny-sd", "torch_compile": "on",
                                    "gradient_accumulation_steps": "4", "vae_decode_chunk": "2"})
    assert (config.torch_compile, config.gradient_accumulation_steps, config.vae_decode_chunk) == (True, 4, 2)
