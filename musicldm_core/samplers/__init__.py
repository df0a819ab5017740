"""Samplers by name, and the one sampling loop they all run in.

Three names to tell apart: `SchedulerConfig` is scheduler_config.json as read (config.py);
`NoiseSchedule` is the maths it fixes (betas, alpha-bars, sigmas; schedule.py); `Scheduler` is
what the pipeline holds (diffusers' word): a sampler chosen by name, bound to that schedule.
Each sampler module gives a pure `timesteps` and a `stepper` (see schedule.py for the contract).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import read_json
from ..errors import RequestError
from .config import SchedulerConfig, scheduler_config
from ..errors import CheckpointError
from ..noise import Generator
from . import ddim, dpmsolver, euler, heun, lms, pndm
from .schedule import Model, NoiseSchedule, Timesteps, vp_scales

Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]

# name -> (timesteps, stepper)
SAMPLERS = {
    "ddim": (ddim.timesteps, ddim.stepper),
    "pndm": (pndm.timesteps, pndm.stepper),
    "lms": (lms.timesteps, lms.stepper),
    "euler": (euler.timesteps, euler.stepper),
    "euler_ancestral": (euler.timesteps_ancestral, euler.stepper_ancestral),
    "heun": (heun.timesteps, heun.stepper),
    "dpmsolver++": (dpmsolver.timesteps, dpmsolver.stepper),
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


def check_sampler(name: str, argument: str = "scheduler") -> str:
    """A sampler name we have, else a RequestError naming `argument` (errors.arg marks an argument's name)."""
    if name not in SAMPLERS:
        raise RequestError(f"{argument}: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return name


class Scheduler:
    """A named sampler bound to the checkpoint's noise schedule: what the pipeline calls."""

    def __init__(self, name: str, config: SchedulerConfig, data: Optional[dict] = None):
        self.name = check_sampler(name)
        self.config = config
        self.schedule = NoiseSchedule(config)
        self.data = data  # scheduler_config.json as read, to build another sampler from (`with_sampler`)

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
            return cls(CLASS_NAMES[class_name], scheduler_config(class_name, data, source), data)
        check_sampler(name)
        read = {**data, "skip_prk_steps": True} if name == "pndm" and "skip_prk_steps" not in data else data
        class_name = {v: k for k, v in CLASS_NAMES.items()}[name]
        return cls(name, scheduler_config(class_name, read, source), data)

    def with_sampler(self, name: Optional[str]) -> "Scheduler":
        """Sampler `name` on the same checkpoint config (None: this one), as from_pretrained(folder, name) builds it."""
        if name is None:
            return self
        if self.data is None:
            raise ValueError(f"sampler {name!r}: this scheduler was built without its config; set pipe.scheduler")
        return Scheduler.from_config(self.data, name)

    def timesteps(self, steps: int) -> Timesteps:
        """What `steps` steps will do; raises, before any model runs, if this sampler cannot take them."""
        return SAMPLERS[self.name][0](self.schedule, steps)

    def sample(self, model: Model, noise: torch.Tensor, ts: Timesteps, *, eta: float = 0.0,
               generator: Generator = None, callback: Callback = None, init: Optional[torch.Tensor] = None,
               constrain: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Integrate from unit Gaussian `noise` to x_0 along `ts` (from `self.timesteps(steps)`).

        model(x_in, t) -> the model output; callback(i, t, x) runs where diffusers' pipeline
        reports a step, with i the model evaluation's index (its step is i // ts.evals_per_step).
        init: where to start instead of noise * ts.init_scale (audio-to-audio: `add_noise`).
        constrain(i, x) -> x: applied after each completed step (inpainting puts known parts back).
        progress(done, steps): before the first step, then after each completed one.
        """
        step = SAMPLERS[self.name][1](self.schedule, ts, eta=eta, generator=generator)
        x = noise * ts.init_scale if init is None else init
        steps, done = sum(map(ts.reports, range(len(ts.timesteps)))), 0
        if progress is not None:
            progress(0, steps)
        for i, t in enumerate(ts.timesteps.to(noise.device)):
            x_in = x / ((ts.sigmas[i] ** 2 + 1) ** 0.5) if ts.scale_input else x
            x = step(i, x, model(x_in, t))
            if ts.reports(i):
                if constrain is not None:
                    x = constrain(i, x)
                if callback is not None:
                    callback(i, t, x)
                done += 1
                if progress is not None:
                    progress(done, steps)
        return x

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, ts: Timesteps, i: int = 0) -> torch.Tensor:
        """x0 noised to the level the sampler's x has before evaluation i of `ts` (clean at the end),
        in the sampler's own variable: VP for DDIM / PNDM / DPM-Solver, VE x0 + sigma eps for the rest."""
        if i >= len(ts.timesteps):
            return x0
        if ts.scale_input:
            return x0 + ts.sigmas[i] * noise
        if ts.sigmas is not None:
            alpha, sigma = vp_scales(ts.sigmas[i])
            return alpha * x0 + sigma * noise
        alpha_bar = self.schedule.alphas_cumprod[int(ts.timesteps[i])]
        return alpha_bar ** 0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise

    def __repr__(self) -> str:
        return f"Scheduler({self.name!r})"


__all__ = ["SAMPLERS", "CLASS_NAMES", "Scheduler", "NoiseSchedule", "Timesteps", "check_sampler"]
