"""Heun's second-order method in sigma (Karras et al. 2022, Algorithm 1, s_churn = 0).

Reference: diffusers 0.36.0 `HeunDiscreteScheduler`: two model evaluations per step (an Euler
predictor at sigma_i, a corrector at sigma_{i+1} averaging the two slopes), except the last step
(sigma_{i+1} = 0), which is the predictor alone. As in the reference, the timesteps list each inner
timestep and sigma twice (t0, t1, t1, t2, t2, ...; s0, s1, s1, ..., 0), one entry per evaluation.
"""

from __future__ import annotations

import torch

from ..noise import Generator
from .schedule import NoiseSchedule, Step, Timesteps, check_steps, x0_from_ve


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    steps = check_steps(steps, schedule.num_train_timesteps)
    ts, sig = schedule.sigma_timesteps(steps)
    sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
    timesteps = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
    return Timesteps(steps, timesteps, evals_per_step=2, sigmas=sigmas, init_scale=schedule.init_sigma(sigmas),
                scale_input=True)


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    cfg = schedule.config
    predictor = None  # (slope, dt, x) of the Euler predictor while its corrector is pending

    def slope(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = x0_from_ve(cfg.prediction_type, out, x, sigma)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return (x - x0) / sigma

    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        nonlocal predictor
        if predictor is None:  # predictor (Euler) from sigma to sigma_next; at sigma_next = 0, the result
            derivative, dt = slope(out, x, ts.sigmas[i]), ts.sigmas[i + 1] - ts.sigmas[i]
            predictor = (derivative, dt, x)
            return x + derivative * dt
        first, dt, x_start = predictor  # corrector: average the slopes at both ends
        predictor = None
        return x_start + (first + slope(out, x, ts.sigmas[i])) / 2 * dt

    return step
