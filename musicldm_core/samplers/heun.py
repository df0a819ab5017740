"""Heun's second-order method in sigma (Karras et al. 2022, Algorithm 1, s_churn = 0).

Reference: diffusers 0.36.0 `HeunDiscreteScheduler`: two model evaluations per step (an Euler
predictor at sigma_i, a corrector at sigma_{i+1} averaging the two slopes), except the last step
(sigma_{i+1} = 0), which is the predictor alone. The reference's timesteps list holds each inner timestep
twice; callbacks see that list's indices, and one step is ORDER = 2 evaluations.
"""

from __future__ import annotations

import torch

from ..noise import Generator
from .schedule import Callback, Model, NoiseSchedule, check_steps, reports, sigma_x0

ORDER = 2


def sample(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
           generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    cfg = schedule.config
    steps = check_steps(steps, cfg.num_train_timesteps)
    ts, sig = schedule.sigma_timesteps(steps)
    # Interleaved as the reference: t0, t1, t1, t2, t2, ...; sigmas s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0
    sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
    timesteps = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
    x = x * schedule.init_sigma(sigmas)
    r = cfg.clip_sample_range

    def clip(x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-r, r) if cfg.clip_sample else x0

    first = None  # (slope, dt, x) of the predictor while the corrector is pending
    for i, t in enumerate(timesteps.to(x.device)):
        out = model(x / ((sigmas[i] ** 2 + 1) ** 0.5), t)
        if first is None:  # predictor (Euler) from sigma to sigma_next
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            derivative = (x - clip(sigma_x0(cfg, out, x, sigma))) / sigma
            dt = sigma_next - sigma
            first = (derivative, dt, x)
            x = x + derivative * dt  # at the last step (sigma_next = 0) this is the result
        else:  # corrector: average the slopes at both ends
            sigma_next = sigmas[i]
            derivative = (x - clip(sigma_x0(cfg, out, x, sigma_next))) / sigma_next
            prev_derivative, dt, x_start = first
            x = x_start + (prev_derivative + derivative) / 2 * dt
            first = None
        if callback is not None and reports(i, len(timesteps), steps, ORDER):
            callback(i, t, x)
    return x
