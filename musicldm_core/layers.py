"""The few building blocks the UNet, the VAE and CLAP share.

Names follow diffusers where they are readable (`to_q`, `conv_shortcut`, `time_emb_proj`); where
the published name is a placeholder (`to_out.0`, `downsamplers.0`) ours drops it, and
names/diffusers.py maps one onto the other.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation (the tanh approximation, written out as there)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# transformers' ACT2FN names used by CLAP configs -> the same functions
ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu, "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
}


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) float32, as diffusers' `Timesteps`.

    frequencies_i = exp(-ln(10000) * i / (dim/2 - freq_shift)), i = 0 .. dim/2 - 1.
    """
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention.

    x: (B, N, dim) queries; context: (B, M, kv_dim) keys/values, or None for self-attention.
    """

    def __init__(self, dim: int, heads: int, kv_dim: Optional[int] = None, qkv_bias: bool = False):
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, C = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (y.view(B, -1, self.heads, C // self.heads).transpose(1, 2) for y in (q, k, v))  # (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))


def _one_row_at_a_time(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([type(self).forward(self, row) for row in x.split(1)]) if x.shape[0] > 1 else \
        type(self).forward(self, x)


def rows_apart(model: nn.Module, on: bool = True) -> None:
    """Run every Conv2d and Linear of `model` one batch row at a time (on), or batched again (off).

    oneDNN and BLAS choose their kernels and blocking by the whole problem's size, so the last bits
    of a row's convolution or product change with the batch it is in (measured: 1x1 and 3x3 convs of
    the UNet at batch 4 against 16, at 1 and 2 threads). One row at a time, every row is the same
    computation alone as in any batch: pipeline.enable_batch_invariance. The rest of the UNet
    (GroupNorm, attention's per-(row, head) products, elementwise ops) is already row by row.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if on:
                module.forward = _one_row_at_a_time.__get__(module)
            else:
                module.__dict__.pop("forward", None)


class MLP(nn.Module):
    """Linear(cin -> dim), activation, Linear(dim -> dim): the UNet's timestep embedding (SiLU) and
    CLAP's projections into the joint space (ReLU as published)."""

    def __init__(self, cin: int, dim: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(cin, dim)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-Conv twice, with an optional time-embedding term and a 1x1 shortcut.

    x: (B, C_in, H, W); temb: (B, temb_dim), already passed through SiLU by the caller (the
    reference applies SiLU inside every block; doing it once per step is the same arithmetic).
    The embedding is added after conv1 ("default"), or with scale_shift=True projected to a
    (scale, shift) pair applied after norm2: h = norm2(h) * (1 + scale) + shift. The output is
    (x + h) / output_scale.
    """

    def __init__(self, cin: int, cout: int, temb_dim: Optional[int], groups: int, eps: float,
                 scale_shift: bool = False, output_scale: float = 1.0):
        super().__init__()
        self.scale_shift = scale_shift
        self.output_scale = output_scale
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout * (2 if scale_shift else 1)) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb_act: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif self.scale_shift:
            scale, shift = self.time_emb_proj(temb_act)[:, :, None, None].chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.time_emb_proj(temb_act)[:, :, None, None])
        h = self.conv2(F.silu(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale == 1.0 else out / self.output_scale


class Downsample2D(nn.Module):
    """Strided 3x3 conv. padding=0 is the VAE's form: pad right/bottom by one, then convolve."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to `size`, to meet an odd-sized skip connection), then 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling lacks bf16 kernels on some backends
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(
            x, size=tuple(size), mode="nearest")
        return self.conv(x.to(dtype))
