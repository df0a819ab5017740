"""CLAP's audio tower: HTSAT (Chen et al. 2022, hierarchical token-semantic audio transformer).

A Swin transformer over the (B, C, frames, mel bins) log-mel image of audio_frontend.py, as
transformers' `ClapAudioEncoder` (without or with fusion) implements it, plus the projection into
the joint text-audio space. Names are ours; names/clap.py maps the published ones onto them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .clap_config import ClapAudioConfig
from .layers import ACTIVATIONS, MLP

def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C) non-overlapping windows."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def _unwindows(x: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """Inverse of _windows: (B * H/w * W/w, w*w, C) -> (B, H, W, C)."""
    C = x.shape[-1]
    x = x.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 relative-position bias table (Swin's layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]


def _shift_mask(H: int, W: int, w: int, shift: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(nW, w*w, w*w): -100 between tokens that the cyclic shift brought from different regions."""
    img = torch.zeros(1, H, W, 1, dtype=dtype, device=device)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for n, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        img[:, hs, ws, :] = n
    ids = _windows(img, w)[..., 0]  # (nW, w*w)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.out = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))

    def forward(self, x: torch.Tensor, w: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B*nW, w*w, C); mask (nW, w*w, w*w) or None."""
        Bn, N, C = x.shape
        q, k, v = (p(x).view(Bn, N, self.heads, C // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        index = _relative_position_index(w).to(x.device).view(-1)
        bias = self.relative_position_bias_table[index].view(N, N, -1).permute(2, 0, 1)[None]  # (1, h, N, N)
        if mask is not None:  # windows are batch-major: (B, nW) -> add the per-window shift mask
            nW = mask.shape[0]
            bias = (bias[:, None] + mask[None, :, None]).expand(Bn // nW, nW, self.heads, N, N).reshape(Bn, -1, N, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(Bn, N, C))


class SwinBlock(nn.Module):
    def __init__(self, cfg: ClapAudioConfig, dim: int, heads: int, shift: bool):
        super().__init__()
        self.shift = shift
        self.window = cfg.window_size
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = WindowAttention(dim, heads, cfg.window_size, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(dim, int(cfg.mlp_ratio * dim))
        self.fc2 = nn.Linear(int(cfg.mlp_ratio * dim), dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        w = min(self.window, H, W)
        shift = self.window // 2 if self.shift and min(H, W) > self.window else 0
        h = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (w - H % w) % w, (w - W % w) % w
        h = F.pad(h, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if shift:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
        mask = _shift_mask(Hp, Wp, w, shift, h.dtype, h.device) if shift else None
        h = _unwindows(self.attn(_windows(h, w), w, mask), w, Hp, Wp)
        if shift:
            h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
        x = x + h[:, :H, :W, :].reshape(B, H * W, C)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), normalised, projected to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class Stage(nn.Module):
    def __init__(self, cfg: ClapAudioConfig, i: int):
        super().__init__()
        dim = cfg.patch_embeds_hidden_size * 2**i
        self.blocks = nn.ModuleList(
            [SwinBlock(cfg, dim, cfg.num_attention_heads[i], shift=j % 2 == 1) for j in range(cfg.depths[i])])
        self.downsample = PatchMerging(dim) if i < len(cfg.depths) - 1 else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, H, W)
        return self.downsample(x, H, W) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ClapAudioConfig):
        super().__init__()
        pad = ((cfg.patch_size[0] - cfg.patch_stride[0]) // 2, (cfg.patch_size[1] - cfg.patch_stride[1]) // 2)
        self.proj = nn.Conv2d(cfg.patch_embed_input_channels, cfg.patch_embeds_hidden_size, cfg.patch_size,
                              stride=cfg.patch_stride, padding=pad)
        self.norm = nn.LayerNorm(cfg.patch_embeds_hidden_size) if cfg.enable_patch_layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, H*W, C)


class MelNorm(nn.Module):
    """Inference-only BatchNorm over the mel bins: (x - running_mean) / sqrt(running_var + eps) * w + b."""

    def __init__(self, bins: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(bins))
        self.bias = nn.Parameter(torch.zeros(bins))
        self.register_buffer("running_mean", torch.zeros(bins))
        self.register_buffer("running_var", torch.ones(bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, bins, ...)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class HTSAT(nn.Module):
    """(B, C, frames, mel bins) log-mel -> unnormalised joint-space embedding (B, projection_dim)."""

    def __init__(self, cfg: ClapAudioConfig):
        super().__init__()
        self.config = cfg
        self.mel_norm = MelNorm(cfg.num_mel_bins)
        self.patch_embed = PatchEmbed(cfg)
        self.stages = nn.ModuleList([Stage(cfg, i) for i in range(len(cfg.depths))])
        self.norm = nn.LayerNorm(cfg.patch_embeds_hidden_size * 2 ** (len(cfg.depths) - 1))
        self.projection = MLP(self.norm.normalized_shape[0], cfg.projection_dim, cfg.projection_hidden_act)

    def mel_to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, C, T, F) -> (B, C, S, S): stretch time to S*r (bicubic), fold r time chunks into frequency."""
        S, r = self.config.spec_size, self.config.spec_size // self.config.num_mel_bins  # r: freq_ratio
        B, C, T, Fr = mel.shape
        if T > S * r or Fr > S // r:
            raise ValueError(f"input_features: {T} frames x {Fr} bins exceed the tower's {S * r} x {S // r}")
        if T < S * r:
            mel = F.interpolate(mel, (S * r, Fr), mode="bicubic", align_corners=True)
        if Fr < S // r:  # back to the original T, as the reference (only consistent when T == S * r)
            mel = F.interpolate(mel, (T, S // r), mode="bicubic", align_corners=True)
        B, C, T, Fr = mel.shape
        mel = mel.reshape(B, C * r, T // r, Fr).permute(0, 1, 3, 2).contiguous()
        return mel.reshape(B, C, Fr * r, T // r)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, C, frames, mel bins) log-mel, C = patch_embed_input_channels -> (B, projection_dim)."""
        x = self.mel_norm(mel.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bins
        x = self.patch_embed(self.mel_to_image(x))
        rows, cols = self.config.grid
        for i, stage in enumerate(self.stages):
            x = stage(x, rows // 2**i, cols // 2**i)  # the reference's per-stage resolutions
        pooled = self.norm(x).mean(dim=1)  # average over all time-frequency tokens
        return self.projection(pooled)
