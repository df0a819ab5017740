"""The noise schedule every sampler shares, and the contract they all follow.

Contract (k-diffusion style, one function per sampler):

    sample(model, x, schedule, steps, *, eta=0.0, generator=None, callback=None) -> x_0

* model(x_in, t) -> model output (noise, v or x0, as the config's prediction_type says); x_in is
  the latent already scaled for the model (sigma samplers divide by sqrt(sigma^2 + 1)) and t is
  the discrete timestep the reference passes to its UNet (int64, or float32 for sigma samplers).
* x is unit Gaussian noise; the sampler multiplies it by its initial sigma (`init_noise_sigma`).
* callback(i, t, x) runs where diffusers' pipeline loop reports a step (`reports`), with i the
  index of the model evaluation; steps = i // ORDER.
* Multistep history lives in local lists; nothing is stored between calls.

Each sampler computes in the variable diffusers uses — integer timesteps and float32
alphas_cumprod for DDIM/PNDM/DPM-Solver, float32 sigmas for LMS/Euler/Heun — so its trajectory
equals the reference's to rounding, not just mathematically.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import numpy as np
import torch

from ..config import SchedulerConfig

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]


def check_steps(steps, num_train_timesteps: int) -> int:
    """The number of sampling steps must be an integer in [1, num_train_timesteps]."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"num_inference_steps must be an integer, got {steps!r}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be between 1 and {num_train_timesteps}, got {steps}")
    return int(steps)


def reports(i: int, evaluations: int, steps: int, order: int) -> bool:
    """diffusers' pipeline loop: does model evaluation i (of `evaluations`) complete a step?"""
    warmup = evaluations - steps * order
    return i == evaluations - 1 or ((i + 1) > warmup and (i + 1) % order == 0)


class NoiseSchedule:
    """beta_t, alpha-bar_t = prod(1 - beta) and the timestep spacings, as diffusers computes them."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        T = config.num_train_timesteps
        if config.trained_betas is not None:
            betas = torch.tensor(config.trained_betas, dtype=torch.float32)
        elif config.beta_schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float32)
        elif config.beta_schedule == "scaled_linear":
            betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float32) ** 2
        else:  # squaredcos_cap_v2 (Nichol & Dhariwal's cosine schedule)
            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                                 dtype=torch.float32)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, (T,)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def spaced(self, steps: int) -> np.ndarray:
        """`steps` timesteps, descending, float64, per config.timestep_spacing (before rounding/casting)."""
        T, spacing = self.config.num_train_timesteps, self.config.timestep_spacing
        if spacing == "linspace":
            return np.linspace(0, T - 1, steps)[::-1].copy()
        if spacing == "leading":
            return (np.arange(0, steps) * (T // steps)).round()[::-1] + self.config.steps_offset
        return np.round(np.arange(T, 0, -T / steps)) - 1  # trailing

    def check(self, timesteps: np.ndarray, steps: int) -> np.ndarray:
        """The spaced timesteps must lie within the trained range [0, T-1].

        "leading" spacing with steps_offset=1 reaches timestep T at T steps, where diffusers fails
        with an IndexError (or, for the sigma samplers, silently reuses sigma(T-1)): say so instead.
        """
        cfg = self.config
        if timesteps.max() > cfg.num_train_timesteps - 1:
            raise ValueError(
                f"num_inference_steps={steps} with timestep_spacing={cfg.timestep_spacing!r} and steps_offset="
                f"{cfg.steps_offset} gives timesteps outside 0..{cfg.num_train_timesteps - 1}; "
                f"use fewer steps or timestep_spacing 'trailing' or 'linspace'")
        return timesteps

    def integer_timesteps(self, steps: int) -> np.ndarray:
        """DDIM/PNDM timesteps: int64, linspace rounded."""
        ts = self.spaced(steps)
        return self.check((ts.round() if self.config.timestep_spacing == "linspace" else ts).astype(np.int64), steps)

    def sigma_table(self) -> np.ndarray:
        """sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t) for t = 0..T-1, float32 as the reference."""
        return (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()

    def sigma_timesteps(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps float32 (N,), sigmas float32 (N+1,)) for LMS/Euler/Heun.

        sigma(t) linearly interpolated at the spaced (possibly fractional) t; with
        use_karras_sigmas, N sigmas spaced as Karras et al. (rho = 7) between the end points and
        their timesteps found back by interpolating log sigma; then the final sigma.
        """
        ts = self.check(self.spaced(steps).astype(np.float32), steps)
        table = self.sigma_table()
        sigmas = np.interp(ts, np.arange(0, len(table)), table)
        if self.config.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), steps, self.config)
            ts = np.array([sigma_to_t(sigma, np.log(table)) for sigma in sigmas]).astype(np.float32)
        return torch.from_numpy(ts), torch.from_numpy(np.concatenate([sigmas, [self.final_sigma()]]).astype(np.float32))

    def sigmas_at(self, timesteps: np.ndarray) -> np.ndarray:
        """float64 sigmas (N,) at the given (possibly fractional) timesteps, interpolated in the float32 table."""
        table = self.sigma_table()
        return np.interp(timesteps, np.arange(0, len(table)), table)

    def final_sigma(self) -> float:
        """The sigma a sampler ends at: 0, or sigma_0 with final_sigmas_type="sigma_min"."""
        if self.config.final_sigmas_type == "sigma_min":
            return float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return 0.0

    def init_sigma(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Initial noise scale of the sigma samplers (diffusers' `init_noise_sigma`)."""
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return sigmas.max()
        return (sigmas.max() ** 2 + 1) ** 0.5


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, config: SchedulerConfig) -> np.ndarray:
    """Karras et al. 2022 (eq. 5, rho = 7): `steps` sigmas from sigma_max down to sigma_min, float64.

    The config's sigma_min / sigma_max (Euler's keys) replace the end points when set.
    """
    lo = config.sigma_min if config.sigma_min is not None else sigma_min
    hi = config.sigma_max if config.sigma_max is not None else sigma_max
    rho = 7.0
    ramp = np.linspace(0, 1, steps)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timestep of a sigma: linear interpolation of log sigma in the table."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(np.shape(sigma))


def predicted_x0_and_eps(config: SchedulerConfig, out: torch.Tensor, x: torch.Tensor,
                         alpha_prod_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0-hat and eps-hat from a model output, for the three prediction types (DDIM's formulas)."""
    beta_prod_t = 1 - alpha_prod_t
    if config.prediction_type == "epsilon":
        return (x - beta_prod_t ** (0.5) * out) / alpha_prod_t ** (0.5), out
    if config.prediction_type == "sample":
        return out, (x - alpha_prod_t ** (0.5) * out) / beta_prod_t ** (0.5)
    return (alpha_prod_t**0.5) * x - (beta_prod_t**0.5) * out, (alpha_prod_t**0.5) * out + (beta_prod_t**0.5) * x


def sigma_x0(config: SchedulerConfig, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0-hat for the sigma samplers (x = x0 + sigma * eps), for the three prediction types."""
    if config.prediction_type == "epsilon":
        return x - sigma * out
    if config.prediction_type == "v_prediction":
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    return out
