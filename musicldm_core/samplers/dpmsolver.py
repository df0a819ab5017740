"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095): second-order multistep in log-SNR.

Reference: diffusers 0.36.0 `DPMSolverMultistepScheduler`, algorithm dpmsolver++, solver order 1
or 2, solver_type midpoint or heun, lower_order_final / euler_at_final, final sigma 0 or
sigma_min, optional Karras sigmas. Legend:
    alpha_t, sigma_t -> the VP scalings with x_t = alpha_t x_0 + sigma_t eps (from sigma = sigma_t / alpha_t)
    lambda_t         -> log(alpha_t / sigma_t), h = lambda_t - lambda_s0
    D0, D1           -> the x0 prediction and its first divided difference (eq. 18, "2M")
The first step is first-order (DDIM in x0 form), and so is the last where the reference says so.
Timesteps use the solver's own spacing with N+1 points, as the reference (Karras: the whole
trained range); the update is computed in float32.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise import Generator
from .schedule import (NoiseSchedule, Step, Timesteps, check_steps, karras_sigmas, sigma_to_t, vp_scales,
                       x0_from_vp)


def _timesteps(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    cfg = schedule.config
    T = cfg.num_train_timesteps  # lambda_min_clipped = -inf: nothing is clipped
    if cfg.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if cfg.timestep_spacing == "leading":
        ratio = T // (steps + 1)
        if ratio == 0:  # every timestep would be steps_offset; diffusers runs off its own schedule here
            raise ValueError(f"num_inference_steps={steps} with timestep_spacing='leading' gives timesteps "
                             f"outside 0..{T - 1} for DPM-Solver++; use at most {T - 1} steps or 'trailing'")
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
    return np.arange(T, 0, -T / steps).round().copy().astype(np.int64) - 1


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    """int64 timesteps (N,) and float32 sigmas (N+1,) as the reference's set_timesteps."""
    cfg = schedule.config
    steps = check_steps(steps, cfg.num_train_timesteps)
    if cfg.use_karras_sigmas:  # the whole trained range, Karras-spaced; timesteps rounded back
        table = schedule.sigma_table()
        sigmas = karras_sigmas(float(table[0]), float(table[-1]), steps, cfg)
        ts = sigma_to_t(sigmas, np.log(table)).round().astype(np.int64)
    else:
        ts = schedule.check(_timesteps(schedule, steps), steps)
        sigmas = schedule.sigmas_at(ts)
    if len(np.unique(sigmas)) != len(sigmas):  # a zero log-SNR step: diffusers divides by it and returns NaN
        raise ValueError(f"num_inference_steps={steps} with timestep_spacing={cfg.timestep_spacing!r} repeats a "
                         "timestep, which DPM-Solver++ cannot step over; use fewer steps or another spacing")
    sigmas = torch.from_numpy(np.concatenate([sigmas, [schedule.final_sigma()]]).astype(np.float32))
    return Timesteps(steps, torch.from_numpy(ts), sigmas=sigmas)


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    cfg, sigmas, n = schedule.config, ts.sigmas, len(ts.timesteps)
    # the reference ends first-order at the last step in these cases
    last_first_order = cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
    x0_history: list[torch.Tensor] = []

    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        nonlocal x0_history
        # 1. the model output as an x0 prediction
        alpha_s0, sigma_s0 = vp_scales(sigmas[i])
        x0 = x0_from_vp(cfg.prediction_type, out, x, alpha_s0, sigma_s0)
        x0_history = (x0_history + [x0])[-2:]
        # 2. log-SNR step from s0 to t
        alpha_t, sigma_t = vp_scales(sigmas[i + 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        x32 = x.to(torch.float32)
        if cfg.solver_order == 1 or i == 0 or (i == n - 1 and last_first_order):
            new = (sigma_t / sigma_s0) * x32 - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        else:  # 2M: D1 is the divided difference of the last two x0 predictions
            alpha_s1, sigma_s1 = vp_scales(sigmas[i - 1])
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            m0, m1 = x0_history[-1], x0_history[-2]
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            if cfg.solver_type == "midpoint":
                new = ((sigma_t / sigma_s0) * x32 - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                       - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1)
            else:  # heun
                new = ((sigma_t / sigma_s0) * x32 - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                       + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1)
        return new.to(x0.dtype)

    return step
