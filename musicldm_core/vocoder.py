"""HiFi-GAN vocoder: log-mel spectrogram (B, T, 64) -> 16 kHz waveform (B, T * 160).

Kong et al. 2020's generator as transformers' `SpeechT5HifiGan` implements it: conv_pre, then per
stage a leaky ReLU, a transposed-conv upsampler and the mean of several multi-receptive-field
residual blocks; a final leaky ReLU (slope 0.01, torch's default, as the reference), conv_post
and tanh. Parameter names equal the published ones (upsampler.0, resblocks.3.convs1.2, ...).

It computes in its weights' dtype and returns the input's: the pipeline holds it in float32 when
the rest runs in float16 (fp16 overflows in the residual sums; see placement.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import VocoderConfig
from .weights import load_component


class ResidualBlock(nn.Module):
    """Pairs of (leaky ReLU, dilated conv, leaky ReLU, conv) with a residual around each pair."""

    def __init__(self, channels: int, kernel: int, dilations: tuple, slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations])
        self.convs2 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, self.slope)), self.slope))
        return x


class HifiGan(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.config = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, ch, 7, padding=3)
        self.upsampler = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            cin, cout = ch // 2**i, ch // 2 ** (i + 1)
            self.upsampler.append(nn.ConvTranspose1d(cin, cout, kernel, stride=rate, padding=(kernel - rate) // 2))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResidualBlock(cout, k, d, cfg.leaky_relu_slope))
        self.conv_post = nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)
        self.register_buffer("mean", torch.zeros(cfg.model_in_dim))  # used only with normalize_before
        self.register_buffer("scale", torch.ones(cfg.model_in_dim))

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32) -> "HifiGan":
        """Load `vocoder/` of the checkpoint."""
        return load_component(cls, VocoderConfig, folder, "model", device=device, dtype=dtype)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, T, model_in_dim) or (T, model_in_dim) -> waveform (B, T * hop) or (T * hop,)."""
        in_dtype = mel.dtype
        x = mel.to(self.conv_pre.weight.dtype)
        if self.config.normalize_before:
            x = (x - self.mean) / self.scale
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(0)
        x = self.conv_pre(x.transpose(2, 1))  # (B, C, T)
        k = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.upsampler):
            x = up(F.leaky_relu(x, self.config.leaky_relu_slope))
            res = self.resblocks[i * k](x)
            for j in range(1, k):
                res += self.resblocks[i * k + j](x)  # in place: these are the largest activations
            x = res / k
        wave = torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # (B, T * hop)
        wave = wave.to(in_dtype) if in_dtype.is_floating_point else wave
        return wave if batched else wave.squeeze(0)
