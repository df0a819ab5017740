"""Configs as data: every constructor argument of every reference class is read, refused or inert.

These tests hold config.py to its contract without running a model: the three tables cover the
reference's signature exactly, our defaults are the reference's defaults, and bad values are
refused by file, key and value.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UNet2DConditionModel)
from transformers import ClapAudioConfig as RefAudio, ClapConfig as RefClap, ClapFeatureExtractor
from transformers import ClapTextConfig as RefText, SpeechT5HifiGanConfig

from musicldm_core.clap_config import ClapAudioConfig, ClapConfig, ClapTextConfig, FeatureExtractorConfig
from musicldm_core.config import VAEConfig, VocoderConfig
from musicldm_core.unet_config import UNetConfig
from musicldm_core.samplers.config import SCHEDULER_CLASSES
from musicldm_core.errors import CheckpointError
from musicldm_core.samplers import CLASS_NAMES, Scheduler

COMPONENTS = [
    (UNetConfig, UNet2DConditionModel.__init__),
    (VAEConfig, AutoencoderKL.__init__),
    (VocoderConfig, SpeechT5HifiGanConfig.__init__),
    (ClapTextConfig, RefText.__init__),
    (ClapAudioConfig, RefAudio.__init__),
    (ClapConfig, RefClap.__init__),
    (FeatureExtractorConfig, ClapFeatureExtractor.__init__),
]
# set on the towers by the top-level ClapConfig, not read from the towers' own keys
FROM_TOP_LEVEL = {"projection_dim", "projection_hidden_act"}


def _signature(init) -> dict:
    return {k: p.default for k, p in inspect.signature(init).parameters.items()
            if k not in ("self", "kwargs")}


@pytest.mark.parametrize("cls, init", COMPONENTS, ids=[c.__name__ for c, _ in COMPONENTS])
def test_every_reference_key_is_read_refused_or_inert(cls, init):
    fields = {f.name for f in dataclasses.fields(cls)}
    tables = [fields, set(cls.FIXED), set(cls.INERT)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not tables[a] & tables[b], f"{cls.__name__}: in two tables: {tables[a] & tables[b]}"
    reference = set(_signature(init))
    uncovered = reference - fields - set(cls.FIXED) - set(cls.INERT)
    assert not uncovered, f"{cls.__name__}: the reference reads {sorted(uncovered)}, which config.py ignores"
    assert not fields - reference, f"{cls.__name__}: fields the reference does not have: {fields - reference}"


@pytest.mark.parametrize("cls, init", COMPONENTS, ids=[c.__name__ for c, _ in COMPONENTS])
def test_defaults_are_the_references(cls, init):
    """A key missing from the file means the reference's default, in our fields and in FIXED."""
    ref = _signature(init)
    for f in dataclasses.fields(cls):
        if f.name in FROM_TOP_LEVEL and cls in (ClapTextConfig, ClapAudioConfig) or f.name.endswith("_config"):
            continue
        ours = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        expected = ref[f.name]
        if f.name in cls.PER_BLOCK:
            assert cls.PER_BLOCK[f.name] == expected, f.name
            continue
        if isinstance(expected, list):
            expected = tuple(tuple(e) if isinstance(e, list) else e for e in expected)
        if f.name in ("patch_size", "patch_stride") and isinstance(expected, int):
            expected = (expected, expected)
        assert ours == expected, f"{cls.__name__}.{f.name}"
    for key, allowed in cls.FIXED.items():
        if key in ref:  # (is_decoder etc. are every PretrainedConfig's, not in the class signature)
            assert allowed[0] == ref[key], f"{cls.__name__} FIXED {key}"


SCHEDULER_REFERENCES = {c.__name__: c for c in (DDIMScheduler, PNDMScheduler, LMSDiscreteScheduler,
                                                 EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                                 HeunDiscreteScheduler, DPMSolverMultistepScheduler)}


@pytest.mark.parametrize("name", list(SCHEDULER_REFERENCES))
def test_scheduler_tables_cover_the_class(name):
    spec, ref = SCHEDULER_CLASSES[name], _signature(SCHEDULER_REFERENCES[name].__init__)
    covered = set(spec.defaults) | set(spec.fixed) | set(spec.inert)
    assert covered == set(ref), f"{name}: unread {set(ref) - covered}, unknown {covered - set(ref)}"
    for key, value in spec.defaults.items():
        assert value == ref[key], f"{name}.{key}: ours {value!r}, diffusers {ref[key]!r}"
    for key, allowed in spec.fixed.items():
        assert allowed[0] == ref[key] or (math.isinf(allowed[0]) and math.isinf(ref[key])), f"{name} FIXED {key}"
    assert set(CLASS_NAMES) == set(SCHEDULER_CLASSES)


# A hand-written config with no timestep_spacing, no clip_sample, no set_alpha_to_one: each class
# must fill them with its own defaults (LMS/Euler/Heun/DPM: "linspace"; DDIM: clip_sample=True).
SPARSE = {"_class_name": "DDIMScheduler", "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
          "steps_offset": 1, "use_karras_sigmas": True, "solver_order": 1, "sigma_min": 0.2}


