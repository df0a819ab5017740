"""An input audio read (audio-to-audio's input, an audio prompt): a file (any format soundfile reads) or an
array, as (samples,) float32 mono at the model's rate; its rate, channels and length bounded and checked, a
file's from its header before it is decoded."""

from __future__ import annotations

import numbers
import os
from typing import Callable, Optional

import numpy as np
import torch

from . import resampler
from .errors import InputTooLong
from .errors import RequestError
from .resampler import resample

INPUT_RATES = (1000, 384000)  # sampling rates an input may have, in Hz
MAX_INPUT_SECONDS = 600.0  # the longest input audio-to-audio reads (10 minutes)
MAX_CHANNELS = 16  # an array's channel side is the shorter one, at most this many


FILTER_COST = {"kaiser": resampler.resample_cost, "hann": resampler.hann_cost}  # a resampler's filter size


def load_audio(audio, sampling_rate: Optional[int], target_sr: int, name: str = "audio",
               min_seconds: float = 0.0, progress: Optional[Callable[[int, int], None]] = None,
               method: str = "kaiser") -> torch.Tensor:
    """A file path, or an array / tensor (samples,), (channels, samples) or soundfile's (samples,
    channels) at `sampling_rate`, as (samples,) float32 mono at target_sr; channels are averaged.

    Bounded before anything heavy: the rate (INPUT_RATES, and a resampling filter of bounded size),
    the length (min_seconds .. MAX_INPUT_SECONDS, a file's from its header, before decoding), and a
    WAV whose data is shorter than its header says is refused as truncated. Errors name the input
    (`name`: the argument that gave it, errors.arg). progress(done, total): the resampling's chunks.
    method: "kaiser" (resampler.resample, diffusers' librosa, in float64) or "hann" (torchaudio's
    default, in float32, as MusicLDM's training read its audio)."""
    if isinstance(audio, (str, os.PathLike)):
        if sampling_rate is not None:
            raise RequestError(f"audio_sampling_rate applies to an array; the file {os.fspath(audio)!r} carries its "
                               f"own rate (leave it out)")
        wave, sampling_rate = _read_file(os.fspath(audio), name, min_seconds, target_sr, method)
    elif isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):
        wave = _as_channels(audio, name)
        if sampling_rate is None:
            raise RequestError(f"{name}: an array needs its sampling rate (audio_sampling_rate)")
    else:
        raise RequestError(f"{name} must be a file path or a float array (samples,) or (channels, samples), "
                           f"got {type(audio).__name__}")
    check_rate(sampling_rate, target_sr, f"{name}: the sampling rate", method)
    _check_length(wave.shape[-1] / sampling_rate, name, min_seconds)
    if not torch.isfinite(wave).all():
        raise RequestError(f"{name} contains NaN or infinite samples")
    mono = wave.mean(dim=0, keepdim=True)
    if mono.abs().max() == 0:
        raise RequestError(f"{name} is silent (every sample is zero): there is nothing to read from it")
    if method == "hann":
        return resampler.resample_hann(mono, int(sampling_rate), target_sr)[0]
    return resample(mono.double(), int(sampling_rate), target_sr, progress=progress)[0].float()


def check_rate(rate, target_sr: int, name: str, method: str = "kaiser") -> None:
    """An integer rate in INPUT_RATES that `resample` can take to target_sr with a bounded filter."""
    low, high = INPUT_RATES
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or not low <= rate <= high:
        raise RequestError(f"{name} must be a whole number of Hz from {low} to {high}, got {rate!r}")
    cost = FILTER_COST[method](int(rate), target_sr)
    if cost > resampler.TABLE_LIMIT:
        raise RequestError(f"{name} {rate} Hz has no small ratio to {target_sr} Hz (resampling would need {cost} "
                           "filter coefficients); convert it to a common rate such as 44100 or 48000 Hz first")


def _check_length(seconds: float, name: str, min_seconds: float) -> None:
    if seconds == 0:
        raise RequestError(f"{name} is empty (no samples)")
    if seconds < min_seconds:
        raise RequestError(f"{name} is {seconds * 1000:.1f} ms long; it must be at least {min_seconds * 1000:g} ms "
                           "(one latent frame)")
    if seconds > MAX_INPUT_SECONDS:
        raise InputTooLong(f"{name} is {seconds:.1f} s long; at most {MAX_INPUT_SECONDS:g} s is read (cut it first)")


def _read_file(path: str, name: str, min_seconds: float, target_sr: int, method: str) -> tuple[torch.Tensor, int]:
    """(channels, samples) float32 and the rate of an audio file; its header checked before decoding."""
    import re

    import soundfile as sf

    if not os.path.exists(path):
        raise RequestError(f"{name}: no such file {path!r}")
    if os.path.isdir(path):
        raise RequestError(f"{name}: {path!r} is a folder, not an audio file")
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises its own LibsndfileError, or RuntimeError / OSError
        raise RequestError(f"{name}: cannot read {path!r} as audio ({str(e).splitlines()[0]})") from None
    check_rate(info.samplerate, target_sr, f"{name}: the sampling rate of {path!r}", method)
    short = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", info.extra_info, re.M)
    if short:
        raise RequestError(f"{name}: {path!r} is truncated: its header promises {int(short.group(1))} bytes of audio, "
                           f"the file holds {int(short.group(2))}")
    _check_length(info.frames / info.samplerate, f"{name} {path!r}", min_seconds)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise RequestError(f"{name}: cannot read {path!r} as audio ({str(e).splitlines()[0]})") from None
    return torch.from_numpy(data.T.copy()), rate


def _as_channels(audio, name: str) -> torch.Tensor:
    """An array -> (channels, samples) float32; the shorter side of a 2-D array (at most MAX_CHANNELS) is the
    channels."""
    try:
        wave = audio if torch.is_tensor(audio) else torch.as_tensor(np.asarray(audio))
    except (TypeError, ValueError) as e:
        raise RequestError(f"{name} must be a float array (samples,) or (channels, samples): {e}") from None
    if wave.dim() not in (1, 2):
        raise RequestError(f"{name} must have 1 or 2 dimensions, (samples,) or (channels, samples), got shape "
                           f"{tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise RequestError(f"{name} must hold floating-point samples in [-1, 1], got {wave.dtype}")
    if wave.dim() == 1:
        return wave.float()[None]
    if wave.shape[0] > MAX_CHANNELS and wave.shape[1] <= MAX_CHANNELS:
        wave = wave.T  # soundfile's (samples, channels)
    if wave.shape[0] > MAX_CHANNELS:
        raise RequestError(f"{name} has shape {tuple(wave.shape)}: neither side is a channel count (at most "
                           f"{MAX_CHANNELS}); give (samples,) or (channels, samples)")
    return wave.float()
