"""Audio front ends: waveform -> what CLAP's audio tower reads (to rank takes), and -> what the VAE reads.

* `resample(wave, 16000, 48000)`: a Kaiser-windowed sinc interpolator between any two rates,
  standing in for librosa.resample (soxr_hq) without librosa or scipy; its distance to librosa is
  measured in the tests.
* `LogMel`: transformers' `ClapFeatureExtractor` -- repeat-pad to 10 s (`repeatpad`) or crop
  (`rand_trunc`: at numpy's global RandomState like the reference, or at a fixed offset), or the
  fusion variant's four views; 1024-point Hann STFT (reflect-padded, hop 480), Slaney or HTK mel
  filters (50 Hz .. 14 kHz by default), power in dB. Computed in float64 with numpy, as the reference.
* `load_audio`, `normalize_loudness`, `log_mel`: an input for audio-to-audio, through MusicLDM's
  training front end (AudioLDM's TacotronSTFT at 16 kHz: n_fft 1024, hop 160, 64 Slaney mel bands).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clap_config import FeatureExtractorConfig
from .errors import InputTooLong

# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


TABLE_LIMIT = 2**24  # filter coefficients a resampling may hold (128 MB in float64); see resample_cost


def _filter(orig_sr: int, target_sr: int, zero_crossings: int, rolloff: float, beta: float):
    """(up, down, half, taps(phases)): output sample n sits at input position p = n * down / up, with
    up/down the gcd-reduced rates; taps(phases) gives the (len(phases), 2 half) coefficients h(p - k)
    for inputs k = floor(p) - half + 1 .. floor(p) + half, one row per fractional position n * down % up."""
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    cutoff = rolloff * min(1.0, up / down)  # of the input's Nyquist rate
    half = math.ceil(zero_crossings / min(1.0, up / down))  # taps each side, in input samples
    offsets = torch.arange(-half + 1, half + 1, dtype=torch.float64)

    def taps(phases: torch.Tensor) -> torch.Tensor:
        t = phases.to(torch.float64)[:, None] / up - offsets[None, :]  # p - k
        window = torch.special.i0(beta * torch.sqrt(torch.clamp(1 - (t / half) ** 2, min=0))) / torch.special.i0(
            torch.tensor(beta, dtype=torch.float64))
        return cutoff * torch.sinc(cutoff * t) * window

    return up, down, half, taps


def resample_cost(orig_sr: int, target_sr: int, zero_crossings: int = 96) -> int:
    """Filter coefficients `resample` holds for these rates at least: up x 2 half, a table of phases (the
    block matrix, up x (down + 2 half), is used only when it fits too). Rates whose reduced ratio is large
    (e.g. 999983 -> 16000 Hz: 16000 phases of 12000 taps) would need more than TABLE_LIMIT; they are
    refused by name."""
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    return up * 2 * math.ceil(zero_crossings / min(1.0, up / down))


def resample(wave: torch.Tensor, orig_sr: int, target_sr: int, zero_crossings: int = 96,
             rolloff: float = 0.95675, beta: float = 13.0,
             progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Resample (B, N) float audio from orig_sr to target_sr Hz (any two integer rates): (B, ceil(N * target / orig)).

    Band-limited interpolation: output sample n sits at input position p = n * orig / target and is
    sum_k x[k] h(p - k), h a Kaiser-windowed sinc low-pass at `rolloff` times the lower of the two
    Nyquist rates, `zero_crossings` wide on that side; computed in float64, polyphase (gcd-reduced).
    The defaults were fitted to librosa.resample's soxr_hq for 16 -> 48 kHz: 0.06% rms difference on
    white noise (measured in the tests). Memory is bounded (chunks of about 4M values); progress(done,
    total) is told after each chunk.

    Common rates (44.1 -> 16 kHz: 160 outputs per 441 inputs) run as one matrix product per chunk:
    every `up` outputs read a block of down + 2 half inputs starting `down` further on, so a
    (up, down + 2 half) matrix holds every phase's taps at its offset. Other ratios gather a table of phases.
    """
    up, down, half, taps = _filter(orig_sr, target_sr, zero_crossings, rolloff, beta)
    if up == down:
        return wave
    n_out = -(-wave.shape[-1] * up // down)
    if resample_cost(orig_sr, target_sr, zero_crossings) > TABLE_LIMIT:
        raise ValueError(f"resampling from {orig_sr} Hz to {target_sr} Hz needs more than {TABLE_LIMIT} filter "
                         "coefficients; convert the audio to a common rate (e.g. 48000 Hz) first")
    x = F.pad(wave.to(torch.float64), (half, half))  # zeros beyond the ends
    out, report = [], progress or (lambda done, total: None)
    span = down + 2 * half
    if up * span <= TABLE_LIMIT:  # block matrix: row r has phase r * down % up at offset floor(r * down / up)
        r = torch.arange(up)
        matrix = torch.zeros(up, span, dtype=torch.float64)
        columns = (r * down // up)[:, None] + 1 + torch.arange(2 * half)[None, :]
        matrix.scatter_(1, columns, taps(r * down % up))
        blocks = -(-n_out // up)
        x = F.pad(x, (0, max(0, (blocks - 1) * down + span - x.shape[-1])))
        step = max(1, 2**22 // span)  # blocks per chunk
        for start in range(0, blocks, step):
            stop = min(start + step, blocks)
            frames = x[:, start * down:(stop - 1) * down + span].unfold(-1, span, down)  # (B, blocks, span)
            out.append((frames @ matrix.T).flatten(1))
            report(stop, blocks)
    else:  # a table of the phases; each output gathers its 2 half inputs
        table = taps(torch.arange(up))
        step = max(1, 2**22 // (2 * half))  # outputs per chunk
        offsets = torch.arange(-half + 1, half + 1)
        for start in range(0, n_out, step):
            n = torch.arange(start, min(start + step, n_out))
            index = (n * down // up + half)[:, None] + offsets[None, :]  # floor(p) + j, in the padded signal
            out.append((x[:, index] * table[n * down % up]).sum(-1))
            report(int(n[-1]) + 1, n_out)
    return torch.cat(out, dim=-1)[:, :n_out].to(wave.dtype)


# --------------------------------------------------------------------------------------------
# Log-mel front end (numpy, float64)
# --------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above) or HTK's 2595 log10(1 + f/700)."""
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mel = 3.0 * f / 200.0
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (np.power(10, m / 2595.0) - 1.0)
    f = 200.0 * m / 3.0
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), f)


def mel_filters(n_freqs: int, n_mels: int, f_min: float, f_max: float, sr: int, scale: str) -> np.ndarray:
    """(n_freqs, n_mels) triangular filters: Slaney scale with area normalisation ("slaney"), or the
    HTK scale unnormalised ("htk", torchaudio's default, which CLAP's "fusion" front end uses)."""
    mel_edges = np.linspace(_hz_to_mel(np.array(f_min), scale), _hz_to_mel(np.array(f_max), scale), n_mels + 2)
    edges = _mel_to_hz(mel_edges, scale)
    fft_freqs = np.linspace(0, sr // 2, n_freqs)
    slopes = edges[None, :] - fft_freqs[:, None]
    diff = np.diff(edges)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    if scale == "slaney":
        filters = filters * (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[None, :]
    return filters


CROPS = ("random", "start", "center")


class LogMel:
    """Waveforms at the extractor's rate -> (B, C, frames, mel bins) float32 input features.

    truncation "rand_trunc" (the published checkpoint): C = 1, Slaney filters; audio longer than
    max_length_s is cropped. "fusion": C = 4, HTK filters; short audio gives its mel four times,
    long audio [the whole mel shrunk to the window; a front, a middle and a back window].
    """

    def __init__(self, cfg: FeatureExtractorConfig):
        self.config = cfg
        n_fft = cfg.fft_window_size
        self.window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
        self.filters = mel_filters(n_fft // 2 + 1, cfg.feature_size, cfg.frequency_min, cfg.frequency_max,
                                   cfg.sampling_rate, "htk" if cfg.truncation == "fusion" else "slaney")

    @staticmethod
    def _offset(low: int, high: int, crop: str) -> int:
        """An offset in [low, high]: numpy's GLOBAL RandomState as the reference ("random"), or fixed."""
        if crop == "random":
            return int(np.random.randint(low, high + 1))
        return low if crop == "start" else (low + high) // 2

    def pad(self, wave: np.ndarray) -> np.ndarray:
        """Short audio to max_length_s samples: repeated then zero-padded ("repeatpad"), repeated
        and cut ("repeat"), or zero-padded ("pad")."""
        cfg, n = self.config, self.config.nb_max_samples
        if len(wave) < n:
            if cfg.padding == "repeat":
                wave = np.tile(wave, int(n / len(wave)) + 1)[:n]
            elif cfg.padding == "repeatpad":
                wave = np.tile(wave, int(n / len(wave)))
            wave = np.pad(wave, (0, n - wave.shape[0]), mode="constant", constant_values=0)
        return wave

    def features(self, wave: np.ndarray, crop: str) -> tuple[np.ndarray, bool]:
        """One waveform -> ((C, frames, mels) features, whether it was longer than the window)."""
        n = self.config.nb_max_samples
        if self.config.truncation == "rand_trunc":
            if len(wave) > n:
                start = self._offset(0, len(wave) - n, crop)
                return self.log_mel(wave[start:start + n])[None], True
            return self.log_mel(self.pad(wave))[None], False
        if len(wave) <= n:
            mel = self.log_mel(self.pad(wave))
            return np.stack([mel] * 4), False
        mel = self.log_mel(wave)
        chunk = n // self.config.hop_length + 1
        total = mel.shape[0]
        if chunk == total:
            return np.stack([mel] * 4), False
        return self._fusion(mel, total, chunk, crop), True

    def _fusion(self, mel: np.ndarray, total: int, chunk: int, crop: str) -> np.ndarray:
        """transformers' _random_mel_fusion: a front, middle and back window, drawn in that order."""
        ranges = np.array_split(list(range(0, total - chunk + 1)), 3)
        ranges = [r if len(r) else np.array([0]) for r in ranges]
        # "random": randint(r[0], r[-1] + 1) draws what the reference's np.random.choice(r) draws, r being consecutive
        starts = [self._offset(int(r[0]), int(r[-1]), crop) for r in ranges]
        shrunk = F.interpolate(torch.tensor(mel[None, None]), size=[chunk, mel.shape[1]], mode="bilinear",
                               align_corners=False)[0, 0].numpy()
        return np.stack([shrunk] + [mel[s:s + chunk] for s in starts])

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """(N,) float64 -> (frames, mel bins) power dB, frames = 1 + N // hop."""
        n_fft, hop = self.config.fft_window_size, self.config.hop_length
        padded = np.pad(wave, (n_fft // 2, n_fft // 2), mode="reflect").astype(np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (frames, n_fft)
        spec = np.fft.rfft(frames * self.window, axis=-1).astype(np.complex64)  # the reference stores complex64
        power = np.abs(spec, dtype=np.float64) ** 2.0
        mel = np.maximum(1e-10, self.filters.T @ power.T)  # (mels, frames)
        db = 10.0 * (np.log10(np.clip(mel, 1e-10, None)) - np.log10(1.0))
        return db.T.astype(np.float32)

    def __call__(self, waves: Sequence[np.ndarray], crop: str = "random") -> torch.Tensor:
        if crop not in CROPS:
            raise ValueError(f"crop: expected one of {', '.join(map(repr, CROPS))}, got {crop!r}")
        out = [self.features(np.asarray(w, dtype=np.float64), crop) for w in waves]
        if self.config.truncation == "fusion" and crop == "random" and not any(longer for _, longer in out):
            # the reference marks one random take as "longer" (unused without a fusion model), drawing
            # from numpy's global RandomState: draw it too, so that state moves on exactly as there.
            np.random.randint(0, len(out))
        return torch.from_numpy(np.stack([f for f, _ in out]))  # (B, C, frames, mels)


# --------------------------------------------------------------------------------------------
# MusicLDM's own mel front end (audio-to-audio input)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tacotron_bases(n_fft: int, n_mels: int, sr: int, f_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann-windowed Fourier basis (2 * (n_fft/2 + 1), 1, n_fft), Slaney mel filters (n_mels, n_fft/2 + 1)),
    float32, built as AudioLDM's TacotronSTFT builds them (numpy, then cast)."""
    fourier = np.fft.fft(np.eye(n_fft))[: n_fft // 2 + 1]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    basis = torch.from_numpy(np.vstack([fourier.real, fourier.imag])[:, None, :]).float() * torch.from_numpy(
        window).float()
    mel = torch.from_numpy(mel_filters(n_fft // 2 + 1, n_mels, 0.0, f_max, sr, "slaney").T.astype(np.float32))
    return basis, mel


def normalize_loudness(wave: torch.Tensor) -> torch.Tensor:
    """AudioLDM's training normalisation of a (B, N) waveform: remove the mean, peak at 0.5."""
    wave = wave - wave.mean(dim=-1, keepdim=True)
    return wave / (wave.abs().amax(dim=-1, keepdim=True) + 1e-8) * 0.5


def log_mel(wave: torch.Tensor, n_fft: int = 1024, hop: int = 160, n_mels: int = 64, sr: int = 16000) -> torch.Tensor:
    """(B, N) waveform in [-1, 1] at `sr` -> (B, 1 + N // hop, n_mels) log-mel, the VAE's input.

    AudioLDM's TacotronSTFT (MusicLDM's training front end): reflect-pad n_fft/2 each side, a
    Hann-windowed STFT as a strided convolution with the Fourier basis (float32), magnitude, Slaney
    mel filters 0 .. sr/2, log of the values clamped at 1e-5.
    """
    basis, mel = _tacotron_bases(n_fft, n_mels, sr, sr / 2)
    x = F.pad(wave.float()[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")
    spec = F.conv1d(x, basis.to(x.device), stride=hop)  # (B, 2 * bins, frames)
    bins = n_fft // 2 + 1
    magnitude = torch.sqrt(spec[:, :bins] ** 2 + spec[:, bins:] ** 2)
    return torch.log(torch.clamp(torch.matmul(mel.to(x.device), magnitude), min=1e-5)).transpose(1, 2)


INPUT_RATES = (1000, 384000)  # sampling rates an input may have, in Hz
MAX_INPUT_SECONDS = 600.0  # the longest input audio-to-audio reads (10 minutes)
MAX_CHANNELS = 16  # an array's channel side is the shorter one, at most this many


def load_audio(audio, sampling_rate: Optional[int], target_sr: int, name: str = "audio",
               min_seconds: float = 0.0, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """A file path, or an array / tensor (samples,), (channels, samples) or soundfile's (samples,
    channels) at `sampling_rate`, as (samples,) float32 mono at target_sr; channels are averaged.

    Bounded before anything heavy: the rate (INPUT_RATES, and a resampling filter of bounded size),
    the length (min_seconds .. MAX_INPUT_SECONDS, a file's from its header, before decoding), and a
    WAV whose data is shorter than its header says is refused as truncated. Errors name the input
    (`name`: the argument or flag that gave it). progress(done, total): the resampling's chunks."""
    if isinstance(audio, (str, os.PathLike)):
        if sampling_rate is not None:
            raise ValueError(f"audio_sampling_rate applies to an array; the file {os.fspath(audio)!r} carries its "
                             f"own rate (leave it out)")
        wave, sampling_rate = _read_file(os.fspath(audio), name, min_seconds, target_sr)
    elif isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):
        wave = _as_channels(audio, name)
        if sampling_rate is None:
            raise ValueError(f"{name}: an array needs its sampling rate (audio_sampling_rate)")
    else:
        raise ValueError(f"{name} must be a file path or a float array (samples,) or (channels, samples), "
                         f"got {type(audio).__name__}")
    check_rate(sampling_rate, target_sr, f"{name}: the sampling rate")
    _check_length(wave.shape[-1] / sampling_rate, name, min_seconds)
    if not torch.isfinite(wave).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    mono = wave.mean(dim=0, keepdim=True)
    if mono.abs().max() == 0:
        raise ValueError(f"{name} is silent (every sample is zero): there is nothing to transform")
    return resample(mono.double(), int(sampling_rate), target_sr, progress=progress)[0].float()


def check_rate(rate, target_sr: int, name: str) -> None:
    """An integer rate in INPUT_RATES that `resample` can take to target_sr with a bounded filter."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or not INPUT_RATES[0] <= rate <= INPUT_RATES[1]:
        raise ValueError(f"{name} must be a whole number of Hz from {INPUT_RATES[0]} to {INPUT_RATES[1]}, got {rate!r}")
    if resample_cost(int(rate), target_sr) > TABLE_LIMIT:
        raise ValueError(f"{name} {rate} Hz has no small ratio to {target_sr} Hz (resampling would need "
                         f"{resample_cost(int(rate), target_sr)} filter coefficients); convert it to a common "
                         "rate such as 44100 or 48000 Hz first")


def _check_length(seconds: float, name: str, min_seconds: float) -> None:
    if seconds == 0:
        raise ValueError(f"{name} is empty (no samples)")
    if seconds < min_seconds:
        raise ValueError(f"{name} is {seconds * 1000:.1f} ms long; it must be at least {min_seconds * 1000:g} ms "
                         "(one latent frame)")
    if seconds > MAX_INPUT_SECONDS:
        raise InputTooLong(f"{name} is {seconds:.1f} s long; at most {MAX_INPUT_SECONDS:g} s is read (cut it first)")


def _read_file(path: str, name: str, min_seconds: float, target_sr: int) -> tuple[torch.Tensor, int]:
    """(channels, samples) float32 and the rate of an audio file; its header checked before decoding."""
    import re

    import soundfile as sf

    if not os.path.exists(path):
        raise ValueError(f"{name}: no such file {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a folder, not an audio file")
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises its own LibsndfileError, or RuntimeError / OSError
        raise ValueError(f"{name}: cannot read {path!r} as audio ({str(e).splitlines()[0]})") from None
    check_rate(info.samplerate, target_sr, f"{name}: the sampling rate of {path!r}")
    short = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", info.extra_info, re.M)
    if short:
        raise ValueError(f"{name}: {path!r} is truncated: its header promises {int(short.group(1))} bytes of audio, "
                         f"the file holds {int(short.group(2))}")
    _check_length(info.frames / info.samplerate, f"{name} {path!r}", min_seconds)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"{name}: cannot read {path!r} as audio ({str(e).splitlines()[0]})") from None
    return torch.from_numpy(data.T.copy()), rate


def _as_channels(audio, name: str) -> torch.Tensor:
    """An array -> (channels, samples) float32; the shorter side of a 2-D array (at most MAX_CHANNELS) is the channels."""
    try:
        wave = audio if torch.is_tensor(audio) else torch.as_tensor(np.asarray(audio))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a float array (samples,) or (channels, samples): {e}") from None
    if wave.dim() not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 dimensions, (samples,) or (channels, samples), got shape "
                         f"{tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"{name} must hold floating-point samples in [-1, 1], got {wave.dtype}")
    if wave.dim() == 1:
        return wave.float()[None]
    if wave.shape[0] > MAX_CHANNELS and wave.shape[1] <= MAX_CHANNELS:
        wave = wave.T  # soundfile's (samples, channels)
    if wave.shape[0] > MAX_CHANNELS:
        raise ValueError(f"{name} has shape {tuple(wave.shape)}: neither side is a channel count (at most "
                         f"{MAX_CHANNELS}); give (samples,) or (channels, samples)")
    return wave.float()
