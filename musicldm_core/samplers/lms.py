"""LMS: linear multistep on the probability-flow ODE in sigma (Karras et al. 2022's form).

Reference: diffusers 0.36.0 `LMSDiscreteScheduler` (order 4). dx/dsigma = (x - x0_hat) / sigma;
x_{k+1} = x_k + sum_j c_j d_{k-j}, with c_j the integral over [sigma_k, sigma_{k+1}] of the
Lagrange basis polynomial of node j.

The reference integrates with scipy.integrate.quad, and its integrand computes in float32 (its
sigmas are float32 tensors). For a cubic, quad's first 21-point Gauss-Kronrod pass (QUADPACK's
dqk21) already meets the tolerance, so that pass with the integrand evaluated in float32 IS the
reference's coefficient, to the last bit; the exact polynomial integral is not (it differs by the
float32 rounding, up to 3e-5 on Karras sigmas' closely spaced tail). No scipy needed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise import Generator
from .schedule import NoiseSchedule, Step, Timesteps, check_steps, x0_from_ve

LMS_ORDER = 4  # how many past derivatives the multistep formula combines

# QUADPACK dqk21: Kronrod abscissae on [-1, 1] (the 10-point Gauss nodes at odd positions), weights
_KRONROD_X = (0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
              0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
              0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
              0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
              0.294392862701460198131126603103866, 0.148874338981631210884826001129720)
_KRONROD_W = (0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
              0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
              0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
              0.123491976262065851077208836938580, 0.134709217311473325928054001771707,
              0.142775938577060080797094273138717, 0.147739104901338491374841515972068)
_KRONROD_W_CENTRE = 0.149445554002916905664936468389821


def gauss_kronrod_21(f, a: float, b: float) -> float:
    """QUADPACK's 21-point Gauss-Kronrod rule of f over [a, b] (exact for polynomials of degree <= 31)."""
    centre, half = 0.5 * (a + b), 0.5 * (b - a)
    total = _KRONROD_W_CENTRE * f(centre)
    for i in (1, 3, 5, 7, 9, 0, 2, 4, 6, 8):  # the Gauss nodes first, then the Kronrod ones, as dqk21 sums
        x = half * _KRONROD_X[i]
        total += _KRONROD_W[i] * (f(centre - x) + f(centre + x))
    return total * half


def lms_coefficient(sigmas: list[float], order: int, k: int, j: int) -> float:
    """Integral from sigma_k to sigma_{k+1} of the Lagrange basis polynomial for node sigma_{k-j},
    the basis evaluated in float32 as the reference evaluates it."""
    s = np.asarray(sigmas, dtype=np.float32)

    def basis(tau: float) -> float:
        prod = np.float32(1.0)
        for m in range(order):
            if m != j:
                prod = np.float32(prod * ((np.float32(tau) - s[k - m]) / (s[k - j] - s[k - m])))
        return float(prod)

    return gauss_kronrod_21(basis, float(s[k]), float(s[k + 1]))


def timesteps(schedule: NoiseSchedule, steps: int) -> Timesteps:
    steps = check_steps(steps, schedule.num_train_timesteps)
    timesteps, sigmas = schedule.sigma_timesteps(steps)
    return Timesteps(steps, timesteps, sigmas=sigmas, init_scale=schedule.init_sigma(sigmas), scale_input=True)


def stepper(schedule: NoiseSchedule, ts: Timesteps, eta: float = 0.0, generator: Generator = None) -> Step:
    node = ts.sigmas.double().tolist()  # the reference's quad evaluates its integrand at these float32 values
    derivatives: list[torch.Tensor] = []  # the last LMS_ORDER slopes d, oldest first

    def step(i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        nonlocal derivatives
        sigma = ts.sigmas[i]
        derivatives = (derivatives + [(x - x0_from_ve(schedule.config.prediction_type, out, x, sigma)) / sigma])
        derivatives = derivatives[-LMS_ORDER:]
        order = min(i + 1, LMS_ORDER)
        coeffs = [lms_coefficient(node, order, i, j) for j in range(order)]
        return x + sum(c * d for c, d in zip(coeffs, reversed(derivatives)))

    return step
