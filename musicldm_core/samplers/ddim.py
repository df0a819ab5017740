"""DDIM (Song et al. 2021, arXiv 2010.02502), MusicLDM's published sampler.

Reference: diffusers 0.36.0 `DDIMScheduler.step`. Legend, code name -> paper symbol:
    alpha_prod_t       -> alpha_t          (alpha-bar at the current timestep t)
    alpha_prod_t_prev  -> alpha_{t-1}      (at t - T/N; the final step uses alpha-bar_0, or 1 with set_alpha_to_one)
    x0, eps            -> x_0 and epsilon predicted from the model output ("predicted x_0", eq. 12)
    std_dev_t          -> sigma_t = eta * sqrt((1 - a_{t-1}) / (1 - a_t)) * sqrt(1 - a_t / a_{t-1})  (eq. 16)
"""

from __future__ import annotations

import torch

from ..noise import Generator, randn
from .schedule import NoiseSchedule, Step, Timesteps, check_steps, eps_from_vp, x0_from_vp


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    steps = check_steps(steps, schedule.num_train_timesteps)
    return Timesteps(steps, torch.from_numpy(schedule.integer_timesteps(steps)))


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    cfg, ac = schedule.config, schedule.alphas_cumprod
    final = torch.tensor(1.0) if cfg.set_alpha_to_one else ac[0]
    stride = cfg.num_train_timesteps // ts.spaced_for

    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # 1. alpha-bar at t and at the previous timestep t - T/N
        t = int(ts.timesteps[i])
        alpha_prod_t = ac[t]
        alpha_prod_t_prev = ac[t - stride] if t - stride >= 0 else final
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        # 2. predicted x_0 and epsilon (eq. 12), x_0 clipped if the config asks
        scales = (alpha_prod_t ** (0.5), beta_prod_t ** (0.5))
        x0 = x0_from_vp(cfg.prediction_type, out, x, *scales)
        eps = eps_from_vp(cfg.prediction_type, out, x, *scales)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        # 3. sigma_t (eq. 16)
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** (0.5)
        # 4. x_{t-1} = sqrt(a_{t-1}) x_0 + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z   (eq. 12)
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * eps
        x = alpha_prod_t_prev ** (0.5) * x0 + direction
        if eta > 0:
            x = x + std_dev_t * randn(out.shape, generator, out.device, out.dtype)
        return x

    return step
