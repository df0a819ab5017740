"""Audio-to-audio and long-form pieces, each held by the property a realistic bug breaks (no model run):
the inpaint blend's width and units, the inpaint start's noise level, the kept frames' re-noising step,
the last window's start, and a batch line's seed 0."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from musicldm_core.app import batch, prompt_file
from musicldm_core.audio_frontend import log_mel, normalize_loudness
from musicldm_core.editing import AudioEdit, encode_input
from musicldm_core.geometry import Geometry
from musicldm_core.longform import regenerate_mask, window_starts
from musicldm_core.options import Options, Run
from musicldm_core.samplers import Scheduler

GEOMETRY = Geometry(sampling_rate=16000, hop=160, mel_bins=64, vae_factor=4, latent_channels=8, sample_size=32)


def edit(tiny_ckpt, sampler: str, frames: int = 160, input_frames: int = 160, **options) -> AudioEdit:
    """An AudioEdit on a synthetic input latent (1, 8, frames / 4, 16), 5 steps of `sampler`."""
    scheduler = Scheduler.from_pretrained(tiny_ckpt / "scheduler", sampler)
    run = Run(takes=1, seconds=frames / 100, frames=frames, scheduler=scheduler, sampling=scheduler.timesteps(5),
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
    """keep_input blends the generated audio (3 here) into the kept round trip (-1) over the VAE overlap measured
    in samples (4 latent frames = 2560 samples here), not over as many samples as there are latent frames:
    the kept audio outside, the generated inside, their mean half way up each edge."""
    e = edit(tiny_ckpt, "ddim", inpaint=(0.4, 1.2))
    samples = 160 * 160
    out = e.keep_input(torch.full((1, samples), 3.0), lambda z: torch.full((1, z.shape[2] * 640), -1.0))[0]
    start, end, edge = 10 * 640, 30 * 640, 4 * 640  # 0.4 s .. 1.2 s = latent frames 10 .. 30
    assert (out[:start] == -1).all() and (out[end:] == -1).all() and (out[start + edge:end - edge] == 3).all()
    assert out[start + edge // 2].item() == pytest.approx(1.0, abs=4e-3)  # half way up the sin^2 rise
    assert out[end - edge // 2].item() == pytest.approx(1.0, abs=4e-3)  # and down
    assert -1 < out[start + edge // 4].item() < -0.2 and (torch.diff(out[start:start + edge]) > 0).all()


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
def test_the_inpainting_start_is_the_input_renoised_outside_the_span(tiny_ckpt, sampler):
    """Where the mask keeps the input, the start is the input noised to the first step's level, exactly; and the
    renoised input is a fixed point of the per-step constraint everywhere, the blend at the edges included."""
    e = edit(tiny_ckpt, sampler, inpaint=(0.4, 1.2))
    noise = torch.randn(e.z_in.shape, generator=torch.Generator().manual_seed(1))
    plan, init, constrain = e.sampling(noise)
    kept, edges = e.mask[0, 0, :, 0] == 0, (e.mask[0, 0, :, 0] > 0) & (e.mask[0, 0, :, 0] < 1)
    assert torch.equal(init[:, :, kept], e.scheduler.add_noise(e.z_in, noise, plan)[:, :, kept])
    assert edges.sum() == 8  # 4 latent frames rising, 4 falling
    renoised = e.scheduler.add_noise(e.z_in, noise, plan, 2)
    assert torch.allclose(constrain(1, renoised), renoised, rtol=1e-6, atol=1e-6)


def test_an_input_without_strength_is_strength_one(tiny_ckpt):
    """audio alone (no strength, inpaint or extend) keeps only its length: every step, from the input noised to
    the first step's level, as strength=1.0."""
    noise = torch.randn((1, 8, 40, 16), generator=torch.Generator().manual_seed(3))
    plan, init, _ = edit(tiny_ckpt, "ddim").sampling(noise)
    plan1, init1, _ = edit(tiny_ckpt, "ddim", strength=1.0).sampling(noise)
    assert plan.steps == plan1.steps == 5 and torch.equal(plan.timesteps, plan1.timesteps) and torch.equal(init, init1)


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
    items, problems = prompt_file.read_items(path, {"steps": 3, "guidance": 2.0, "takes": 1}, base_seed=7)
    assert not problems and items[0].seed == 0 and items[1].seed == prompt_file.derived_seed(7, items[1].id)


class PoolEncoder(torch.nn.Module):
    """A stand-in VAE encoder in float64: the mel averaged over 4 x 4 patches, in 8 channels (a convolution,
    so a mel in another dtype is refused)."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.Conv2d(1, 8, 4, stride=4, bias=False, dtype=torch.float64)
        torch.nn.init.constant_(self.pool.weight, 1 / 16)
        self.config = SimpleNamespace(scaling_factor=2.0)

    def encode(self, mel):
        z = self.pool(mel)
        return SimpleNamespace(mode=lambda: z)


def test_the_input_is_read_with_the_checkpoints_front_end():
    """encode_input takes the hop, the mel bins and the rate from the checkpoint (here 32 kHz, hop 320, 32 bins:
    none of log_mel's defaults), pads the input to whole latent frames, and hands the VAE its own dtype."""
    g = Geometry(sampling_rate=32000, hop=320, mel_bins=32, vae_factor=4, latent_channels=8, sample_size=32)
    wave = torch.sin(torch.arange(16000) * 0.07) * 0.3  # 0.5 s: 50 mel frames, 13 latent frames (52 mel frames)
    vae = PoolEncoder()
    z = encode_input(wave, SimpleNamespace(input_frames=52, frames=52), g, vae)
    x = torch.nn.functional.pad(normalize_loudness(wave[None]), (0, 52 * 320 - 16000))
    mel = log_mel(x, hop=320, n_mels=32, sr=32000)[:, None, :52]
    assert z.dtype == torch.float64 and z.shape == (1, 8, 13, 8)
    assert torch.equal(z, vae.pool(mel.double()) * 2.0)
