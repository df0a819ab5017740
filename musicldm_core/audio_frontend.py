"""Audio front ends: waveform -> what CLAP's audio tower reads (to rank takes), and -> what the VAE reads.

* `LogMel`: transformers' `ClapFeatureExtractor` -- repeat-pad to 10 s (`repeatpad`) or crop
  (`rand_trunc`: at numpy's global RandomState like the reference, or at a fixed offset), or the
  fusion variant's four views; 1024-point Hann STFT (reflect-padded, hop 480), Slaney or HTK mel
  filters (50 Hz .. 14 kHz by default), power in dB. Computed in float64 with numpy, as the reference.
* `normalize_loudness`, `log_mel`: an input for audio-to-audio (audio_input.py reads it), through
  MusicLDM's training front end (AudioLDM's TacotronSTFT at 16 kHz: n_fft 1024, hop 160, 64 Slaney
  mel bands).
The resampler they share is resampler.py.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clap_config import FeatureExtractorConfig

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
