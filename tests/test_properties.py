"""The exact properties of long form, loops, audio-to-audio and batch runs that docs/ state, each
asserted where the windows overlap (3 s: the trained window is 1.28 s here, so three open windows, the
last one shifted back to end at the end) and where they wrap (a 2.88 s loop: three circular windows),
on two checkpoints:

* "tiny": the test checkpoint, every stage small.
* "full": the published widths and configs at every stage, with the trained window (unet sample_size)
  cut from 256 to 32 latent frames, so that these lengths overlap and wrap here too. At 256 a 3-step run
  of 12 s takes about a minute on this CPU; the window length is only a number to the windowing, while
  the layers it runs through are the published ones. (One window at the true 10.24 s equals the direct
  path: tests/test_longform.py.)

Beside each property, its neighbour that a bug would break: the blend weights at every stage, both
edges of an inpainted span, the last window's start. Audio-to-audio cannot loop (the input sets the
length), so its properties have no wrapping case; the loop's own property is its rotation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import seeded, sine
from musicldm_core.app import batch, prompt_file
from musicldm_core.audio_frontend import log_mel, normalize_loudness
from musicldm_core.geometry import STAGES
from musicldm_core.longform import ramp_weights, window_starts, windowed
from musicldm_core.pipeline import MusicLDMPipeline

KW = dict(num_inference_steps=3, guidance_scale=2.5)
OPEN_S, LOOP_S = 3.0, 2.88  # 75 latent frames (windows at 0, 24, 43); 72 = three strides of 24


@pytest.fixture(scope="module", params=["tiny", pytest.param("full", marks=pytest.mark.full_size)])
def pipe(request, tmp_path_factory):
    folder = request.getfixturevalue(f"{request.param}_ckpt")
    if request.param == "full":  # the published checkpoint, its trained window cut to 32 latent frames
        short = tmp_path_factory.mktemp("full-short-window")
        for part in folder.iterdir():
            if part.is_dir():
                (short / part.name).mkdir()
                for f in part.iterdir():
                    (short / part.name / f.name).symlink_to(f)
            else:
                (short / part.name).symlink_to(part)
        config = json.loads((folder / "unet" / "config.json").read_text())
        (short / "unet" / "config.json").unlink()
        (short / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 32}))
        folder = short
    p = MusicLDMPipeline.from_pretrained(folder)
    assert p.geometry.sample_size == 32
    yield p
    if request.param == "full":
        shutil.rmtree(folder, ignore_errors=True)


# --- the windows themselves ------------------------------------------------------------------------

@pytest.mark.parametrize("loop", [False, True], ids=["overlap", "wrap"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_frame_is_covered_and_the_blend_weights_sum_to_one(pipe, stage, loop):
    """At every stage's window and overlap (in that stage's frames), for the overlapping and the wrapping
    length: windows evenly spaced by the stride, the last one ending at the end (open) or wrapping onto the
    first (ring); the sin^2 / cos^2 ramps sum to exactly one wherever the spacing is even (everywhere on a
    ring), every frame has weight, and the identity through the windows is the identity."""
    g = pipe.geometry
    window, overlap = g.window(stage, loop)
    per_latent = 1 if stage in ("denoising", "decoding", "encoding") else g.vae_factor
    length = round((LOOP_S if loop else OPEN_S) / g.frame_seconds) * per_latent
    stride = window - overlap
    starts = window_starts(length, window, stride, loop)
    assert len(starts) == 3 and starts[:2] == [0, stride]
    if loop:
        assert starts[-1] + stride == length  # the last window wraps exactly onto the first
    else:
        assert starts[-1] == length - window and 0 < starts[-1] - starts[-2] < stride  # shifted back, not past
    total = torch.zeros(length, dtype=torch.float64)
    for k, s in enumerate(starts):
        total.index_add_(0, torch.arange(s, s + window) % length,
                         ramp_weights(window, overlap, k == 0, k == len(starts) - 1, loop))
    even = total if loop else total[:starts[-1]]  # past the shifted start the two ramps do not line up
    assert torch.allclose(even, torch.ones_like(even), rtol=0, atol=1e-12), (stage, loop)
    assert total.min() > 0.49
    x = torch.randn(1, 2, length, 3, dtype=torch.float64, generator=seeded())
    assert torch.allclose(windowed(lambda w: w, x, 2, window, overlap, circular=loop).double(), x, atol=1e-6)


# --- long form and loops ---------------------------------------------------------------------------

def test_one_window_is_the_direct_path_and_one_frame_more_is_not(pipe):
    """Exactly the trained window (32 latent frames) through the windowed path is the direct path, bit for bit;
    one latent frame more is two windows (the second starting at frame 1), no longer the direct path."""
    direct = pipe("techno", audio_length_in_s=1.28, generator=seeded(), **KW).audios
    assert direct.shape == (1, 32 * 640)
    assert np.array_equal(direct, pipe("techno", audio_length_in_s=1.28, generator=seeded(), window="windowed",
                                       **KW).audios)
    noise = torch.randn(1, 8, 33, 16, generator=seeded(1))
    longer = [pipe("techno", audio_length_in_s=1.32, latents=noise, window=w, **KW).audios
              for w in ("whole", "windowed")]
    assert longer[0].shape == longer[1].shape == (1, 33 * 640) and not np.array_equal(*longer)


def test_a_loop_rotates_with_its_noise(pipe):
    """Wrapping: rotating the initial noise by one stride (24 latent frames) rotates the audio by as much,
    exactly; the seam is no rougher than the inside; a rotation by less than a stride is not a rotation of the audio."""
    pipe.enable_batch_invariance()  # the windows are batched in another order after a rotation
    try:
        noise = torch.randn(1, 8, 72, 16, generator=seeded(3))
        a = pipe("techno", audio_length_in_s=LOOP_S, latents=noise, loop=True, **KW).audios[0]
        b = pipe("techno", audio_length_in_s=LOOP_S, latents=noise.roll(24, dims=2), loop=True, **KW).audios[0]
        c = pipe("techno", audio_length_in_s=LOOP_S, latents=noise.roll(8, dims=2), loop=True, **KW).audios[0]
    finally:
        pipe.enable_batch_invariance(False)
    assert a.shape == (72 * 640,) and np.array_equal(np.roll(a, 24 * 640), b)
    assert abs(a[0] - a[-1]) <= np.abs(np.diff(a)).max()
    assert not np.array_equal(np.roll(a, 8 * 640), c)  # not a stride: the windows fall elsewhere


# --- audio-to-audio --------------------------------------------------------------------------------

def round_trip(pipe, wave: np.ndarray) -> np.ndarray:
    """The input's mel -> VAE -> vocoder round trip, composed here from the components and the windows of each
    stage (geometry), as docs/long-form.md describes it."""
    g, vae = pipe.geometry, pipe.vae
    frames = g.input_frames(len(wave))
    with torch.no_grad():
        x = torch.nn.functional.pad(normalize_loudness(torch.from_numpy(wave)[None]), (0, frames * g.hop - len(wave)))
        mel = log_mel(x)[:, None, :frames]
        f = g.vae_factor
        z = windowed(lambda m: vae.encode(m).mode(), mel, 2, *(n * f for n in g.window("encoding")), den=f)
        z = z * vae.config.scaling_factor  # into the UNet's latent space, and back
        mel_out = windowed(vae.decode, 1 / vae.config.scaling_factor * z, 2, *g.window("decoding"), num=f).squeeze(1)
        wave_out = windowed(pipe.vocoder, mel_out, 1, *g.window("vocoding"), num=g.hop)
    return wave_out[:, :len(wave)].numpy()


@pytest.mark.parametrize("seconds", [0.99, OPEN_S], ids=["one-window", "overlap"])
def test_strength_zero_is_the_round_trip(pipe, seconds):
    wave = sine(seconds, overtone=0.1)
    out = pipe("jazz", audio=wave, audio_sampling_rate=16000, strength=0.0, **KW).audios
    assert out.shape == (1, len(wave)) and np.array_equal(out, round_trip(pipe, wave))


def test_inpaint_keeps_the_rest_up_to_both_edges(pipe):
    """A span across a window seam (0.8 .. 2.2 s = latent frames 20 .. 55; windows at 0, 24, 43): outside it the
    output is the round trip, bit for bit; inside, it leaves the round trip within the first and the last
    quarter of the 0.16 s blend (2560 samples) at each edge, and is regenerated in between."""
    wave = sine(OPEN_S, overtone=0.1)
    base = round_trip(pipe, wave)
    out = pipe("jazz", audio=wave, audio_sampling_rate=16000, inpaint=(0.8, 2.2), generator=seeded(), **KW).audios
    start, end, edge = 20 * 640, 55 * 640, 4 * 640
    assert out.shape == base.shape
    assert np.array_equal(out[:, :start], base[:, :start]) and np.array_equal(out[:, end:], base[:, end:])
    moved = np.flatnonzero(np.abs(out[0] - base[0]) > 1e-6)
    assert start <= moved[0] < start + edge // 4 and end - edge // 4 <= moved[-1] < end
    assert np.abs(out[:, start + edge:end - edge] - base[:, start + edge:end - edge]).max() > 1e-3


def test_extend_keeps_the_prefix(pipe):
    """An input longer than a window (2 s), extended to 3 s: the first 2 s are the input's round trip, bit for
    bit (its windows those of the 2 s input, not of the 3 s output), and the added second is new audio."""
    wave = sine(2.0, overtone=0.1)
    out = pipe("jazz", audio=wave, audio_sampling_rate=16000, extend=1.0, generator=seeded(), **KW).audios
    assert out.shape == (1, 48000)
    assert np.array_equal(out[:, :32000], round_trip(pipe, wave))
    assert np.abs(out[:, 32000 + 2560:]).max() > 1e-3


# --- batch runs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("loop", [False, True], ids=["overlap", "wrap"])
def test_batch_items_equal_their_single_runs(pipe, loop, request):
    """Two items, generated together (their windows batched through the UNet), equal each item generated alone:
    bit for bit, best take first. Two takes each on the tiny checkpoint; one at full width, where the rows run
    one at a time (tests/test_batch.py has two takes at full size, in one window)."""
    seconds, takes = LOOP_S if loop else OPEN_S, 2 if request.node.callspec.params["pipe"] == "tiny" else 1
    items = [prompt_file.Item(i, f"i{i}", prompt, None, seconds, 10 + i, 3, 2.0, takes, None, loop=loop)
             for i, prompt in enumerate(["rain", "jazz trio"])]
    pipe.enable_batch_invariance()
    try:
        together, _ = batch.generate(pipe, items)
        for item, audio in zip(items, together):
            alone, _ = batch.generate(pipe, [item])
            assert audio.shape == (takes, round(seconds / 0.04) * 640) and np.array_equal(audio, alone[0]), item.id
    finally:
        pipe.enable_batch_invariance(False)
