"""MusicLDM's denoiser: the parts of diffusers' UNet2DConditionModel its config uses.

Chen et al. 2023 (arXiv 2308.01546) reuse AudioLDM's latent-diffusion UNet: it predicts the
noise in a (B, 8, T/4, 16) mel-spectrogram latent. Two oddities, both from the published
config and the reference pipeline:

* Conditioning is not cross-attention. The 512-d CLAP text vector is projected
  (`class_embedding`, class_embed_type="simple_projection") and *concatenated* to the timestep
  embedding (class_embeddings_concat), so every ResNet sees a (B, 2 * 4 * C0) embedding.
* The transformer blocks still have a second attention (`attn2`), but the pipeline passes no
  encoder hidden states, so `attn2` is a second self-attention over the latent.

Parameter names equal the published ones (down_blocks.1.attentions.0.transformer_blocks.0...).
Reference: diffusers 0.36.0 `UNet2DConditionModel` with CrossAttnDownBlock2D / DownBlock2D /
UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D / UpBlock2D / Transformer2DModel.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .layers import Attention, Downsample2D, ResnetBlock2D, Upsample2D, timestep_embedding
from .weights import load_component


class FeedForward(nn.Module):
    """GEGLU: Linear(d -> 2*4d), x * gelu(gate), Linear(4d -> d). Names: net.0.proj, net.2."""

    def __init__(self, dim: int):
        super().__init__()
        inner = dim * 4
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(inner, dim)])
        self.net[0].proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, a second self-attention (attn2), GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int):
        super().__init__()
        if cross_attention_dim != dim:
            # attn2 runs on the latent itself (no text sequence), so its key width must be `dim`.
            raise ValueError(f"cross_attention_dim={cross_attention_dim} must equal the block width {dim} "
                             "because MusicLDM passes no encoder hidden states")
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, kv_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, HW, C)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, 1x1 conv in, transformer blocks over the H*W tokens, 1x1 conv out, residual."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, layers: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, cross_attention_dim) for _ in range(layers)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C)
        for block in self.transformer_blocks:
            h = block(h)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x


class DownBlock(nn.Module):
    """ResNets (each followed by a Transformer2D when `attention`), then a strided conv."""

    def __init__(self, cfg: UNetConfig, i: int, cin: int, attention: bool, downsample: bool):
        super().__init__()
        cout, groups, eps, temb = cfg.block_out_channels[i], cfg.norm_num_groups, cfg.norm_eps, cfg.resnet_temb_dim
        n = cfg.layers_per_block[i]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if j == 0 else cout, cout, temb, groups, eps) for j in range(n)])
        self.attentions = nn.ModuleList([
            Transformer2D(cout, cfg.heads[i], cfg.cross_attention_dim[i], cfg.transformer_layers_per_block[i], groups)
            for _ in range(n)]) if attention else None
        self.downsamplers = nn.ModuleList([Downsample2D(cout, cfg.downsample_padding)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResNet, Transformer2D, ResNet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        c, groups = cfg.block_out_channels[-1], cfg.norm_num_groups
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c, c, cfg.resnet_temb_dim, groups, cfg.norm_eps) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Transformer2D(c, cfg.heads[-1], cfg.cross_attention_dim[-1], cfg.transformer_layers_per_block[-1],
                           groups)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x), temb)


class UpBlock(nn.Module):
    """ResNets over [x; skip] concatenations (one more than the down side), then upsampling.

    `i` counts up blocks from the bottom; block parameters are read from the reversed lists.
    """

    def __init__(self, cfg: UNetConfig, i: int, attention: bool, upsample: bool):
        super().__init__()
        rev = len(cfg.block_out_channels) - 1 - i  # index into the down-side lists
        chans = cfg.block_out_channels
        cout = chans[rev]
        prev = chans[min(rev + 1, len(chans) - 1)]  # width coming up from below
        skip_in = chans[max(rev - 1, 0)]  # width of the last skip this block consumes
        n = cfg.layers_per_block[rev] + 1
        groups, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.resnet_temb_dim
        self.resnets = nn.ModuleList([
            ResnetBlock2D((prev if j == 0 else cout) + (skip_in if j == n - 1 else cout), cout, temb, groups, eps)
            for j in range(n)])
        self.attentions = nn.ModuleList([
            Transformer2D(cout, cfg.heads[rev], cfg.cross_attention_dim[rev],
                          cfg.transformer_layers_per_block[rev], groups)
            for _ in range(n)]) if attention else None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, skips: List[torch.Tensor],
                size: Optional[torch.Size]) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class TimestepEmbedding(nn.Module):
    """Linear-SiLU-Linear on the sinusoidal embedding. Names: linear_1, linear_2."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet(nn.Module):
    """eps_theta(z_t, t, c): (B, 8, H, W) latent, (B,) or scalar timestep, (B, 512) CLAP vector."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        c0 = cfg.block_out_channels[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, cfg.time_embed_dim)
        self.class_embedding = (nn.Linear(cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim)
                                if cfg.class_embed_type == "simple_projection" else None)
        n = len(cfg.block_out_channels)
        self.down_blocks = nn.ModuleList()
        cin = c0
        for i, kind in enumerate(cfg.down_block_types):
            self.down_blocks.append(DownBlock(cfg, i, cin, kind == "CrossAttnDownBlock2D", i < n - 1))
            cin = cfg.block_out_channels[i]
        self.mid_block = MidBlock(cfg)
        self.up_blocks = nn.ModuleList(
            [UpBlock(cfg, i, kind == "CrossAttnUpBlock2D", i < n - 1) for i, kind in enumerate(cfg.up_block_types)])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32) -> "UNet":
        """Load `unet/` of a diffusers checkpoint folder (config.json + safetensors)."""
        return load_component(cls, UNetConfig, folder, "diffusion_pytorch_model", device=device, dtype=dtype)

    def embed(self, timestep: torch.Tensor, class_labels: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """The embedding every ResNet sees, after the SiLU each of them applies: (B, temb_dim)."""
        cfg = self.config
        dtype = self.conv_in.weight.dtype
        t = timestep.reshape(-1).to(self.conv_in.weight.device).expand(batch)
        emb = self.time_embedding(
            timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift).to(dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels (the CLAP embedding) must be given: this UNet is class-conditioned")
            class_emb = self.class_embedding(class_labels.to(dtype))
            emb = torch.cat([emb, class_emb], dim=-1) if cfg.class_embeddings_concat else emb + class_emb
        return F.silu(emb)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sample (B, in_channels, H, W), any H, W >= 1 -> noise prediction of the same shape."""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32 if isinstance(timestep, float) else torch.int64)
        temb = self.embed(timestep, class_labels, sample.shape[0])
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb)
            skips.extend(s)
        x = self.mid_block(x, temb)
        for block in self.up_blocks:
            n = len(block.resnets)
            size = skips[-n - 1].shape[2:] if block.upsamplers is not None else None  # next block's skip size
            x = block(x, temb, skips, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
