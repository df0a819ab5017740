"""The compiled path (`pipe.compile()`) against diffusers end to end, and the denoising step's promise
to a GPU: no host synchronisation inside it, checked on the CPU with meta tensors."""

from __future__ import annotations

import pytest
import torch

import reference_checkpoints
from conftest import requires_cuda
from helpers import assert_close, assert_detects, reference_pipeline
from musicldm_core.compiled import CompiledStage
from musicldm_core.unet_config import UNetConfig
from musicldm_core.guidance import guided_eps
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.samplers import CLASS_NAMES, SAMPLERS, Scheduler
from musicldm_core.unet import UNet

RTOL = 1e-4


def test_compiled_pipeline_against_diffusers(tiny_ckpt):
    """Inductor with frozen weights (tiny checkpoint, 3 DDIM steps, guided): within 1e-4 of the
    reference; one compilation for the generation's one signature, none on the second call (a new
    shape or scale compiling once more is the signature test below)."""
    torch.set_num_threads(2)
    reference = reference_pipeline(tiny_ckpt)
    ours = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    ours.compile()
    kw = dict(prompt=["techno beat", "jazz"], num_inference_steps=3, guidance_scale=2.5, audio_length_in_s=1.0)
    a = reference(**kw, generator=torch.Generator().manual_seed(0)).audios
    b = ours(**kw, generator=torch.Generator().manual_seed(0)).audios
    assert_close(b, a, RTOL, "compiled pipeline vs diffusers, tiny, 3 steps")
    shapes = dict(ours.compiled["unet"].compile_seconds)
    assert len(shapes) == 1 and ours.compile_seconds()["unet"] > 0
    c = ours(**kw, generator=torch.Generator().manual_seed(0)).audios
    assert (c == b).all() and ours.compiled["unet"].compile_seconds == shapes  # no recompilation
    d = ours(**kw, generator=torch.Generator().manual_seed(1)).audios
    assert_detects(d, a, RTOL, "compiled pipeline, another seed")  # the comparison above can fail
    ours.to(dtype=torch.float32)
    assert ours.compiled == {}  # moved: compiled constants belong to the old placement


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_whole_step_never_reads_the_device(name, tiny_ckpt):
    """A whole denoising step as the pipeline runs it -- the UNet on both guidance halves, their
    combination, the sampler's update and history -- for every sampler, on meta tensors (which hold
    no values: any int(), .item() or bool() of one raises). Nothing in it reads a value back to the
    host, so a CUDA graph can hold the model evaluation and the loop never waits for the GPU."""
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_json(tiny_ckpt / "unet" / "config.json")).eval()
    config = {**reference_checkpoints.PUBLISHED["scheduler"], "skip_prk_steps": True}
    scheduler = Scheduler.from_config(config, name)
    assert name in CLASS_NAMES.values()
    cond = torch.zeros(2, unet.config.projection_class_embeddings_input_dim, device="meta")
    noise = torch.zeros(1, unet.config.in_channels, 16, 8, device="meta")
    seen = []

    def model(x, t):
        seen.append(t.device)
        return guided_eps(unet, x, t, cond, 2.5)

    with torch.inference_mode():
        out = scheduler.sample(model, noise, scheduler.timesteps(5), eta=0.5 if name == "ddim" else 0.0,
                               generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == noise.shape and set(d.type for d in seen) == {"meta"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_compiled_stage_reports_each_signature_and_keeps_its_outputs(device):
    """A compiled stage times the first call of each signature -- shapes, dtypes and plain values
    such as the guidance scale, a constant of the graph -- and none after; in "reduce-overhead"
    mode (CUDA graphs, where a replay reuses its output buffers) a kept output survives the next call."""
    for mode in ("default", "reduce-overhead"):
        stage = CompiledStage(lambda x, scale: x * scale + 1, mode)
        x = torch.arange(6.0, device=device).reshape(2, 3)
        first = stage(x, 2.0)
        assert torch.equal(first, x * 2.0 + 1) and len(stage.compile_seconds) == 1
        assert torch.equal(stage(x + 1, 2.0), (x + 1) * 2.0 + 1) and len(stage.compile_seconds) == 1
        assert torch.equal(stage(x, 3.0), x * 3.0 + 1) and len(stage.compile_seconds) == 2  # a new scale
        assert torch.equal(stage(x[:1], 3.0), x[:1] * 3.0 + 1) and len(stage.compile_seconds) == 3  # a new shape
        assert torch.equal(first, x * 2.0 + 1), mode  # the first output, untouched by later calls
