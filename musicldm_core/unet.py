"""MusicLDM's denoiser: the parts of diffusers' UNet2DConditionModel its config uses.

Chen et al. 2023 (arXiv 2308.01546) reuse AudioLDM's latent-diffusion UNet: it predicts the
noise in a (B, 8, T/4, 16) mel-spectrogram latent. Two oddities, both from the published
config and the reference pipeline:

* Conditioning is not cross-attention. The 512-d CLAP text vector is projected
  (`class_embedding`, class_embed_type="simple_projection") and *concatenated* to the timestep
  embedding (class_embeddings_concat), so every ResNet sees a (B, 2 * 4 * C0) embedding.
* The transformer blocks still have a second attention (`attn2`), but the pipeline passes no
  encoder hidden states, so `attn2` is a second self-attention over the latent.

Parameter names are the published ones (down_blocks.1.attentions.0.transformer_blocks.0...) less
their placeholders (musicldm_core/names/diffusers.py).
Reference: diffusers 0.36.0 `UNet2DConditionModel` with CrossAttnDownBlock2D / DownBlock2D /
UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D / UpBlock2D / Transformer2DModel.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .unet_config import UNetConfig
from .layers import MLP, Attention, Downsample2D, ResnetBlock2D, Upsample2D, timestep_embedding

from .presets import AUTHORS_HEAD_CHANNELS
from .weights import load_module, weight_files


class FeedForward(nn.Module):
    """GEGLU: Linear(d -> 2*4d), x * gelu(gate), Linear(4d -> d)."""

    def __init__(self, dim: int):
        super().__init__()
        inner = dim * 4
        self.proj_in = nn.Linear(dim, inner * 2)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, a second self-attention (attn2), GEGLU feed-forward.

    attn2 is diffusers' cross-attention, but MusicLDM passes no text sequence, so it attends to
    the latent itself (config.py refuses a cross_attention_dim other than the block width).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, HW, C)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, projection in, transformer blocks over the H*W tokens, projection out, residual.

    The projections are 1x1 convolutions on the (B, C, H, W) map, or with use_linear_projection
    Linear layers on the (B, HW, C) tokens: the same map, with differently shaped weights.
    """

    def __init__(self, channels: int, heads: int, layers: int, groups: int, linear: bool):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads) for _ in range(layers)])
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return (h if self.linear else self.proj_out(h)) + x


def _resnet(cfg: UNetConfig, cin: int, cout: int, output_scale: float = 1.0) -> ResnetBlock2D:
    return ResnetBlock2D(cin, cout, cfg.resnet_temb_dim, cfg.norm_num_groups, cfg.norm_eps,
                         cfg.resnet_time_scale_shift == "scale_shift", output_scale)


def _transformer(cfg: UNetConfig, i: int) -> Transformer2D:
    """The Transformer2D of down-side block i (up blocks read the same lists reversed)."""
    return Transformer2D(cfg.block_out_channels[i], cfg.attention_head_dim[i], cfg.transformer_layers_per_block[i],
                         cfg.norm_num_groups, cfg.use_linear_projection)


class DownBlock(nn.Module):
    """ResNets (each followed by a Transformer2D when `attention`), then a strided conv."""

    def __init__(self, cfg: UNetConfig, i: int, cin: int, attention: bool, downsample: bool):
        super().__init__()
        cout = cfg.block_out_channels[i]
        n = cfg.layers_per_block[i]
        self.resnets = nn.ModuleList([_resnet(cfg, cin if j == 0 else cout, cout) for j in range(n)])
        self.attentions = nn.ModuleList([_transformer(cfg, i) for _ in range(n)]) if attention else None
        self.downsample = Downsample2D(cout, cfg.downsample_padding) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResNet, Transformer2D, ResNet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        c = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList([_resnet(cfg, c, c, cfg.mid_block_scale_factor) for _ in range(2)])
        self.attention = _transformer(cfg, -1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attention(x), temb)


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
        self.resnets = nn.ModuleList([
            _resnet(cfg, (prev if j == 0 else cout) + (skip_in if j == n - 1 else cout), cout) for j in range(n)])
        self.attentions = nn.ModuleList([_transformer(cfg, rev) for _ in range(n)]) if attention else None
        self.upsample = Upsample2D(cout) if upsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, skips: List[torch.Tensor],
                size: Optional[torch.Size]) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x)
        if self.upsample is not None:
            x = self.upsample(x, size)
        return x


class UNet(nn.Module):
    """eps_theta(z_t, t, c): (B, 8, H, W) latent, (B,) or scalar timestep, (B, 512) CLAP vector."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        c0 = cfg.block_out_channels[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, cfg.conv_in_kernel, padding=cfg.conv_in_kernel // 2)
        self.time_embedding = MLP(c0, cfg.time_embed_dim, "silu")  # on the sinusoidal embedding
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
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, cfg.conv_out_kernel, padding=cfg.conv_out_kernel // 2)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32,
                        attention_heads: str = "checkpoint") -> "UNet":
        """Load `unet/` of a diffusers checkpoint folder (config.json + safetensors).

        attention_heads: "checkpoint" (the config's heads, exact to diffusers) or "authors" (32 channels a
        head everywhere, as MusicLDM was trained; see UNetConfig.with_head_channels)."""
        folder = Path(folder)
        cfg = UNetConfig.from_json(folder / "config.json")
        if attention_heads == "authors":
            authors = cfg.with_head_channels(AUTHORS_HEAD_CHANNELS, str(folder / "config.json"))
            if authors == cfg:
                warnings.warn(f"{folder / 'config.json'} already has the authors' attention heads "
                              f"({AUTHORS_HEAD_CHANNELS} channels a head: {list(cfg.attention_head_dim)}); "
                              "attention_heads='authors' changes nothing")
            cfg = authors
        return load_module(lambda: cls(cfg), weight_files(folder, "diffusion_pytorch_model"), device=device,
                           dtype=dtype, what=str(folder))

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
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb)
            skips.extend(s)
        x = self.mid_block(x, temb)
        for block in self.up_blocks:
            n = len(block.resnets)
            size = skips[-n - 1].shape[2:] if block.upsample is not None else None  # next block's skip size
            x = block(x, temb, skips, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
