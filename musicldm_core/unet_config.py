"""diffusers' UNet2DConditionModel config as the UNet (unet.py) reads it: its fields, and the FIXED and INERT
tables of every other key the reference reads (config.py says the rules)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

from .config import Config, convert_value, one_of
from .errors import CheckpointError


@dataclass(frozen=True)
class UNetConfig(Config):
    """diffusers' UNet2DConditionModel: the conditional UNet (unet.py)."""

    sample_size: Optional[int] = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: Tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    up_block_types: Tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: Tuple[int, ...] = ()
    transformer_layers_per_block: Tuple[int, ...] = ()
    # diffusers' legacy naming: for this model family `attention_head_dim` is the NUMBER of heads
    # (see https://github.com/huggingface/diffusers/issues/2011); head width = channels // heads.
    attention_head_dim: Tuple[int, ...] = ()
    cross_attention_dim: Tuple[int, ...] = ()
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_out_scale_factor: float = 1.0
    time_embedding_dim: Optional[int] = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    class_embed_type: Optional[str] = None
    projection_class_embeddings_input_dim: Optional[int] = None
    class_embeddings_concat: bool = False

    PER_BLOCK = {"layers_per_block": 2, "transformer_layers_per_block": 1, "attention_head_dim": 8,
                 "cross_attention_dim": 1280}
    FIXED = {
        "mid_block_type": ("UNetMidBlock2DCrossAttn",),
        "act_fn": ("silu",),
        "time_embedding_type": ("positional",),
        "only_cross_attention": (False,),
        "mid_block_only_cross_attention": (None, False),
        "dual_cross_attention": (False,),
        "attention_type": ("default",),
        "num_attention_heads": (None,),  # diffusers itself refuses it for UNet2DConditionModel
        "reverse_transformer_layers_per_block": (None,),
        "encoder_hid_dim": (None,),
        "encoder_hid_dim_type": (None,),
        "addition_embed_type": (None,),
        "addition_time_embed_dim": (None,),
        "num_class_embeds": (None,),
        "time_cond_proj_dim": (None,),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "resnet_skip_time_act": (False,),
        "cross_attention_norm": (None,),
    }
    INERT = {
        "dropout": "dropout is off at inference",
        "addition_embed_type_num_heads": "used only with addition_embed_type, which is refused",
        # With torch 2 diffusers runs attention through AttnProcessor2_0 (SDPA), which never reads
        # upcast_attention: the reference computes in the model dtype either way, and so do we.
        "upcast_attention": "diffusers' SDPA attention processor does not read it",
    }

    @classmethod
    def _blocks(cls, data: dict, source: str) -> int:
        n = len(convert_value(Tuple[str, ...], data.get("down_block_types", cls.down_block_types),
                         f"{source}: down_block_types"))
        for key in ("up_block_types", "block_out_channels"):
            m = len(data.get(key, getattr(cls, key)) or ())
            if m != n:
                raise CheckpointError(f"{source}: {key} has {m} entries, down_block_types {n}")
        return n

    def _check(self, source: str) -> None:
        for t in self.down_block_types:
            one_of(source, "down_block_types[]", t, ("DownBlock2D", "CrossAttnDownBlock2D"))
        for t in self.up_block_types:
            one_of(source, "up_block_types[]", t, ("UpBlock2D", "CrossAttnUpBlock2D"))
        one_of(source, "class_embed_type", self.class_embed_type, (None, "simple_projection"))
        one_of(source, "resnet_time_scale_shift", self.resnet_time_scale_shift, ("default", "scale_shift"))
        for key in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, key) % 2 == 0 or getattr(self, key) < 1:
                raise CheckpointError(f"{source}: {key}={getattr(self, key)} is not supported (odd sizes only)")
        if self.class_embed_type == "simple_projection" and self.projection_class_embeddings_input_dim is None:
            raise CheckpointError(
                f"{source}: class_embed_type='simple_projection' needs projection_class_embeddings_input_dim")
        if self.class_embeddings_concat and self.class_embed_type is None:
            raise CheckpointError(f"{source}: class_embeddings_concat=true needs a class_embed_type "
                                  "(diffusers would fail at the first forward)")
        for i, (c, h, x) in enumerate(zip(self.block_out_channels, self.attention_head_dim, self.cross_attention_dim)):
            if c % self.norm_num_groups:
                raise CheckpointError(f"{source}: block_out_channels[{i}]={c} is not divisible by "
                                      f"norm_num_groups={self.norm_num_groups}")
            if c % h:
                raise CheckpointError(f"{source}: block_out_channels[{i}]={c} is not divisible by {h} heads "
                                      f"(attention_head_dim[{i}])")
            n = len(self.block_out_channels)
            has_attention = (self.down_block_types[i] == "CrossAttnDownBlock2D" or i == n - 1
                             or self.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D")
            if x != c and has_attention:
                # attn2 runs on the latent itself (the pipeline passes no text sequence), so its keys
                # and values come from a width-c input: diffusers fails at the first forward.
                raise CheckpointError(f"{source}: cross_attention_dim[{i}]={x} must equal block_out_channels[{i}]"
                                      f"={c}: MusicLDM passes no encoder hidden states")
        if self.sample_size is not None and self.sample_size < 1:
            raise CheckpointError(f"{source}: sample_size={self.sample_size} must be positive")

    def with_head_channels(self, channels: int, source: str = "unet/config.json") -> "UNetConfig":
        """The same UNet with `channels` channels in every attention head, the mid block's included.

        The MusicLDM authors' UNet (openaimodel, `num_head_channels: 32`) has 4, 8, 12 and 20 heads at
        widths 128/256/384/640 and 20 in the mid block. diffusers' conversion sets no head count, so a
        converted config runs its default of 8 heads at every width: the same weights, other attention
        at three of the four widths. The weights do not depend on the split into heads.
        """
        bad = [(i, c) for i, c in enumerate(self.block_out_channels) if c % channels]
        if bad:
            raise CheckpointError(f"{source}: block_out_channels[{bad[0][0]}]={bad[0][1]} is not a multiple of "
                                  f"{channels} channels a head")
        return replace(self, attention_head_dim=tuple(c // channels for c in self.block_out_channels))

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @property
    def resnet_temb_dim(self) -> int:
        """Width of the embedding the ResNets see: a concatenated CLAP projection doubles it."""
        return self.time_embed_dim * (2 if self.class_embeddings_concat else 1)
