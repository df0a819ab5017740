"""Samplers by name. Each is one small module with `sample(model, x, schedule, steps, ...)` and
`ORDER` (model evaluations per step); see schedule.py for the shared contract."""

from __future__ import annotations

from typing import Callable, NamedTuple

from . import ddim, dpmsolver, euler, heun, lms, pndm
from .schedule import NoiseSchedule, check_steps


class Sampler(NamedTuple):
    sample: Callable
    order: int


SAMPLERS = {
    "ddim": Sampler(ddim.sample, ddim.ORDER),
    "pndm": Sampler(pndm.sample, pndm.ORDER),
    "lms": Sampler(lms.sample, lms.ORDER),
    "euler": Sampler(euler.sample, euler.ORDER),
    "euler_ancestral": Sampler(euler.sample_ancestral, euler.ORDER),
    "heun": Sampler(heun.sample, heun.ORDER),
    "dpmsolver++": Sampler(dpmsolver.sample, dpmsolver.ORDER),
}

# diffusers class names found in scheduler_config.json -> our names
CLASS_NAMES = {
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "LMSDiscreteScheduler": "lms",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmsolver++",
}


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"scheduler: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


__all__ = ["SAMPLERS", "CLASS_NAMES", "Sampler", "NoiseSchedule", "check_steps", "get_sampler"]
