"""Long form, loops and audio-to-audio (longform.py, editing.py, audio_frontend.log_mel), tested by
exact properties on random weights: one window is the direct path, a rotated loop is the rotated
audio, strength 0 is the round trip, kept spans are kept; and the mel front end against AudioLDM's."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import assert_close, errors, seeded, sine
from musicldm_core.app import cli
from musicldm_core.audio_frontend import log_mel
from musicldm_core.resampler import resample
from musicldm_core.geometry import STAGES, Geometry
from musicldm_core.longform import regenerate_mask, windowed
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.vae import AutoencoderKL

KW = dict(num_inference_steps=3, guidance_scale=2.5)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    torch.set_num_threads(2)
    p = MusicLDMPipeline.from_pretrained(tiny_ckpt)  # trained window: 32 latent frames (1.28 s)
    return p


# --- windows -----------------------------------------------------------------------------------

def test_one_window_is_the_function_itself():
    x = torch.randn(2, 3, 20, 4)
    calls = []
    assert windowed(lambda w: calls.append(w) or w * 2, x, 2, 20, 5) is not None and torch.equal(calls[0], x)


@pytest.mark.parametrize("circular", [False, True])
def test_blend_weights_sum_to_one(circular):
    x = torch.randn(1, 2, 100, 3, dtype=torch.float64)
    y = windowed(lambda w: w, x, 2, 32, 8, circular=circular, batch=3)
    assert_close(y, x, 1e-6, f"identity through windows (circular={circular})")


def test_cross_fade_between_two_constants_is_symmetric():
    """A stand-in that paints each window its own mean: the overlap is a pure cross-fade whose two
    halves mirror each other around the midpoint of the two constants."""
    x = torch.randn(1, 1, 40, 1, dtype=torch.float64)
    window, overlap = 16, 6
    out = windowed(lambda w: w.mean().expand_as(w), x, 2, window, overlap)[0, 0, :, 0]
    stride = window - overlap
    m1, m2 = x[..., :window, :].mean(), x[..., stride:stride + window, :].mean()
    seam = out[stride:stride + overlap]
    assert torch.allclose(seam + seam.flip(0), (m1 + m2).expand(overlap), atol=1e-12)
    assert torch.allclose(out[:stride], m1.expand(stride), atol=1e-12)


def test_ramp_weights_are_the_documented_sin_squared_cross_fade():
    """The blend weights themselves, not only their sum: sin^2 at the half-sample centres of the overlap,
    (1 - cos(pi (i + 1/2) / overlap)) / 2 written another way, in float64; none at an open end, both
    ends on a ring; an overlap of 1 is a ramp of one frame at 1/2."""
    from musicldm_core.longform import ramp_weights

    i = np.arange(6)
    up = (1 - np.cos(np.pi * (i + 0.5) / 6)) / 2
    inner = ramp_weights(20, 6, False, False, False)
    assert inner.dtype == torch.float64
    assert np.abs(inner[:6].numpy() - up).max() < 1e-15 and np.abs(inner[-6:].numpy() - up[::-1]).max() < 1e-15
    assert torch.equal(inner[6:-6], torch.ones(8, dtype=torch.float64))
    assert torch.equal(ramp_weights(20, 6, True, True, False), torch.ones(20, dtype=torch.float64))  # open ends
    assert torch.equal(ramp_weights(20, 6, True, True, True), inner)  # a ring has no open end
    first, last = ramp_weights(20, 6, True, False, False), ramp_weights(20, 6, False, True, False)
    assert torch.equal(first[:6], torch.ones(6, dtype=torch.float64)) and torch.equal(first[-6:], inner[-6:])
    assert torch.equal(last[-6:], torch.ones(6, dtype=torch.float64)) and torch.equal(last[:6], inner[:6])
    assert np.abs(ramp_weights(4, 1, False, False, False).numpy() - [0.5, 1.0, 1.0, 0.5]).max() < 1e-15
    assert torch.equal(ramp_weights(4, 0, False, False, False), torch.ones(4, dtype=torch.float64))


def test_window_starts_at_the_edges():
    from musicldm_core.longform import window_starts

    assert window_starts(10, 32, 24, False) == [0] and window_starts(32, 32, 24, False) == [0]
    assert window_starts(33, 32, 24, False) == [0, 1]  # the last window ends at the end
    assert window_starts(96, 32, 24, True) == [0, 24, 48, 72]  # a ring: every stride, from 0
    assert window_starts(32, 32, 24, True) == [0, 24]


def test_windowed_reports_its_progress_and_batches_its_windows():
    """progress: (0, windows) before the first, then after each call of fn; `batch` windows a call; an
    open signal of one window is one call reported as (0, 1), (1, 1)."""
    calls, said = [], []
    fn = lambda w: calls.append(w.shape[0]) or w  # noqa: E731
    x = torch.randn(2, 100)
    windowed(fn, x, 1, 32, 8, batch=2, progress=lambda done, total: said.append((done, total)))
    assert said == [(0, 4), (2, 4), (4, 4)] and calls == [4, 4]  # 4 windows, 2 a call, 2 rows each
    said.clear()
    one = torch.randn(2, 32, dtype=torch.float64)
    assert windowed(lambda w: w, one, 1, 32, 8, progress=lambda done, total: said.append((done, total))) is one
    assert said == [(0, 1), (1, 1)]  # fn(x) itself: not a float32 blend of one window


def test_a_ring_cross_fades_across_its_seam():
    """Where the last window wraps onto the first, the two cross-fade with the sin^2 ramps like any other
    pair: a function that answers each window with its own index shows the weights (the identity cannot,
    since they divide out)."""
    from musicldm_core.longform import ramp_weights

    calls = []

    def index_of_call(w):
        calls.append(len(calls))
        return torch.full_like(w, float(calls[-1]))

    out = windowed(index_of_call, torch.zeros(1, 96), 1, 32, 8, circular=True)  # windows at 0, 24, 48, 72
    up = ramp_weights(32, 8, False, False, True)[:8].float()  # window 0 rises over frames 0-7 as window 3 falls
    assert len(calls) == 4 and torch.allclose(out[0, :8], 3 * (1 - up), rtol=0, atol=1e-6)


def test_an_open_signal_keeps_its_ends_untouched():
    """No ramp at the open ends: the frames only the first (last) window covers come back bit for bit
    (a weight there, divided out again, would move their last bits)."""
    x = torch.randn(3, 100)
    out = windowed(lambda w: w, x, 1, 32, 8)
    assert torch.equal(out[:, :24], x[:, :24]) and torch.equal(out[:, 80:], x[:, 80:])  # windows at 0, 24, 48, 68


def test_a_circular_signal_comes_back_whole():
    """On a ring every frame is covered by the blend all round: the identity gives the input back, also
    when the signal is exactly one window long (which, open, would be a single call)."""
    for length in (96, 100, 32):
        x = torch.randn(1, 3, length, dtype=torch.float32)
        out = windowed(lambda w: w, x, 2, 32, 8, circular=True)
        assert torch.allclose(out, x, rtol=0, atol=1e-6), length
        shifted = windowed(lambda w: w + torch.arange(w.shape[2]).float(), x, 2, 32, 8, circular=True)
        assert not torch.allclose(shifted, x + torch.arange(length).float())  # the windows' own positions


def test_the_windows_of_each_stage_and_no_other():
    """Trained length and overlap per stage (the vocoder's in mel frames); a loop overlaps by a quarter at every
    stage; a stage name that is not one is refused, not given some stage's windows."""
    g = Geometry(sampling_rate=16000, hop=160, mel_bins=64, vae_factor=4, latent_channels=8, sample_size=256)
    assert [g.window(s) for s in STAGES] == [(256, 32), (256, 64), (256, 32), (1024, 128)]
    assert [g.window(s, loop=True) for s in STAGES] == [(256, 64), (256, 64), (256, 64), (1024, 256)]
    with pytest.raises(ValueError, match="stage must be one of encoding, denoising, decoding, vocoding, got 'Deco"):
        g.window("Decoding")


def test_regenerate_mask_keeps_kept_frames_exactly():
    m = regenerate_mask(40, 10.0, 25.0, 4)[0, 0, :, 0]
    assert torch.all(m[:10] == 0) and torch.all(m[25:] == 0) and torch.all(m[14:21] == 1)
    assert torch.all(torch.diff(m[10:15]) > 0)


def test_windowed_decode_against_whole(tiny_ckpt):
    """VAE decode in windows of 256 latent frames overlapping by 32, against one whole decode. Not
    exact: GroupNorm statistics and the mid-block attention are global over time. Measured on random
    weights (where attention is most diffuse), 24 s: below 5% of the peak; no step at the seams
    (the largest jump between neighbouring frames no larger than in the whole decode)."""
    vae = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    z = torch.randn(1, 8, 600, 16, generator=seeded(0))
    with torch.no_grad():
        whole = vae.decode(z)
        parts = windowed(vae.decode, z, 2, 256, 32, num=4)
    _, max_rel, _ = errors(parts, whole)
    rms_rel = float((parts - whole).pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())
    print(f"[seam] windowed vs whole decode: max rel {max_rel:.3e}, rms rel {rms_rel:.3e}")
    assert parts.shape == whole.shape and max_rel < 0.05 and rms_rel < 0.05
    jump = lambda m: (m[:, :, 1:] - m[:, :, :-1]).abs().max()  # noqa: E731
    assert jump(parts) <= 1.05 * jump(whole)


# --- long form -----------------------------------------------------------------------------------

def test_one_window_equals_the_direct_path_bit_for_bit(pipe):
    a = pipe("techno", audio_length_in_s=1.0, generator=seeded(), **KW).audios
    b = pipe("techno", audio_length_in_s=1.0, generator=seeded(), window="windowed", **KW).audios
    assert np.array_equal(a, b)


def test_full_size_one_window_equals_the_direct_path(full_ckpt):
    big = MusicLDMPipeline.from_pretrained(full_ckpt)
    a = big("techno", audio_length_in_s=1.0, generator=seeded(), **KW).audios
    b = big("techno", audio_length_in_s=1.0, generator=seeded(), window="windowed", **KW).audios
    assert np.array_equal(a, b)


def test_long_audio_is_windowed_and_seamless(pipe):
    """6 s with a 1.28 s trained window: the windowed path asked for by name ("auto", the command line's
    default, windows past the trained length too), the reference's whole latent by default; the progress
    counts every window, and no border jumps more than the inside does."""
    seen = []
    a = pipe("techno", audio_length_in_s=6.0, generator=seeded(), window="windowed", **KW,
             progress=lambda stage, done, total: seen.append((stage, done, total))).audios
    auto = pipe("techno", audio_length_in_s=6.0, generator=seeded(), window="auto", **KW).audios
    whole = pipe("techno", audio_length_in_s=6.0, generator=seeded(), **KW).audios
    assert np.array_equal(whole, pipe("techno", audio_length_in_s=6.0, generator=seeded(), window="whole", **KW).audios)
    assert a.shape == whole.shape == (1, 96000) and not np.array_equal(a, whole) and np.array_equal(a, auto)
    # every stage starts at 0 and ends complete: 3 steps, then 150 latent frames in VAE windows of 32 (stride
    # 28) and 600 mel frames in vocoder windows of 128 (stride 112)
    vae, vocoder = len(range(0, 150 - 32, 28)) + 1, len(range(0, 600 - 128, 112)) + 1
    expected = {"encoding the prompt": 1, "denoising": 3, "decoding": vae, "vocoding": vocoder}
    stages = [event for event in seen if ": " not in event[0]]
    assert [stage for stage, done, _ in stages if done == 0] == list(expected)
    assert stages == [(stage, done, total) for stage, total in expected.items() for done in range(total + 1)]
    # inside each step, its windows (the denoiser's, two a UNet call): 0 .. W after every "denoising" 0 .. 2
    windows = [(done, total) for stage, done, total in seen if stage == "denoising: windows"]
    per_step = windows[-1][1]
    assert per_step >= 3 and windows == [(done, per_step) for _ in range(3) for done in
                                           [0, *range(2, per_step, 2), per_step]], windows
    wave = a[0]
    jumps = np.abs(np.diff(wave))
    borders = np.zeros_like(jumps, dtype=bool)
    for stage_stride, per_frame in ((24, 640), (28, 640), (112 * 4, 160)):  # UNet, VAE, vocoder strides
        for s in range(stage_stride * per_frame // (4 if per_frame == 160 else 1), len(jumps), stage_stride * per_frame):
            borders[max(0, s - 200):s + 200] = True
    assert jumps[borders].max() <= jumps[~borders].max()


# --- audio-to-audio ------------------------------------------------------------------------------

def test_strength_moves_away_from_the_input(pipe):
    wave = sine(1.0)
    base = pipe("jazz", audio=wave, audio_sampling_rate=16000, strength=0.0, **KW).audios
    dist = [float(np.abs(pipe("jazz", audio=wave, audio_sampling_rate=16000, strength=s, generator=seeded(),
                                   **KW).audios - base).max()) for s in (0.34, 1.0)]
    assert 0 < dist[0] < dist[1] or dist[0] > 0


def test_inpaint_keeps_the_rest(pipe):
    """In one window (longer inputs: tests/test_properties.py)."""
    wave = sine(1.0)
    base = pipe("jazz", audio=wave, audio_sampling_rate=16000, strength=0.0, **KW).audios
    out = pipe("jazz", audio=wave, audio_sampling_rate=16000, inpaint=(0.4, 0.8), generator=seeded(), **KW).audios
    start, end = 10 * 640, 20 * 640  # latent frames 10 .. 20 (0.4 s .. 0.8 s)
    assert out.shape == base.shape
    assert np.array_equal(out[:, :start], base[:, :start]) and np.array_equal(out[:, end:], base[:, end:])
    assert np.abs(out[:, start + 2000:end - 2000] - base[:, start + 2000:end - 2000]).max() > 1e-3


def test_extend_keeps_the_prefix(pipe):
    wave = sine(1.0)
    base = pipe("jazz", audio=wave, audio_sampling_rate=16000, strength=0.0, **KW).audios
    out = pipe("jazz", audio=wave, audio_sampling_rate=16000, extend=2.0, generator=seeded(), **KW).audios
    assert out.shape == (1, 48000)
    assert np.array_equal(out[:, :16000], base)
    assert np.abs(out[:, 20000:]).max() > 1e-3


def test_audio_file_at_another_rate(pipe, tmp_path):
    path = tmp_path / "in.flac"
    sf.write(path, np.stack([sine(1.0, 44100), sine(1.0, 44100, 220)], axis=1), 44100)
    out = pipe("jazz", audio=str(path), strength=0.5, generator=seeded(), **KW).audios
    assert out.shape == (1, 16000)


# --- front ends ----------------------------------------------------------------------------------

def speech_like(seconds=1.5, rate=16000):
    """A glottal pulse train at a gliding pitch through three vowel formants: speech's structure."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    pulses = (np.diff(np.floor(np.cumsum(pitch) / rate), prepend=0) > 0).astype(np.float64)
    out = np.zeros_like(pulses)
    for formant, bandwidth in ((700, 110), (1220, 120), (2600, 160)):
        r, theta = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * formant / rate
        y1 = y2 = 0.0
        for i, p in enumerate(pulses):
            y = p + 2 * r * np.cos(theta) * y1 - r * r * y2
            out[i] += y
            y2, y1 = y1, y
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


@pytest.mark.parametrize("signal", ["sines", "noise", "speech-like", "quiet noise"])
def test_log_mel_against_audioldm(signal):
    """Ours against AudioLDM's TacotronSTFT (MusicLDM's training front end), fetched from PyPI."""
    from audioldm_reference import tacotron_stft

    rng = np.random.RandomState(0)
    wave = {"sines": sine(2.0) + sine(2.0, freq=3000.0) * 0.5, "noise": rng.randn(32000).astype(np.float32) * 0.3,
            "speech-like": speech_like(), "quiet noise": rng.randn(16000).astype(np.float32) * 1e-4}[signal]
    x = torch.from_numpy(np.clip(wave, -1, 1))[None]
    ref = tacotron_stft().mel_spectrogram(x)[0][0].T
    ours = log_mel(x)[0]
    assert_close(ours, ref, 2e-6, f"log-mel vs TacotronSTFT, {signal}")


def test_log_mel_detects_a_wrong_hop():
    from audioldm_reference import tacotron_stft

    x = torch.from_numpy(speech_like())[None]
    ref = tacotron_stft().mel_spectrogram(x)[0][0].T
    ours = log_mel(x, hop=161)[0]
    assert ours.shape != ref.shape or errors(ours, ref)[1] > 1e-3


def test_resample_any_rate_keeps_a_tone():
    tone = torch.from_numpy(sine(1.0, 44100, 1000.0)).double()[None]
    out = resample(tone, 44100, 16000)[0]
    expected = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(len(out)) / 16000)
    assert len(out) == 16000 and np.abs(out.numpy()[300:-300] - expected[300:-300]).max() < 2e-3


def test_resample_against_librosa():
    import librosa

    x = np.random.RandomState(0).randn(44100).astype(np.float32) * 0.3
    ours = resample(torch.from_numpy(x)[None], 44100, 16000)[0].numpy()
    ref = librosa.resample(x, orig_sr=44100, target_sr=16000, res_type="soxr_hq")
    n = min(len(ours), len(ref))
    rms = np.sqrt(np.mean((ours[:n] - ref[:n]) ** 2) / np.mean(ref[:n] ** 2))
    print(f"[resample] 44.1 -> 16 kHz vs librosa soxr_hq: rms {rms:.2e}")
    assert rms < 0.01


def test_resample_block_and_gather_paths_agree(monkeypatch):
    """Common ratios run as one block matrix per chunk, odd ones gather from a table of phases: the same
    taps at the same positions, so the two agree to float64 rounding (the gather path forced by a lower
    limit), in every phase and at both ends; progress ends at its total."""
    from musicldm_core import resampler

    x = torch.from_numpy(np.random.RandomState(1).randn(2, 5003))
    for orig, target in ((44100, 16000), (16000, 48000), (22050, 16000), (8000, 16000)):
        block = resample(x, orig, target)
        with monkeypatch.context() as m:
            m.setattr(resampler, "TABLE_LIMIT", resampler.resample_cost(orig, target))
            gather = resample(x, orig, target)
        assert block.shape == gather.shape == (2, -(-5003 * target // orig))
        assert (block - gather).abs().max() < 1e-12, (orig, target)
    progress = []
    resample(x, 44100, 16000, progress=lambda done, total: progress.append((done, total)))
    assert progress[-1][0] == progress[-1][1]


def test_resample_refuses_a_rate_without_a_small_ratio():
    with pytest.raises(ValueError, match="resampling from 999983 Hz to 16000 Hz needs more than"):
        resample(torch.zeros(1, 1000, dtype=torch.float64), 999983, 16000)


# --- command line --------------------------------------------------------------------------------

BAD = [
    (["--input", "IN", "--strength", "1.5"], "--strength must be a finite number >= 0 and <= 1"),
    (["--input", "IN", "--inpaint", "0.5:3.0"], "--inpaint must be a span (start, end) in seconds"),
    (["--input", "IN", "--inpaint", "abc"], "--inpaint must be START:END"),
    (["--input", "MISSING"], "--input: no such file"),
    (["--input", "EMPTY"], "is empty (no samples)"),
    (["--input", "SILENT"], "--input is silent"),
    (["--input", "IN", "--seconds", "3"], "--seconds cannot be used with --input"),
    (["--strength", "0.5"], "need --input FILE"),
    (["--input", "IN", "--inpaint", "0.1:0.2", "--extend", "2"], "give one of --strength, --inpaint or --extend"),
    (["--loop", "--window", "whole"], "--loop needs the windowed path"),
    (["--input", "IN", "--extend", "-1"], "--extend must be a finite number > 0"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_values_are_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, args, message):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(no_load))
    sf.write(tmp_path / "in.wav", sine(1.0), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    names = {"IN": "in.wav", "MISSING": "missing.wav", "EMPTY": "empty.wav", "SILENT": "silent.wav"}
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    assert cli.main(["jazz", "-o", str(tmp_path / "out.wav"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_command_line_long_loop_and_audio(tmp_path, tiny_ckpt):
    common = ["--weights", str(tiny_ckpt), "--steps", "2", "--seed", "1", "--threads", "2"]
    assert cli.main(["techno", "-o", str(tmp_path / "long.wav"), "--seconds", "4", *common]) == 0
    assert cli.main(["techno", "-o", str(tmp_path / "loop.wav"), "--seconds", "2", "--loop", *common]) == 0
    sf.write(tmp_path / "in.wav", sine(1.5, 22050), 22050)
    for flag, value, samples in (("--strength", "0.6", 24000), ("--inpaint", "0.2:0.6", 24000),
                                 ("--extend", "1", 40000)):
        out = tmp_path / f"{flag[2:]}.wav"
        assert cli.main(["jazz", "-o", str(out), "--input", str(tmp_path / "in.wav"), flag, value, *common]) == 0
        assert sf.read(out)[0].shape == (samples,), flag
    assert sf.read(tmp_path / "long.wav")[0].shape == (64000,)
    assert sf.read(tmp_path / "loop.wav")[0].shape == (32000,)
