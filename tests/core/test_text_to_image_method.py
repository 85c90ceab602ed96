"""The text-to-image DomainStudio method itself: timesteps per sample, the DomainStudio terms
on samples of their own on every step, gradient clipping; and sampling of models that learn
their variance with every scheduler."""
import pytest
import torch

from worker.domainstudio import AdaptConfig, sample
from worker.domainstudio.adapt import _step
from worker.domainstudio.models import BaseModel, load_base_model
from worker.domainstudio.text_to_image import TextToImageTrainer


def trainer(**kw) -> TextToImageTrainer:
    base = load_base_model("builtin:tiny-sd")
    values = dict(base_model="builtin:tiny-sd", batch_size=3, preview_every=0)
    values.update(kw)
    cfg = AdaptConfig(**values).resolved("text-to-image", 4, 32)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    return TextToImageTrainer(base, cfg, torch.device("cpu"), pixels, pixels.flip(0), None)


def _unet_timesteps(tr: TextToImageTrainer) -> list[torch.Tensor]:
    seen = []
    original = tr.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append(torch.as_tensor(timestep).clone())
        return original(sample, timestep, *args, **kwargs)

    tr.unet.forward = spy
    return seen


def test_dreambooth_and_prior_losses_draw_t_per_sample():
    tr = trainer(l_img=0, l_hf=0, l_hfmse=0)
    seen = _unet_timesteps(tr)
    for _ in range(3):
        tr.losses(torch.arange(3), torch.Generator().manual_seed(len(seen)))
    batches = [t for t in seen if t.numel() == 6]  # 3 instance + 3 class samples
    assert len(batches) == 3
    assert all(len(set(t.tolist())) > 1 for t in batches), "one t was shared by the whole batch"


def test_domainstudio_terms_act_on_every_step_on_their_own_samples():
    tr = trainer(num_similarity_samples=3)
    seen = _unet_timesteps(tr)
    for step in range(6):
        terms = tr.losses(torch.arange(3), torch.Generator().manual_seed(step))
        assert terms["img"] > 0 and terms["hf"] > 0, f"pairwise terms off on step {step}"
    own = [t for t in seen if t.numel() == 3]
    # each step: the adapted and the source side on S = 3 samples, one shared t below the gate
    assert len(own) == 12 and all(len(set(t.tolist())) == 1 for t in own)


def test_hfmse_only_below_its_gate():
    tr = trainer(ds_max_timestep=1, pairwise_max_timestep=1000)
    terms = [tr.losses(torch.arange(3), torch.Generator().manual_seed(s)) for s in range(3)]
    assert all(t["hfmse"] == 0 and t["img"] > 0 for t in terms)


def test_a_batch_of_two_keeps_three_similarity_samples():
    tr = trainer(batch_size=2, num_similarity_samples=3)
    seen = _unet_timesteps(tr)
    terms = tr.losses(torch.arange(2), torch.Generator().manual_seed(0))
    assert terms["img"] > 0 and any(t.numel() == 3 for t in seen)


def test_gradient_norm_is_clipped():
    def grad_norm_after_step(max_norm: float, accumulated: int = 1) -> float:
        tr = trainer(l_img=1e5, l_hf=1e5)
        params = [p for _, p in tr.named_params]
        optimizer = torch.optim.SGD(params, lr=0.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        batches = [torch.arange(3)] * accumulated
        # lr 0: the step leaves the gradients to read
        _step(tr, optimizer, scaler, batches, torch.Generator().manual_seed(0), 0, 0.0, max_norm)
        return torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()

    assert grad_norm_after_step(0.0) > 1.0  # these weights make a large gradient
    assert grad_norm_after_step(1.0) == pytest.approx(1.0, rel=1e-3)
    # with gradient accumulation the clip acts once, on the accumulated gradient
    assert grad_norm_after_step(1.0, accumulated=2) == pytest.approx(1.0, rel=1e-3)


def _learned_variance_ddpm() -> BaseModel:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=2, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    return BaseModel("learned-variance", "unconditional", unet, scheduler, 16, 1)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++"])
def test_learned_variance_models_sample_with_every_scheduler(scheduler):
    images = sample(_learned_variance_ddpm(), 2, steps=3, scheduler=scheduler, device="cpu")
    assert [g.image.size for g in images] == [(16, 16)] * 2
