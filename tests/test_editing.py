"""Audio-to-audio and long-form pieces, each held by the property a realistic bug breaks (no model run):
the inpaint blend's width and units, the inpaint start's noise level, the kept frames' re-noising step,
the last window's start, and a batch line's seed 0."""

from __future__ import annotations

import math

import pytest
import torch

from musicldm_core import batch
from musicldm_core.editing import AudioEdit
from musicldm_core.geometry import Geometry
from musicldm_core.longform import regenerate_mask, window_starts
from musicldm_core.options import Options, Run
from musicldm_core.samplers import Scheduler

GEOMETRY = Geometry(sampling_rate=16000, hop=160, mel_bins=64, vae_factor=4, latent_channels=8, sample_size=32)


def edit(tiny_ckpt, sampler: str, frames: int = 160, input_frames: int = 160, **options) -> AudioEdit:
    """An AudioEdit on a synthetic input latent (1, 8, frames / 4, 16), 5 steps of `sampler`."""
    scheduler = Scheduler.from_pretrained(tiny_ckpt / "scheduler", sampler)
    run = Run(takes=1, seconds=frames / 100, frames=frames, scheduler=scheduler, sampling=scheduler.plan(5),
              windowed=True, input_frames=input_frames)
    z_in = torch.randn((1, 8, frames // 4, 16), generator=torch.Generator().manual_seed(0))
    return AudioEdit(z_in, Options(audio="x", **options), run, GEOMETRY)


def test_a_short_span_still_reaches_full_regeneration():
    """The blend edge is at most half the span: a span shorter than two edges still rises to (almost) full
    regeneration in its middle (a whole-span edge would stop at 0.5)."""
    for start, end in ((40, 50), (40, 47), (10, 13)):
        m = regenerate_mask(100, start, end, 16)[0, 0, :, 0]
        middle = m[start:end]
        assert middle.max() > 0.97, (start, end, middle)
        assert torch.equal(middle, middle.flip(0))  # the same rise at both edges
        assert (m[:start] == 0).all() and (m[end:] == 0).all()


def test_both_edges_of_a_span_rise_over_the_edge_width():
    m = regenerate_mask(200, 50, 150, 20)[0, 0, :, 0].double()
    for k in range(20):  # sin^2 over 20 frames inside each edge, from both ends
        expected = math.sin(0.5 * math.pi * (k + 0.5) / 20) ** 2
        assert m[50 + k].item() == pytest.approx(expected, abs=1e-6)
        assert m[149 - k].item() == pytest.approx(expected, abs=1e-6)
    assert (m[70:130] == 1).all()


def test_the_waveform_blend_is_as_wide_in_samples_as_the_latent_blend(tiny_ckpt):
    """keep_input blends generated and kept audio over the VAE overlap measured in samples (4 latent
    frames = 2560 samples here), not over as many samples as there are latent frames."""
    e = edit(tiny_ckpt, "ddim", inpaint=(0.4, 1.2))
    samples = 160 * 160
    out = e.keep_input(torch.ones(1, samples), lambda z: torch.zeros(1, z.shape[2] * 640))[0]
    start, edge = 10 * 640, 4 * 640  # 0.4 s = latent frame 10
    assert (out[:start] == 0).all() and out[start + edge:30 * 640 - edge].min() == 1.0
    assert out[start + edge // 2].item() == pytest.approx(0.5, abs=1e-3)  # half way up the sin^2 rise
    assert 0 < out[start + edge // 4].item() < 0.2


@pytest.mark.parametrize("sampler", ["euler", "lms", "heun", "dpmsolver++", "ddim"])
def test_inpainting_starts_at_the_samplers_noise_level(tiny_ckpt, sampler):
    """Inside the regenerated span the start is noise * init_noise_sigma (far from 1 for sigma samplers)."""
    e = edit(tiny_ckpt, sampler, inpaint=(0.4, 1.2))
    noise = torch.randn(e.z_in.shape, generator=torch.Generator().manual_seed(1))
    plan, init, _ = e.sampling(noise)
    inside = e.mask[0, 0, :, 0] == 1
    assert torch.allclose(init[:, :, inside], (noise * plan.init_scale)[:, :, inside], rtol=1e-6, atol=0)
    if plan.scale_input:  # the sigma samplers (Euler, LMS, Heun): their start is x = sigma_max * noise
        assert float(plan.init_scale) > 10  # so a start at unit noise would be far too quiet


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_kept_frames_are_renoised_to_the_next_steps_level(tiny_ckpt, sampler):
    """After step i the kept frames sit at the level of step i + 1; after the last step they are clean."""
    e = edit(tiny_ckpt, sampler, inpaint=(0.4, 1.2))
    noise = torch.randn(e.z_in.shape, generator=torch.Generator().manual_seed(2))
    plan, _, constrain = e.sampling(noise)
    kept = e.mask[0, 0, :, 0] == 0
    x = torch.zeros_like(noise)
    for i in range(len(plan.timesteps)):
        expected = e.scheduler.add_noise(e.z_in, noise, plan, i + 1)
        assert torch.equal(constrain(i, x)[:, :, kept], expected[:, :, kept])
    assert torch.equal(constrain(len(plan.timesteps) - 1, x)[:, :, kept], e.z_in[:, :, kept])


@pytest.mark.parametrize("length, window, stride", [(150, 32, 24), (33, 32, 24), (512, 32, 28), (2048, 128, 112)])
def test_the_last_window_ends_at_the_end(length, window, stride):
    starts = window_starts(length, window, stride, False)
    assert starts[-1] == length - window and all(s + window <= length for s in starts)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gap between windows


def test_seed_zero_in_a_batch_line_is_seed_zero(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "seed": 0}\n{"prompt": "b"}\n')
    items, problems = batch.read_items(path, {"steps": 3, "guidance": 2.0, "takes": 1}, base_seed=7)
    assert not problems and items[0].seed == 0 and items[1].seed == batch.derived_seed(7, items[1].id)
