"""Small facts about diffusion parameterisations, shared by training and metrics."""
from __future__ import annotations

import torch


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def predicted_clean(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """One-step estimate of x0 from the model output, for eps- and v-prediction models.

    epsilon: ``(x_t - sqrt(1 - abar) * eps) / sqrt(abar)``; v: ``sqrt(abar) * x_t - sqrt(1 - abar) * v``.
    """
    a = _expand(alpha_bar_t, x_t)
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * pred
    if prediction_type == "sample":
        return pred
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model should output: the noise, the velocity, or the clean sample."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r}")
