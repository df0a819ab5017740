"""PNDM (Liu et al. 2022, arXiv 2202.09778): pseudo linear multistep on DDIM's transfer.

Reference: diffusers 0.36.0 `PNDMScheduler`. With skip_prk_steps (the usual choice, PLMS) the
first step is a pseudo improved-Euler (two model evaluations at the same t), then Adams-Bashforth
combinations of up to four past outputs (eq. 12). Without it, three pseudo Runge-Kutta steps
(four evaluations each, at t and t - T/2N) start the history. `ets` holds past model outputs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise import Generator
from .schedule import NoiseSchedule, Step, Timesteps, check_steps, eps_from_vp


def _transfer(schedule: NoiseSchedule, x: torch.Tensor, t: int, prev_t: int, out: torch.Tensor) -> torch.Tensor:
    """phi(x_t, eps, t, t') of eq. 11: DDIM's deterministic step from t to prev_t."""
    ac = schedule.alphas_cumprod
    alpha_prod_t = ac[t]
    alpha_prod_t_prev = ac[prev_t] if prev_t >= 0 else (torch.tensor(1.0) if schedule.config.set_alpha_to_one
                                                        else ac[0])
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    out = eps_from_vp(schedule.config.prediction_type, out, x, alpha_prod_t**0.5, beta_prod_t**0.5)
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
    denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5)
    return sample_coeff * x - (alpha_prod_t_prev - alpha_prod_t) * out / denom


def _layout(schedule: NoiseSchedule, steps: int) -> tuple[np.ndarray, int]:
    """(all model-evaluation timesteps, how many of them are PRK) as diffusers lays them out."""
    ts = schedule.integer_timesteps(steps)[::-1]  # ascending
    if schedule.config.skip_prk_steps:
        return np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy(), 0
    half = schedule.num_train_timesteps // steps // 2
    prk = np.array(ts[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
    prk = prk[:-1].repeat(2)[1:-1][::-1].copy()
    return np.concatenate([prk, ts[:-3][::-1]]).astype(np.int64), len(prk)


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    cfg = schedule.config
    if cfg.prediction_type == "sample":
        raise ValueError("scheduler_config.json: prediction_type='sample' is not supported by PNDM")
    steps = check_steps(steps, cfg.num_train_timesteps)
    if not cfg.skip_prk_steps and steps < 4:  # diffusers fails there (its PRK warm-up needs 4 timesteps)
        raise ValueError(f"num_inference_steps={steps}: PNDM with Runge-Kutta warm-up steps (skip_prk_steps=false) "
                         "needs at least 4 steps")
    return Timesteps(steps, torch.from_numpy(_layout(schedule, steps)[0]))


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    stride = schedule.num_train_timesteps // ts.steps
    all_ts, n_prk = _layout(schedule, ts.steps)
    ets: list[torch.Tensor] = []  # past model outputs (as eps)
    x_start = None  # x at the start of the current multi-evaluation step
    prk_sum = 0.0

    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        nonlocal ets, x_start, prk_sum
        t = int(all_ts[i])
        if i < n_prk:  # pseudo Runge-Kutta: evaluations k = 0..3 of the step starting at all_ts[i//4*4]
            k = i % 4
            prev_t = t - (0 if i % 2 else stride // 2)
            t = int(all_ts[i // 4 * 4])
            if k == 0:
                prk_sum = prk_sum + 1 / 6 * out
                ets.append(out)
                x_start = x
            elif k in (1, 2):
                prk_sum = prk_sum + 1 / 3 * out
            else:
                out = prk_sum + 1 / 6 * out
                prk_sum = 0.0
            return _transfer(schedule, x_start, t, prev_t, out)
        # pseudo linear multistep
        prev_t = t - stride
        if i != 1:
            ets = ets[-3:] + [out]
        else:  # second evaluation of the first step: same t, pseudo improved Euler
            prev_t, t = t, t + stride
        if len(ets) == 1 and i == 0:
            x_start = x
        elif len(ets) == 1 and i == 1:
            out = (out + ets[-1]) / 2
            x, x_start = x_start, None
        elif len(ets) == 2:
            out = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            out = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            out = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return _transfer(schedule, x, t, prev_t, out)

    return step
