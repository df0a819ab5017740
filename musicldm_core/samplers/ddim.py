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
from .schedule import Callback, Model, NoiseSchedule, check_steps, predicted_x0_and_eps, reports

ORDER = 1


def sample(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
           generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    cfg = schedule.config
    steps = check_steps(steps, cfg.num_train_timesteps)
    ac = schedule.alphas_cumprod
    final = torch.tensor(1.0) if cfg.set_alpha_to_one else ac[0]
    timesteps = torch.from_numpy(schedule.integer_timesteps(steps)).to(x.device)
    x = x * 1.0  # init_noise_sigma
    for i, t in enumerate(timesteps):
        out = model(x, t)
        # 1. alpha-bar at t and at the previous timestep t - T/N
        prev_t = int(t) - cfg.num_train_timesteps // steps
        alpha_prod_t = ac[int(t)]
        alpha_prod_t_prev = ac[prev_t] if prev_t >= 0 else final
        # 2. predicted x_0 and epsilon (eq. 12), clipped if the config asks
        x0, eps = predicted_x0_and_eps(cfg, out, x, alpha_prod_t)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        # 3. sigma_t (eq. 16)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** (0.5)
        # 4. x_{t-1} = sqrt(a_{t-1}) x_0 + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z   (eq. 12)
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * eps
        x = alpha_prod_t_prev ** (0.5) * x0 + direction
        if eta > 0:
            x = x + std_dev_t * randn(out.shape, generator, out.device, out.dtype)
        if callback is not None and reports(i, len(timesteps), steps, ORDER):
            callback(i, t, x)
    return x
