"""Samplers by name. Each is one small module with `sample(model, x, schedule, steps, ...)` and
`ORDER` (model evaluations per step); see schedule.py for the shared contract."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from ..config import SchedulerConfig, read_json, scheduler_config
from ..errors import CheckpointError
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


class _Planned(Exception):
    """Raised by Scheduler.validate's stand-in model: the timesteps were built and checked."""


class Scheduler:
    """A named sampler bound to the checkpoint's noise schedule: what the pipeline calls."""

    def __init__(self, name: str, config: SchedulerConfig):
        self.name = name
        self.sampler = get_sampler(name)
        self.config = config
        self.schedule = NoiseSchedule(config)
        self.order = self.sampler.order

    @classmethod
    def from_pretrained(cls, folder: str | Path, name: Optional[str] = None) -> "Scheduler":
        """`scheduler/scheduler_config.json`; `name` None = the class the checkpoint names.

        A name builds what diffusers' `Class.from_config(checkpoint's config)` builds: the keys
        that class reads, its own defaults for the rest. One exception: "pndm" is PLMS
        (skip_prk_steps=True) unless the file says otherwise, as MusicLDM uses it.
        """
        path = Path(folder) / "scheduler_config.json"
        return cls.from_config(read_json(path), name, str(path))

    @classmethod
    def from_config(cls, data: dict, name: Optional[str] = None, source: str = "scheduler_config.json") -> "Scheduler":
        if name is None:  # the checkpoint's own class, exactly as diffusers builds it
            class_name = data.get("_class_name")
            if class_name not in CLASS_NAMES:
                raise CheckpointError(f"{source}: _class_name={class_name!r} is not a supported scheduler "
                                      f"(musicldm_core supports {', '.join(CLASS_NAMES)})")
            return cls(CLASS_NAMES[class_name], scheduler_config(class_name, data, source))
        get_sampler(name)
        if name == "pndm" and "skip_prk_steps" not in data:
            data = {**data, "skip_prk_steps": True}
        class_name = {v: k for k, v in CLASS_NAMES.items()}[name]
        return cls(name, scheduler_config(class_name, data, source))

    def sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int,
               **kwargs) -> torch.Tensor:
        return self.sampler.sample(model, x, self.schedule, steps, **kwargs)

    def validate(self, steps: int) -> None:
        """Raise now, before any model runs, if this sampler cannot take `steps` steps.

        Every sampler builds and checks its timesteps before its first model call, so a dry run
        that stops at that call validates exactly what a real run would.
        """
        def stop(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            raise _Planned

        try:
            self.sample(stop, torch.zeros(1), steps)
        except _Planned:
            pass

    def __repr__(self) -> str:
        return f"Scheduler({self.name!r})"


__all__ = ["SAMPLERS", "CLASS_NAMES", "Sampler", "Scheduler", "NoiseSchedule", "check_steps", "get_sampler"]
