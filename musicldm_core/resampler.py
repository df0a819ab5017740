"""Two resamplers between any two integer rates, neither needing librosa, scipy or torchaudio:

* `resample(wave, 16000, 48000)`: a Kaiser-windowed sinc interpolator standing in for librosa.resample
  (soxr_hq), which diffusers' pipeline uses (ranking takes, audio-to-audio's input); its distance to
  librosa is measured in the tests.
* `resample_hann(wave, 16000, 48000)`: torchaudio.functional.resample with its defaults, computed as it
  computes them, which MusicLDM's authors used in training (their data loader to 16 kHz, and their CLAP
  conditioner from 16 to 48 kHz): audio prompts go through it (audio_prompt.py).

Their filter tables are bounded (TABLE_LIMIT): a pair of rates with no small ratio is refused by name."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

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


def hann_cost(orig_sr: int, target_sr: int, zero_crossings: int = 6, rolloff: float = 0.99) -> int:
    """Filter coefficients `resample_hann` holds: one (down + 2 width)-tap filter per output phase."""
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    return up * (down + 2 * _hann_width(up, down, zero_crossings, rolloff))


def _hann_width(up: int, down: int, zero_crossings: int, rolloff: float) -> int:
    """Input samples each side of an output that its filter reaches (`zero_crossings` of the cutoff's sinc)."""
    return math.ceil(zero_crossings * down / (min(up, down) * rolloff))


def resample_hann(wave: torch.Tensor, orig_sr: int, target_sr: int, zero_crossings: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """(..., N) float audio -> (..., ceil(N * target / orig)): torchaudio.functional.resample's default
    ("sinc_interp_hann", lowpass_filter_width 6, rolloff 0.99), in the wave's dtype, to the last bit.

    With the rates gcd-reduced to `up` outputs per `down` inputs, output phase j (of `up`) sits at input
    position j * down / up; its filter is a sinc low-pass at `rolloff` times the lower Nyquist rate,
    windowed by cos^2 over +-zero_crossings of its own zero crossings, sampled at the input positions
    -width .. down + width around the phase's block. One strided convolution applies all phases (input
    zero-padded by width before and width + down after); the phases' outputs are interleaved and the
    tail past ceil(N * up / down) dropped. The filter's arithmetic follows torchaudio's order of operations
    (the same roundings): positions divided by down, shifted by -j / up, scaled by the cutoff, clamped,
    the window cos(t pi / 2 zc)^2, then sin(pi t) / (pi t) times the window times cutoff / down.
    """
    if orig_sr == target_sr:
        return wave
    if hann_cost(orig_sr, target_sr, zero_crossings, rolloff) > TABLE_LIMIT:
        raise ValueError(f"resampling from {orig_sr} Hz to {target_sr} Hz needs more than {TABLE_LIMIT} filter "
                         "coefficients; convert the audio to a common rate (e.g. 48000 Hz) first")
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    cutoff = min(up, down) * rolloff
    width = _hann_width(up, down, zero_crossings, rolloff)
    dtype, device = wave.dtype, wave.device
    positions = torch.arange(-width, width + down, dtype=dtype, device=device)[None, None] / down
    t = torch.arange(0, -up, -1, dtype=dtype, device=device)[:, None, None] / up + positions  # (up, 1, taps)
    t *= cutoff
    t = t.clamp_(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t *= math.pi
    taps = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    taps *= window * (cutoff / down)
    shape, n = wave.shape, wave.shape[-1]
    x = F.pad(wave.reshape(-1, n), (width, width + down))
    out = F.conv1d(x[:, None], taps, stride=down).transpose(1, 2).reshape(x.shape[0], -1)
    return out[..., :math.ceil(up * n / down)].reshape(*shape[:-1], -1)
