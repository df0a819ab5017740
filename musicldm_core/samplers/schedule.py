"""The noise schedule every sampler shares, the timesteps of a run, and the prediction formulas.

A sampler is two functions (see samplers/__init__.py, which runs the loop once for all):

* timesteps(schedule, steps) -> Timesteps: pure. The timesteps the model will see, the sigmas, the initial
  noise scale. Building it is the check of a step count, so it runs before any model does.
* stepper(schedule, ts, eta, generator) -> step(i, x, out) -> x: the update after model
  evaluation i, with any multistep history kept inside the closure (nothing survives a run).

Each sampler computes in the variable diffusers uses -- integer timesteps and float32
alphas_cumprod for DDIM/PNDM/DPM-Solver, float32 sigmas for LMS/Euler/Heun -- so its trajectory
equals the reference's to rounding, not just mathematically. Two parameterisations of x_t appear:
    VP ("variance preserving"):  x_t = alpha_t x_0 + sigma_t eps,   alpha_t^2 + sigma_t^2 = 1
    VE (Karras' sigma form):     x   = x_0 + sigma eps,             with x_t = x / sqrt(sigma^2 + 1)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from .config import SchedulerConfig

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def check_steps(steps, num_train_timesteps: int) -> int:
    """The number of sampling steps must be an integer in [1, num_train_timesteps]."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"num_inference_steps must be an integer, got {steps!r}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be between 1 and {num_train_timesteps}, got {steps}")
    return int(steps)


@dataclass(frozen=True)
class Timesteps:
    """A run of `steps` steps, fixed before any model evaluation.

    timesteps: (E,) the t the model is given at each of the E evaluations (CPU; int64, or float32
        for the sigma samplers). E = steps * evals_per_step, plus any warm-up evaluations.
    sigmas: float32 VE sigmas the steps move between (sigma samplers and DPM-Solver), else None.
    init_scale: x_T = unit noise * init_scale (diffusers' `init_noise_sigma`).
    scale_input: the model sees x / sqrt(sigmas[i]^2 + 1) instead of x (VE -> VP).
    spaced_for: the step count the timesteps were spaced for (DDIM steps T // spaced_for back);
        more than `steps` when the timesteps start part way (from_step).
    """

    steps: int
    timesteps: torch.Tensor
    evals_per_step: int = 1
    sigmas: Optional[torch.Tensor] = None
    init_scale: Union[float, torch.Tensor] = 1.0
    scale_input: bool = False
    spaced_for: int = 0

    def __post_init__(self):
        if not self.spaced_for:
            object.__setattr__(self, "spaced_for", self.steps)

    def from_step(self, k: int) -> "Timesteps":
        """The last steps - k steps of these timesteps (audio-to-audio starts part way down the schedule).

        Each sampler's history starts afresh there, as in diffusers' image-to-image pipelines.
        """
        if not 0 <= k < self.steps:
            raise ValueError(f"from_step: {k} is not a step of a {self.steps}-step plan")
        first = k * self.evals_per_step  # Heun (t0, t1, t1, t2, t2, ...): 2k is t_k's predictor
        return Timesteps(self.steps - k, self.timesteps[first:], self.evals_per_step,
                    None if self.sigmas is None else self.sigmas[first:], self.init_scale, self.scale_input,
                    self.spaced_for)

    def reports(self, i: int) -> bool:
        """diffusers' pipeline loop: does model evaluation i complete a step (so callbacks run)?"""
        evaluations = len(self.timesteps)
        warmup = evaluations - self.steps * self.evals_per_step
        return i == evaluations - 1 or ((i + 1) > warmup and (i + 1) % self.evals_per_step == 0)


class NoiseSchedule:
    """alpha-bar_t = prod(1 - beta) from the config's beta schedule, and the timestep spacings, as diffusers computes
    them."""

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
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, (T,): what every sampler reads

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
            ts = sigma_to_t(sigmas, np.log(table)).astype(np.float32)
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
    """The (fractional) timesteps (N,) of sigmas (N,): linear interpolation of log sigma in the table (T,),
    clamped to 0 .. T-1."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(np.shape(sigma))


def vp_scales(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VE sigma -> VP (alpha_t, sigma_t): alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def x0_from_vp(prediction_type: str, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
               sigma: torch.Tensor) -> torch.Tensor:
    """x0-hat from a model output at x = alpha x0 + sigma eps (eps-, x0- or v-prediction)."""
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha
    if prediction_type == "sample":
        return out
    return alpha * x - sigma * out  # v = alpha eps - sigma x0


def eps_from_vp(prediction_type: str, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                sigma: torch.Tensor) -> torch.Tensor:
    """eps-hat from a model output at x = alpha x0 + sigma eps (eps-, x0- or v-prediction)."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "sample":
        return (x - alpha * out) / sigma
    return alpha * out + sigma * x


def x0_from_ve(prediction_type: str, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0-hat from a model output at x = x0 + sigma eps (the model saw x / sqrt(sigma^2 + 1))."""
    if prediction_type == "epsilon":
        return x - sigma * out
    if prediction_type == "v_prediction":
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    return out
