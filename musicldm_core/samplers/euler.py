"""Euler and Euler-ancestral steps in sigma (Karras et al. 2022, Algorithm 1 with s_churn = 0).

Reference: diffusers 0.36.0 `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler`.
d = (x - x0_hat) / sigma;  Euler: x <- x + d (sigma_next - sigma).
Ancestral: step down to sigma_down, then add fresh noise of std sigma_up, where
sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2).
Like the reference, the update is computed in float32 and cast back to the model's dtype.
"""

from __future__ import annotations

import torch

from ..noise import Generator, randn
from .schedule import Callback, Model, NoiseSchedule, check_steps, reports, sigma_x0

ORDER = 1


def _run(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, ancestral: bool,
         generator: Generator, callback: Callback) -> torch.Tensor:
    cfg = schedule.config
    if ancestral and cfg.prediction_type == "sample":
        raise ValueError("scheduler_config.json: prediction_type='sample' is not supported by Euler ancestral")
    steps = check_steps(steps, cfg.num_train_timesteps)
    timesteps, sigmas = schedule.sigma_timesteps(steps)
    x = x * schedule.init_sigma(sigmas)
    for i, t in enumerate(timesteps.to(x.device)):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        out = model(x / ((sigma**2 + 1) ** 0.5), t)
        x32 = x.to(torch.float32)
        derivative = (x32 - sigma_x0(cfg, out, x32, sigma)) / sigma
        if ancestral:
            sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
            sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
            x32 = x32 + derivative * (sigma_down - sigma)
            x32 = x32 + randn(out.shape, generator, out.device, out.dtype) * sigma_up
        else:
            x32 = x32 + derivative * (sigma_next - sigma)
        x = x32.to(out.dtype)
        if callback is not None and reports(i, len(timesteps), steps, ORDER):
            callback(i, t, x)
    return x


def sample(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
           generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    return _run(model, x, schedule, steps, False, generator, callback)


def sample_ancestral(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
                     generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    return _run(model, x, schedule, steps, True, generator, callback)