@pytest.mark.parametrize("name", ["ddim", "lms", "euler", "euler_ancestral", "heun", "dpmsolver++"])
def test_named_scheduler_equals_from_config(name):
    """`scheduler=name` reads what diffusers' `Class.from_config(checkpoint's config)` reads."""
    class_name = {v: k for k, v in CLASS_NAMES.items()}[name]
    ref = SCHEDULER_REFERENCES[class_name].from_config(SPARSE).config
    ours = Scheduler.from_config(SPARSE, name).config
    for key in SCHEDULER_CLASSES[class_name].defaults:
        assert getattr(ours, key) == (tuple(ref[key]) if isinstance(ref[key], list) else ref[key]), f"{name} {key}"


def test_pndm_by_name_is_plms_unless_the_file_says():
    assert Scheduler.from_config(SPARSE, "pndm").config.skip_prk_steps
    assert not Scheduler.from_config({**SPARSE, "skip_prk_steps": False}, "pndm").config.skip_prk_steps
    # the file's own PNDMScheduler is built exactly as diffusers builds it: PRK by default
    assert not Scheduler.from_config({**SPARSE, "_class_name": "PNDMScheduler"}).config.skip_prk_steps


@pytest.mark.parametrize("data, message", [
    ({"_class_name": "UniPCMultistepScheduler"}, "_class_name='UniPCMultistepScheduler' is not a supported scheduler"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
     "algorithm_type='sde-dpmsolver\\+\\+' is not supported by DPMSolverMultistepScheduler"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, "solver_order=3 is not supported"),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
     "use_karras_sigmas=true with beta_schedule='squaredcos_cap_v2'"),
    ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding=True is not supported by DDIMScheduler"),
    ({"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}, "interpolation_type='log_linear'"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "timestep_type='continuous'"),
    ({"_class_name": "LMSDiscreteScheduler", "use_exponential_sigmas": True}, "use_exponential_sigmas=True"),
    ({"_class_name": "HeunDiscreteScheduler", "use_beta_sigmas": True}, "use_beta_sigmas=True"),
    ({"_class_name": "DDIMScheduler", "prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
    ({"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}, "timestep_spacing='karras'"),
    ({"_class_name": "DDIMScheduler", "num_train_timesteps": "1000"}, "num_train_timesteps='1000' must be an integer"),
    ({"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}, "trained_betas has 2 entries"),
])
def test_scheduler_refusals(data, message):
    with pytest.raises(CheckpointError, match="scheduler_config.json: " + message):
        Scheduler.from_config(data)


def test_keys_of_other_classes_are_ignored_as_diffusers_ignores_them():
    # DDIM does not read use_karras_sigmas, whatever the file says; Euler does
    assert not Scheduler.from_config({**SPARSE, "use_karras_sigmas": True}).config.use_karras_sigmas
    assert Scheduler.from_config(SPARSE, "euler").config.use_karras_sigmas


@pytest.mark.parametrize("cls, data, message", [
    (UNetConfig, {"sample_size": [32, 32]}, "sample_size=\\[32, 32\\] must be an integer"),
    (UNetConfig, {"center_input_sample": 1}, "center_input_sample=1 must be true or false"),
    (UNetConfig, {"only_cross_attention": 0}, "only_cross_attention=0 is not supported"),
    (UNetConfig, {"attention_head_dim": [8, 8]}, "attention_head_dim has 2 entries, expected 4"),
    (UNetConfig, {"up_block_types": ["UpBlock2D"]}, "up_block_types has 1 entries, down_block_types 4"),
    (VAEConfig, {"scaling_factor": 0}, "scaling_factor=0"),
    (VAEConfig, {"norm_num_groups": 7}, "block_out_channels\\[0\\]=64 is not divisible by norm_num_groups=7"),
    (VocoderConfig, {"upsample_rates": "4,4"}, "upsample_rates='4,4' must be a list"),
    (VocoderConfig, {"resblock_dilation_sizes": [1, 3, 5]}, "resblock_dilation_sizes\\[0\\]=1 must be a list"),
    (FeatureExtractorConfig, {"truncation": "crop"}, "truncation='crop' is not supported"),
    (FeatureExtractorConfig, {"padding": "zeros"}, "padding='zeros' is not supported"),
    (ClapTextConfig, {"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    (ClapTextConfig, {"is_decoder": True}, "is_decoder=True is not supported"),
    (ClapAudioConfig, {"spec_size": [256, 256]}, "spec_size=\\[256, 256\\] must be an integer"),
])
def test_bad_values_are_refused_by_key(cls, data, message):
    with pytest.raises(CheckpointError, match="x/config.json: " + message):
        cls.from_hf(data, "x/config.json")


def test_int_or_pair_keys():
    audio = ClapAudioConfig.from_hf({"patch_size": 2, "patch_stride": 2, "spec_size": 64, "window_size": 4,
                                     "depths": [2, 2], "num_attention_heads": [2, 2], "hidden_size": 192})
    assert audio.patch_size == (2, 2) and audio.patch_stride == (2, 2) and audio.grid == (32, 32)
    unet = UNetConfig.from_hf({"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D"] * 2,
                               "up_block_types": ["UpBlock2D"] * 2, "attention_head_dim": 4,
                               "cross_attention_dim": [32, 64], "transformer_layers_per_block": 2})
    assert unet.attention_head_dim == (4, 4) and unet.transformer_layers_per_block == (2, 2)
    assert unet.layers_per_block == (2, 2)  # absent: diffusers' default, per block
