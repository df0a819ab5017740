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
from .schedule import NoiseSchedule, Step, Timesteps, check_steps, x0_from_ve


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    steps = check_steps(steps, schedule.num_train_timesteps)
    timesteps, sigmas = schedule.sigma_timesteps(steps)
    return Timesteps(steps, timesteps, sigmas=sigmas, init_scale=schedule.init_sigma(sigmas), scale_input=True)


def timesteps_ancestral(schedule: NoiseSchedule, steps: int) -> Timesteps:
    if schedule.config.prediction_type == "sample":
        raise ValueError("scheduler_config.json: prediction_type='sample' is not supported by Euler ancestral")
    return timesteps(schedule, steps)


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = ts.sigmas[i], ts.sigmas[i + 1]
        x32 = x.to(torch.float32)
        derivative = (x32 - x0_from_ve(schedule.config.prediction_type, out, x32, sigma)) / sigma
        return (x32 + derivative * (sigma_next - sigma)).to(out.dtype)

    return step


def stepper_ancestral(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = ts.sigmas[i], ts.sigmas[i + 1]
        x32 = x.to(torch.float32)
        derivative = (x32 - x0_from_ve(schedule.config.prediction_type, out, x32, sigma)) / sigma
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x32 = x32 + derivative * (sigma_down - sigma)
        x32 = x32 + randn(out.shape, generator, out.device, out.dtype) * sigma_up
        return x32.to(out.dtype)

    return step
