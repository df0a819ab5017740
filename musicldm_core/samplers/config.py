"""The schedulers' configs (diffusers' scheduler classes, each with its own defaults and keys),
read by the rules of config.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..config import Config, check_fixed, one_of
from ..errors import CheckpointError

@dataclass(frozen=True)
class SchedulerConfig(Config):
    """The values our samplers read. Which of them a class reads, and its defaults, are in
    SCHEDULER_CLASSES: a class that lacks a key keeps the neutral value below."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = False
    skip_prk_steps: bool = True
    use_karras_sigmas: bool = False
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    final_sigmas_type: str = "zero"
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False

    def _check(self, source: str) -> None:
        one_of(source, "beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        one_of(source, "prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"))
        one_of(source, "timestep_spacing", self.timestep_spacing, ("leading", "trailing", "linspace"))
        one_of(source, "final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        one_of(source, "solver_order", self.solver_order, (1, 2))
        one_of(source, "solver_type", self.solver_type, ("midpoint", "heun"))
        if self.num_train_timesteps < 1:
            raise CheckpointError(f"{source}: num_train_timesteps={self.num_train_timesteps} must be positive")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise CheckpointError(f"{source}: trained_betas has {len(self.trained_betas)} entries, "
                                  f"num_train_timesteps is {self.num_train_timesteps}")


_SCHEDULE_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                      "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0}
_EXTRA_SIGMAS = {"use_exponential_sigmas": (False,), "use_beta_sigmas": (False,)}
_THRESHOLDING_INERT = {"dynamic_thresholding_ratio": "used only with thresholding, which is refused",
                       "sample_max_value": "used only with thresholding, which is refused"}


@dataclass(frozen=True)
class SchedulerClass:
    """One diffusers scheduler class: its defaults for the keys it reads, and its FIXED/INERT tables."""

    defaults: Mapping[str, Any]
    fixed: Mapping[str, tuple]
    inert: Mapping[str, str]


SCHEDULER_CLASSES: Dict[str, SchedulerClass] = {
    "DDIMScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "clip_sample": True, "set_alpha_to_one": True, "clip_sample_range": 1.0,
         "timestep_spacing": "leading"},
        {"thresholding": (False,), "rescale_betas_zero_snr": (False,)}, _THRESHOLDING_INERT),
    "PNDMScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "skip_prk_steps": False, "set_alpha_to_one": False, "timestep_spacing": "leading"},
        {}, {}),
    "LMSDiscreteScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "use_karras_sigmas": False, "timestep_spacing": "linspace"}, _EXTRA_SIGMAS, {}),
    "EulerDiscreteScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "use_karras_sigmas": False, "sigma_min": None, "sigma_max": None,
         "timestep_spacing": "linspace", "final_sigmas_type": "zero"},
        {**_EXTRA_SIGMAS, "interpolation_type": ("linear",), "timestep_type": ("discrete",),
         "rescale_betas_zero_snr": (False,)}, {}),
    "EulerAncestralDiscreteScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "timestep_spacing": "linspace"}, {"rescale_betas_zero_snr": (False,)}, {}),
    "HeunDiscreteScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "beta_start": 0.00085, "beta_end": 0.012, "use_karras_sigmas": False,
         "clip_sample": False, "clip_sample_range": 1.0, "timestep_spacing": "linspace"}, _EXTRA_SIGMAS, {}),
    "DPMSolverMultistepScheduler": SchedulerClass(
        {**_SCHEDULE_DEFAULTS, "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True,
         "euler_at_final": False, "use_karras_sigmas": False, "final_sigmas_type": "zero",
         "timestep_spacing": "linspace"},
        {**_EXTRA_SIGMAS, "algorithm_type": ("dpmsolver++",), "thresholding": (False,), "use_lu_lambdas": (False,),
         "use_flow_sigmas": (False,), "lambda_min_clipped": (-math.inf,), "variance_type": (None,),
         "rescale_betas_zero_snr": (False,), "use_dynamic_shifting": (False,)},
        {**_THRESHOLDING_INERT, "flow_shift": "used only with use_flow_sigmas, which is refused",
         "time_shift_type": "used only with use_dynamic_shifting, which is refused"}),
}


def scheduler_config(class_name: str, data: Mapping[str, Any], source: str = "<config>") -> SchedulerConfig:
    """diffusers' `Class.from_config(data)`: the keys `class_name` reads, its defaults for the rest.

    Keys of other classes in `data` are ignored, as diffusers ignores them.
    """
    spec = SCHEDULER_CLASSES[class_name]
    check_fixed(spec.fixed, data, source, f" by {class_name} here")
    read = {k: data.get(k, default) for k, default in spec.defaults.items()}
    if sum(bool(data.get(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
           if k in spec.defaults or k in spec.fixed) > 1:
        raise CheckpointError(f"{source}: only one of use_karras_sigmas, use_exponential_sigmas and "
                              "use_beta_sigmas can be set")
    if class_name == "DPMSolverMultistepScheduler" and read["use_karras_sigmas"] and \
            read["beta_schedule"] == "squaredcos_cap_v2":
        # diffusers leaves these timesteps unrounded and truncates them, repeating the first: its step
        # counter then runs one past the end and fails with an IndexError at the last step.
        raise CheckpointError(f"{source}: use_karras_sigmas=true with beta_schedule='squaredcos_cap_v2' is not "
                              "supported by DPMSolverMultistepScheduler (diffusers itself fails at the last step)")
    return SchedulerConfig.from_hf(read, source)
