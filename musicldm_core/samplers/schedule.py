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

    def sigma_timesteps(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps float32 (N,), sigmas float32 (N+1,) ending in 0) for LMS/Euler/Heun.

        sigma(t) = sqrt((1 - alpha-bar_t) / alpha-bar_t), linearly interpolated at fractional t.
        """
        ts = self.check(self.spaced(steps).astype(np.float32), steps)
        return torch.from_numpy(ts), self.sigmas_at(ts)

    def sigmas_at(self, timesteps: np.ndarray) -> torch.Tensor:
        """float32 sigmas (N+1,) at the given (possibly fractional) timesteps, then a final 0."""
        table = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()  # float32, as the reference
        sigmas = np.interp(timesteps, np.arange(0, len(table)), table)
        return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))

    def init_sigma(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Initial noise scale of the sigma samplers (diffusers' `init_noise_sigma`)."""
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return sigmas.max()
        return (sigmas.max() ** 2 + 1) ** 0.5


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
