"""audio_frontend.py, audio_input.py and resampler.py on their own, each part called directly: reading an
input (its layouts, bounds and messages), resampling's exact properties, the loudness normalisation and the mel scales.

The parity of the front ends lives beside their references: LogMel against transformers' extractor
(parity/test_clap.py, parity/test_clap_configs.py), log_mel against AudioLDM's TacotronSTFT and
resample against librosa (test_longform.py). The command line's refusals of an input run through a
subprocess in test_refusals.py; here the same checks take milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import refused, sine
from musicldm_core import audio_frontend as af, resampler
from musicldm_core.audio_input import load_audio
from musicldm_core.resampler import resample
from musicldm_core.errors import InputTooLong


def write(path, audio: np.ndarray, rate: int, subtype: str = "FLOAT"):
    sf.write(path, audio.T if audio.ndim == 2 else audio, rate, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------
# load_audio: what is read, and what is refused before anything heavy
# ---------------------------------------------------------------------------------------------


def test_channels_are_averaged_whatever_the_layout(tmp_path):
    stereo = np.stack([sine(0.25), 2 * sine(0.25)])  # (2, samples): the second channel twice the first
    mono = torch.from_numpy(stereo.mean(0))
    for audio in (stereo, stereo.T, torch.from_numpy(stereo), stereo.tolist()):
        out = load_audio(audio, 16000, 16000)
        assert out.shape == (4000,) and out.dtype == torch.float32
        torch.testing.assert_close(out, mono, rtol=0, atol=1e-7)
    from_file = load_audio(write(tmp_path / "s.wav", stereo, 16000), None, 16000)
    torch.testing.assert_close(from_file, mono, rtol=0, atol=1e-7)
    one = load_audio(sine(0.25, 16000).astype("float64"), 16000, 16000)
    assert one.dtype == torch.float32 and torch.equal(one, torch.from_numpy(sine(0.25, 16000)))
    sixteen = np.repeat(sine(0.05, 16000)[None], 16, 0)
    assert load_audio(sixteen.T, 16000, 16000).shape == (800,)  # 16 channels, as (samples, channels)
    assert load_audio(np.ones((16, 10), "float32"), 1000, 1000).shape == (10,)  # 16 channels of 10 samples
    grad = torch.ones(2, 400, requires_grad=True) * 0.1  # a tensor is read as it is (numpy cannot take this one)
    assert load_audio(grad, 16000, 16000).shape == (400,)


def test_a_file_reads_as_its_samples_do(tmp_path):
    """Decoded as float32, then averaged: the same bits as the same samples given as a float32 array."""
    three = np.random.default_rng(0).uniform(-0.9, 0.9, (3, 3000)).astype("float32")  # a mean of 3 rounds in float32
    path = write(tmp_path / "r.wav", three, 16000)
    assert torch.equal(load_audio(path, None, 16000), load_audio(three, 16000, 16000))


def test_the_input_is_resampled_and_reported():
    seen = []
    out = load_audio(sine(0.5, 44100), 44100, 16000, progress=lambda done, total: seen.append((done, total)))
    assert out.shape == (8000,) and seen and seen[-1][0] == seen[-1][1]
    expected = torch.from_numpy(sine(0.5, 16000))
    assert (out - expected)[100:-100].abs().max() < 1e-3  # the same tone, away from the edges


@pytest.mark.parametrize("audio, rate, message", [
    (b"RIFF", 16000, "in must be a file path or a float array (samples,) or (channels, samples), got bytes"),
    ({"array": 1}, 16000, "in must be a file path or a float array (samples,) or (channels, samples), got dict"),
    ([[0.1, 0.2], [0.3]], 16000, "in must be a float array (samples,) or (channels, samples): setting an array "
                               "element with a sequence"),
    (np.zeros((1, 1, 400), "float32") + 0.1, 16000, "in must have 1 or 2 dimensions, (samples,) or (channels, "
                                                     "samples), got shape (1, 1, 400)"),
    (np.zeros(400, "int16") + 1, 16000, "in must hold floating-point samples in [-1, 1], got torch.int16"),
    (np.zeros((17, 400), "float32") + 0.1, 16000, "in has shape (17, 400): neither side is a channel count (at "
                                                   "most 16); give (samples,) or (channels, samples)"),
    (np.zeros(400, "float32") + 0.1, None, "in: an array needs its sampling rate (audio_sampling_rate)"),
    (np.zeros(400, "float32") + 0.1, 999, "in: the sampling rate must be a whole number of Hz from 1000 to 384000, "
                                          "got 999"),
    (np.zeros(4000, "float32") + 0.1, 384001, "got 384001"),
    (np.zeros(400, "float32") + 0.1, 16000.0, "got 16000.0"),
    (np.zeros(400, "float32") + 0.1, True, "got True"),
    (np.zeros(4000, "float32") + 0.1, 96001, "in: the sampling rate 96001 Hz has no small ratio to 16000 Hz "
                                             "(resampling would need 18464000 filter coefficients); convert it to a "
                                             "common rate such as 44100 or 48000 Hz first"),
    (np.zeros(0, "float32"), 16000, "in is empty (no samples)"),
    (np.zeros(639, "float32") + 0.1, 16000, "in is 39.9 ms long; it must be at least 40 ms (one latent frame)"),
    (np.zeros(600 * 1000 + 1, "float32") + 0.1, 1000, "in is 600.0 s long; at most 600 s is read (cut it first)"),
    (np.array([0.1, math.nan] * 400, "float32"), 16000, "in contains NaN or infinite samples"),
    (np.array([0.1, math.inf] * 400, "float32"), 16000, "in contains NaN or infinite samples"),
    (np.zeros(800, "float32"), 16000, "in is silent (every sample is zero): there is nothing to read from it"),
])
def test_an_array_is_refused_by_name(audio, rate, message):
    refused(message, load_audio, audio, rate, 16000, "in", 0.04)


def test_the_default_name_is_audio():
    refused("audio must be a file path or a float array", load_audio, b"RIFF", 16000, 16000)
    refused("audio contains NaN or infinite samples", load_audio, np.array([math.nan] * 20, "float32"), 16000, 16000)


def test_an_input_too_long_is_its_own_kind_of_error():
    """The web server answers it with 413, not 400."""
    with pytest.raises(InputTooLong):
        load_audio(np.zeros(600 * 1000 + 1, "float32") + 0.1, 1000, 16000)


def test_the_bounds_themselves_are_allowed():
    assert load_audio(np.zeros(640, "float32") + 0.1, 16000, 16000, "in", 0.04).shape == (640,)  # 40 ms
    assert load_audio(np.zeros(1, "float32") + 0.1, 16000, 16000).shape == (1,)  # no minimum by default
    assert load_audio(np.zeros(4, "float32") + 0.1, 1000, 1000).shape == (4,)
    assert load_audio(np.zeros(4, "float32") + 0.1, 384000, 384000).shape == (4,)
    assert load_audio(np.zeros(600 * 1000, "float32") + 0.1, 1000, 1000).shape == (600000,)  # 600 s
    assert resampler.resample_cost(96001, 16000) > resampler.TABLE_LIMIT >= resampler.resample_cost(44100, 16000)


def test_a_file_is_checked_from_its_header_first(tmp_path, monkeypatch):
    name = "--input"
    refused(f"--input: no such file {str(tmp_path / 'no.wav')!r}", load_audio, str(tmp_path / "no.wav"), None,
            16000, name)
    refused(f"--input: {str(tmp_path)!r} is a folder, not an audio file", load_audio, tmp_path, None, 16000, name)
    (tmp_path / "text.wav").write_text("not audio")
    refused(f"--input: cannot read {str(tmp_path / 'text.wav')!r} as audio (Error opening", load_audio,
            tmp_path / "text.wav",
            None, 16000, name)
    ok = write(tmp_path / "ok.wav", sine(0.1, 16000), 16000)
    refused(f"audio_sampling_rate applies to an array; the file {str(ok)!r} carries its own rate (leave it out)",
            load_audio, ok, 16000, 16000, name)
    short = write(tmp_path / "short.wav", sine(0.03, 16000), 16000)
    refused(f"--input {str(short)!r} is 30.0 ms long; it must be at least 40 ms", load_audio, short, None, 16000,
            name, 0.04)
    odd = write(tmp_path / "odd.wav", sine(0.1, 999983), 999983)
    refused(f"--input: the sampling rate of {str(odd)!r} must be a whole number of Hz from 1000 to 384000, got "
            "999983", load_audio, odd, None, 16000, name)
    cut = write(tmp_path / "cut.wav", sine(1.0, 16000), 16000, "PCM_16")
    cut.write_bytes(cut.read_bytes()[:16000])
    refused(f"--input: {str(cut)!r} is truncated: its header promises 32000 bytes of audio, the file holds 15956",
            load_audio, cut, None, 16000, name)

    def unreadable(*args, **kwargs):  # the header reads, the data does not
        raise RuntimeError("Error in WAV file.\nmore")

    monkeypatch.setattr(sf, "read", unreadable)
    refused(f"--input: cannot read {str(ok)!r} as audio (Error in WAV file.)", load_audio, ok, None, 16000, name)


def test_a_files_own_rate_and_length_are_read(tmp_path):
    path = write(tmp_path / "a.flac", sine(0.5, 22050), 22050, "PCM_24")
    out = load_audio(str(path), None, 16000)
    assert out.shape == (8000,)
    direct = load_audio(sf.read(path, dtype="float32")[0], 22050, 16000)
    assert torch.equal(out, direct)  # a path and its samples are the same input


# ---------------------------------------------------------------------------------------------
# Resampling: exact properties (its distance to librosa is measured in test_longform.py)
# ---------------------------------------------------------------------------------------------


def test_resampling_keeps_a_constant_and_rounds_the_length_up():
    x = torch.ones(2, 1000, dtype=torch.float64)
    assert resample(x, 16000, 16000) is x
    for orig, target in ((16000, 48000), (44100, 16000), (48000, 16000), (16000, 22050)):
        y = resample(x, orig, target)
        assert y.shape == (2, math.ceil(1000 * target / orig)) and y.dtype == torch.float64
        middle = y[:, y.shape[1] // 4: 3 * y.shape[1] // 4]  # away from the zeros beyond the ends
        assert (middle - 1).abs().max() < 1e-3, (orig, target)
    assert resample(torch.ones(1, 100), 8000, 16000).dtype == torch.float32  # back in the input's dtype


def test_upsampling_by_an_integer_keeps_the_samples():
    """At 1 -> 3 every third output sits on an input sample; with the low-pass at the Nyquist rate itself
    (rolloff 1) the sinc there is 1 at that sample and 0 at every other."""
    x = torch.randn(1, 500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = resample(x, 16000, 48000, rolloff=1.0)
    torch.testing.assert_close(y[:, ::3], x, rtol=0, atol=1e-9)


def test_resampling_a_tone_below_both_nyquists_keeps_it():
    for orig, target in ((48000, 16000), (16000, 44100)):
        x = torch.from_numpy(sine(0.2, orig, 1000.0)).double()[None]
        y = resample(x, orig, target)[0]
        expected = torch.from_numpy(sine(0.2, target, 1000.0)).double()[: y.shape[0]]
        edge = target // 50
        assert (y - expected)[edge:-edge].abs().max() < 2e-3, (orig, target)


def test_a_tone_above_the_new_nyquist_is_removed():
    x = torch.from_numpy(sine(0.2, 48000, 12000.0)).double()[None]  # above 8 kHz: no place at 16 kHz
    y = resample(x, 48000, 16000)[0]
    assert y[400:-400].abs().max() < 1e-3


def test_resampling_reports_each_chunk(monkeypatch):
    seen = []
    x = torch.randn(1, 50000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = resample(x, 44100, 16000)
    monkeypatch.setattr(resampler, "TABLE_LIMIT", resampler.TABLE_LIMIT)
    small = resample(x, 44100, 16000, progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(whole, small) and seen[-1][0] == seen[-1][1] and seen == sorted(seen)


def reports(x: torch.Tensor, orig: int, target: int) -> list:
    seen = []
    resample(x, orig, target, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted({d for d, _ in seen})
    return seen


@pytest.mark.parametrize("orig, target, n, path", [
    (44100, 16000, 2_000_000, "block"),  # 160 outputs per 441 inputs: one matrix of 160 x (441 + 2 x 265)
    (44101, 16000, 30_000, "gather")])  # 16000 phases: a block matrix would hold 714M coefficients
def test_resampling_runs_in_chunks_of_about_4m_values(orig, target, n, path):
    """Memory is bounded: each chunk reads as many whole blocks (or outputs) as 2^22 values hold, whatever the length."""
    g = math.gcd(orig, target)
    up, down = target // g, orig // g
    half = math.ceil(96 / min(1.0, up / down))
    n_out = math.ceil(n * up / down)
    x = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seen = []
    y = resample(x, orig, target, progress=lambda done, total: seen.append((done, total)))[0].numpy()
    # progress counts blocks of `up` outputs on the block path, outputs on the gather path
    total, per_unit = (math.ceil(n_out / up), down + 2 * half) if path == "block" else (n_out, 2 * half)
    assert {t for _, t in seen} == {total} and len(seen) >= 2
    sizes = np.diff([0] + [d for d, _ in seen]) * per_unit
    assert (sizes <= 2**22).all() and (sizes[:-1] > 2**22 - per_unit).all(), sizes
    assert seen[-1][0] == total and [d for d, _ in seen] == sorted({d for d, _ in seen})
    last = [n_out - 1, n_out - 1000]  # outputs of the last chunks are still the formula's
    np.testing.assert_allclose(y[last], kaiser_sinc(x[0].numpy(), orig, target, last), rtol=0, atol=1e-12)


def test_the_block_matrix_is_used_up_to_the_limit_itself(monkeypatch):
    up, span = 160, 441 + 2 * 265  # 44.1 -> 16 kHz
    x = torch.zeros(1, 44100, dtype=torch.float64)
    monkeypatch.setattr(resampler, "TABLE_LIMIT", up * span)
    assert reports(x, 44100, 16000)[-1][1] == 100  # blocks of 160 outputs
    monkeypatch.setattr(resampler, "TABLE_LIMIT", up * span - 1)
    assert reports(x, 44100, 16000)[-1][1] == 16000  # outputs: the table of phases


def test_a_resampling_too_large_is_refused():
    refused("resampling from 96001 Hz to 16000 Hz needs more than 16777216 filter coefficients; convert the audio to "
            "a common rate (e.g. 48000 Hz) first", resample, torch.ones(1, 10), 96001, 16000)
    assert resample(torch.ones(1, 10), 44101, 16000).shape == (1, 4)  # 8.5M coefficients at 96 zero crossings
    refused("resampling from 44101 Hz to 16000 Hz needs more", resample, torch.ones(1, 10), 44101, 16000,
            zero_crossings=200)  # 17.7M at 200
    refused("resampling from 16001 Hz to 96001 Hz needs more", resample, torch.ones(1, 10), 16001, 96001)  # 18.4M


def kaiser_sinc(x: np.ndarray, orig: int, target: int, outputs, zero_crossings: int = 96, rolloff: float = 0.95675,
                beta: float = 13.0) -> np.ndarray:
    """resample's formula, output by output in float64: y[n] = sum_k x[k] h(n orig / target - k), h a Kaiser-windowed
    sinc low-pass at rolloff x the lower Nyquist rate, `zero_crossings` wide on that side."""
    ratio = min(1.0, target / orig)
    cutoff, half = rolloff * ratio, math.ceil(zero_crossings / ratio)
    y = []
    for n in outputs:
        whole, frac = divmod(n * orig, target)  # p = whole + frac / target, exactly
        k = np.arange(whole - half + 1, whole + half + 1)
        t = (whole - k) + frac / target
        h = cutoff * np.sinc(cutoff * t) * np.i0(beta * np.sqrt(np.clip(1 - (t / half) ** 2, 0, None))) / np.i0(beta)
        inside = (k >= 0) & (k < len(x))
        y.append(float((x[k[inside]] * h[inside]).sum()))
    return np.array(y)


@pytest.mark.parametrize("orig, target", [(44100, 16000), (16000, 48000), (22050, 16000), (12345, 16000)])
def test_resampling_is_its_documented_formula(orig, target):
    x = np.random.default_rng(1).standard_normal(3000)
    y = resample(torch.from_numpy(x)[None], orig, target)[0].numpy()
    outputs = [0, 1, 2, 7, len(y) // 2, len(y) // 2 + 1, len(y) - 1]
    np.testing.assert_allclose(y[outputs], kaiser_sinc(x, orig, target, outputs), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Loudness and mel scales
# ---------------------------------------------------------------------------------------------


def test_normalize_loudness_removes_the_mean_and_peaks_at_a_half():
    x = torch.tensor([[1.0, 3.0, 2.0, 6.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 10.0, 0.0, -10.0],
                      [1e-8, -1e-8, 1e-8, -1e-8]], dtype=torch.float64)
    out = af.normalize_loudness(x)  # each row on its own
    torch.testing.assert_close(out[0], torch.tensor([-2.0, 0.0, -1.0, 3.0], dtype=torch.float64) / (3 + 1e-8) * 0.5)
    torch.testing.assert_close(out[2], torch.tensor([0.0, 10.0, 0.0, -10.0], dtype=torch.float64) / (10 + 1e-8) * 0.5)
    assert out[0].abs().max() == pytest.approx(0.5, abs=1e-7) and out[0].mean().abs() < 1e-7
    assert torch.equal(out[1], torch.zeros(4, dtype=torch.float64))  # silence stays silence
    torch.testing.assert_close(out[3], x[3] / 2e-8 * 0.5)  # near silence: the 1e-8 keeps it finite, a quarter


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_the_mel_scales_invert_and_are_the_published_formulas(scale):
    f = np.array([0.0, 200.0, 999.0, 1000.0, 1001.0, 4000.0, 14000.0])
    np.testing.assert_allclose(af._mel_to_hz(af._hz_to_mel(f, scale), scale), f, rtol=1e-12, atol=1e-9)
    if scale == "htk":
        np.testing.assert_allclose(af._hz_to_mel(f, scale), 2595 * np.log10(1 + f / 700), rtol=1e-12)
    else:  # linear below 1 kHz (3 mels per 200 Hz), log above: 27 mels per factor 6.4
        np.testing.assert_allclose(af._hz_to_mel(np.array([200.0, 1000.0, 1000.5, 6400.0]), scale),
                                   [3.0, 15.0, 15 + np.log(1.0005) * 27 / np.log(6.4), 42.0], rtol=1e-12)
