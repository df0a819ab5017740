"""The KL-regularised autoencoder between mel spectrograms and latents.

A mel spectrogram (B, 1, T, 64) is encoded to a diagonal Gaussian over (B, 8, T/4, 16) latents
and decoded back; MusicLDM samples in that latent space. Reference: diffusers 0.36.0
`AutoencoderKL` (Encoder, Decoder, DiagonalGaussianDistribution). Parameter names are the
published ones (encoder.down_blocks.0.resnets.0.conv1.weight, ...) less their placeholders
(names/diffusers.py).

Memory: `decode(..., slice_batch=True)` decodes one sample at a time; long audio is encoded and
decoded in overlapping windows along time by longform.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .layers import Attention, Downsample2D, ResnetBlock2D, Upsample2D

from .weights import load_component

EPS = 1e-6  # GroupNorm eps of every VAE norm


class SpatialSelfAttention(Attention):
    """Single-head self-attention over the H*W positions, GroupNorm in front, plus a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, qkv_bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        return super().forward(h).transpose(1, 2).reshape(B, C, H, W) + x


class MidBlock(nn.Module):
    """ResNet, self-attention (unless the config's mid_block_add_attention is false), ResNet."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)])
        self.attention = SpatialSelfAttention(channels, groups) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, EPS) for j in range(layers)])
        self.downsample = Downsample2D(cout, padding=0) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, EPS) for j in range(layers)])
        self.upsample = Upsample2D(cout) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsample(x) if self.upsample is not None else x


class Encoder(nn.Module):
    """(B, 1, T, F) mel -> (B, 2 * latent_channels, T/4, F/4) moments (before quant_conv)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < n - 1) for i in range(n)])
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """(B, latent_channels, T/4, F/4) -> (B, 1, T, F) mel (after post_quant_conv)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, n = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [DecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < n - 1) for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element; logvar clamped to [-30, 20] as the reference."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        from .noise import randn  # the reference's draw rules (CPU generator, lists of generators)

        return self.mean + self.std * randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # 1x1 convolutions around the latent; configs may leave either out
        c = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if cfg.use_quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.use_post_quant_conv else nn.Identity()

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32) -> "AutoencoderKL":
        """Load `vae/` of a diffusers checkpoint folder (config.json + safetensors)."""
        return load_component(cls, VAEConfig, folder, "diffusion_pytorch_model", device=device, dtype=dtype)

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        """(B, 1, T, F) mel -> posterior over (B, latent_channels, T/4, F/4) latents (unscaled)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(mel)))

    def decode(self, z: torch.Tensor, *, slice_batch: bool = False) -> torch.Tensor:
        """(B, latent_channels, T', F') unscaled latents -> (B, 1, 4T', 4F') mel.

        slice_batch: one sample at a time (bounds activation memory by the batch size). Long
        latents are decoded in overlapping windows by longform.py.
        """
        if slice_batch and z.shape[0] > 1:
            return torch.cat([self.decode(z[i:i + 1]) for i in range(z.shape[0])])
        return self.decoder(self.post_quant_conv(z))

