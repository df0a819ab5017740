"""LMS: linear multistep on the probability-flow ODE in sigma (Karras et al. 2022's form).

Reference: diffusers 0.36.0 `LMSDiscreteScheduler` (order 4). dx/dsigma = (x - x0_hat) / sigma;
x_{k+1} = x_k + sum_j c_j d_{k-j}, with c_j the integral over [sigma_k, sigma_{k+1}] of the
Lagrange basis polynomial of node j. The reference integrates with scipy.integrate.quad; the
integrand is a polynomial of degree < 4, so integrating it exactly in float64 (numpy.polynomial)
gives the same coefficients without scipy.
"""

from __future__ import annotations

from numpy.polynomial import Polynomial
import torch

from ..noise import Generator
from .schedule import Callback, Model, NoiseSchedule, check_steps, reports, sigma_x0

ORDER = 1
LMS_ORDER = 4


def lms_coefficient(sigmas: list[float], order: int, k: int, j: int) -> float:
    """Integral from sigma_k to sigma_{k+1} of the Lagrange basis polynomial for node sigma_{k-j}."""
    basis = Polynomial([1.0])
    for m in range(order):
        if m != j:
            basis = basis * Polynomial([-sigmas[k - m], 1.0]) / (sigmas[k - j] - sigmas[k - m])
    antiderivative = basis.integ()
    return float(antiderivative(sigmas[k + 1]) - antiderivative(sigmas[k]))


def sample(model: Model, x: torch.Tensor, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
           generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    cfg = schedule.config
    steps = check_steps(steps, cfg.num_train_timesteps)
    timesteps, sigmas = schedule.sigma_timesteps(steps)
    node = sigmas.double().tolist()  # the reference's quad evaluates its integrand at these float32 values
    x = x * schedule.init_sigma(sigmas)
    derivatives: list[torch.Tensor] = []
    for i, t in enumerate(timesteps.to(x.device)):
        sigma = sigmas[i]
        out = model(x / ((sigma**2 + 1) ** 0.5), t)
        derivatives = (derivatives + [(x - sigma_x0(cfg, out, x, sigma)) / sigma])[-LMS_ORDER:]
        order = min(i + 1, LMS_ORDER)
        coeffs = [lms_coefficient(node, order, i, j) for j in range(order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(derivatives)))
        if callback is not None and reports(i, len(timesteps), steps, ORDER):
            callback(i, t, x)
    return x
