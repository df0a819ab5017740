"""Any length from a model trained on 10.24 s: overlapping windows along time, blended.

MusicLDM's UNet was trained on 256-frame latents (10.24 s); far past that, denoising the whole
latent at once leaves what it learned, and every stage's memory grows with the length. Here each
stage runs on overlapping windows of a fixed length and the outputs are blended with weights
that rise and fall as sin^2 / cos^2 over the overlaps (they sum to one there), so memory is that
of one window and no seam shows:

* denoising: every step, the guided noise prediction of each window (windows batched through
  the UNet), blended into one prediction for the whole latent, which the sampler then steps;
* VAE decode (latent -> mel), VAE encode (mel -> latent) and the vocoder (mel -> waveform):
  the same windows, in the units of each stage.

`circular=True` treats the time axis as a ring (a seamless loop): windows wrap around the end,
so the last frame flows into the first. With window starts at multiples of the stride and a
length that is a multiple of it, rotating the input by a stride rotates every output exactly.

Shapes: `x` is (B, ..., T, ...) with time at `dim`; an output has time length T * num // den.
The windows and overlaps of each stage are the checkpoint's (`Geometry.window`).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch


def window_starts(length: int, window: int, stride: int, circular: bool) -> List[int]:
    """Where the windows begin. Open: 0, stride, ..., and one ending exactly at `length`.
    Circular: every multiple of the stride below `length` (the ring is covered all round)."""
    if circular:
        return list(range(0, length, stride))
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def ramp_weights(window: int, overlap: int, first: bool, last: bool, circular: bool) -> torch.Tensor:
    """(window,) blend weights: sin^2 up over the first `overlap` frames, cos^2 down over the last
    (none at an open end of the whole signal)."""
    w = torch.ones(window, dtype=torch.float64)
    if overlap > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        if circular or not first:
            w[:overlap] = ramp
        if circular or not last:
            w[-overlap:] = ramp.flip(0)
    return w


def windowed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int, window: int, overlap: int,
             num: int = 1, den: int = 1, circular: bool = False, batch: int = 1,
             progress: Optional[Callable[[int, int], None]] = None, indexed: bool = False) -> torch.Tensor:
    """fn over overlapping windows of `x` along `dim`, outputs blended: like fn(x), in bounded memory.

    fn maps a (B, ..., window, ...) slice to one whose time axis is window * num // den long (samples
    past that, which a transposed convolution can add at the end, are dropped).
    `batch` windows are concatenated along dim 0 for one call of fn. An open signal no longer
    than one window is fn(x) itself, unchanged. progress(done, windows): before the first window, then
    after each call of fn. indexed: fn(slices, windows) also takes which windows it is given (their
    indices in window_starts' order), for a stage whose windows differ (a schedule's conditions).
    """
    length = x.shape[dim]
    report = progress or (lambda done, total: None)
    call = fn if indexed else (lambda w, windows: fn(w))
    if not circular and length <= window:
        report(0, 1)
        out = call(x, [0])
        report(1, 1)
        return out
    stride = window - overlap
    starts = window_starts(length, window, stride, circular)
    report(0, len(starts))
    out_len, out_window = length * num // den, window * num // den
    out_overlap = overlap * num // den
    index = [torch.arange(s, s + window) % length for s in starts]
    total = weight_sum = None
    for first in range(0, len(starts), batch):
        group = range(first, min(first + batch, len(starts)))
        pieces = call(torch.cat([x.index_select(dim, index[k].to(x.device)) for k in group]), list(group))
        for k, piece in zip(group, pieces.split(x.shape[0])):
            piece = piece.narrow(dim, 0, out_window)  # a transposed conv may add a few samples at the end
            w = ramp_weights(out_window, out_overlap, k == 0, k == len(starts) - 1, circular)
            shape = [1] * piece.dim()
            shape[dim] = out_window
            w = w.to(piece.device, torch.float32).view(shape)
            at = (torch.arange(starts[k] * num // den, starts[k] * num // den + out_window) % out_len).to(piece.device)
            if total is None:
                size = list(piece.shape)
                size[dim] = out_len
                total = piece.new_zeros(size, dtype=torch.float32)
                weight_sum = piece.new_zeros(out_len, dtype=torch.float32)
            total.index_add_(dim, at, piece.float() * w)
            weight_sum.index_add_(0, at, w.reshape(-1))
        report(group[-1] + 1, len(starts))
    shape = [1] * total.dim()
    shape[dim] = out_len
    return (total / weight_sum.view(shape)).to(pieces.dtype)


def regenerate_mask(length: int, start: float, end: float, edge: int, device=None) -> torch.Tensor:
    """(1, 1, length, 1) float32: 1 on the frames [start, end) to regenerate, 0 on those to keep,
    rising as sin^2 over `edge` frames inside the span from each end that borders kept frames (so
    every kept frame stays exactly as it was)."""
    s, e = max(0, math.floor(start)), min(length, math.ceil(end))
    t = torch.arange(length, dtype=torch.float64)
    edge = max(1, min(edge, (e - s) // 2))
    rise = ((t - s + 0.5) / edge).clamp(0, 1) if s > 0 else torch.ones(length, dtype=torch.float64)
    fall = ((e - t - 0.5) / edge).clamp(0, 1) if e < length else torch.ones(length, dtype=torch.float64)
    mask = torch.sin(0.5 * math.pi * torch.minimum(rise, fall)) ** 2
    mask[(t < s) | (t >= e)] = 0
    return mask.float().view(1, 1, length, 1).to(device)
