"""Component configs: how the published JSON files are read, and the UNet, VAE and vocoder configs.

CLAP's configs are in clap_config.py, the schedulers' in samplers/config.py; all follow the rules below.

Each dataclass holds only the values our modules read, with the reference class's defaults
(diffusers' UNet2DConditionModel / AutoencoderKL / schedulers, transformers' ClapModel /
SpeechT5HifiGan / ClapFeatureExtractor): a key missing from the file means what it means there.
Every other key the reference reads is listed once, per component, in one of two tables:

* FIXED: key -> the values we support (the first is the reference default). Any other value is
  refused at load with file, key, value and what is supported, never computed wrong.
* INERT: keys that cannot change inference (dropout rates, weight-init scales, options used
  only by a code path that FIXED already refuses); each with the reason.

tests/test_config.py checks that the fields, FIXED and INERT together cover every constructor
argument of the reference class, so a key can be neither forgotten nor silently ignored. Keys
the reference does not read either (`_class_name`, `_diffusers_version`, ...) are ignored.

Values are converted from the annotations once: JSON lists become tuples, `Pair` fields an int or a
pair, per-block fields an int or one value per block; wrong types are refused by key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Tuple, Type, TypeVar

from .errors import CheckpointError

C = TypeVar("C", bound="Config")
Pair = Tuple[int, int]  # an int n or a pair [a, b] in the JSON; n means (n, n)


def read_json(path: Path) -> dict:
    """Read a JSON object from `path`, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`value` as the annotation `tp` says, or a CheckpointError naming `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _convert(inner[0], value, where)
    if origin is tuple:
        if tp == Pair and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise CheckpointError(f"{where}={value!r} must have {len(args)} entries")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]
        raise CheckpointError(f"{where}={value!r} must be {kind}")
    return float(value) if tp is float else value


@dataclass(frozen=True)
class Config:
    FIXED: ClassVar[Mapping[str, tuple]] = {}
    INERT: ClassVar[Mapping[str, str]] = {}
    PER_BLOCK: ClassVar[Mapping[str, Any]] = {}  # key -> default scalar, spread over the blocks

    @classmethod
    def from_hf(cls: Type[C], data: Mapping[str, Any], source: str = "<config>") -> C:
        """Build from a published config dict; `source` names the file in error messages."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(data).__name__}")
        check_fixed(cls.FIXED, data, source)
        hints = typing.get_type_hints(cls)
        blocks = cls._blocks(data, source) if cls.PER_BLOCK else 0
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in cls.PER_BLOCK:
                raw = data.get(f.name, cls.PER_BLOCK[f.name])
                if not isinstance(raw, (list, tuple)):
                    raw = [raw] * blocks
                elif len(raw) != blocks:
                    raise CheckpointError(f"{source}: {f.name} has {len(raw)} entries, expected {blocks} "
                                          "(one per block)")
                values[f.name] = _convert(hints[f.name], raw, f"{source}: {f.name}")
            elif f.name in data:
                values[f.name] = _convert(hints[f.name], data[f.name], f"{source}: {f.name}")
        cfg = cls(**values)
        cfg._check(source)
        return cfg

    @classmethod
    def from_json(cls: Type[C], path: Path) -> C:
        return cls.from_hf(read_json(path), str(path))

    @classmethod
    def _blocks(cls, data: dict, source: str) -> int:
        return 0

    def _check(self, source: str) -> None:
        """Hook: constraints between values."""


def _allowed(value: Any, allowed: tuple) -> bool:
    """`value` equals one of `allowed` as JSON means it: true is not 1, 1 is 1.0."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return any(value == a and (type(value) is type(a) or (number(value) and number(a))) for a in allowed)


# Why some FIXED values are refused, where the reason is not just "not implemented".
WHY = {
    "enable_fusion": "the fused CLAP audio tower needs per-take `is_longer` flags, which diffusers' MusicLDMPipeline "
                     "never passes (it crashes when ranking with such a checkpoint); use an unfused CLAP",
    "num_attention_heads": "diffusers refuses it for UNet2DConditionModel too; use attention_head_dim",
}


def check_fixed(table: Mapping[str, tuple], data: Mapping[str, Any], source: str, what: str = "") -> None:
    """Refuse, by file and key, a value outside what we support (a missing key is the default)."""
    for key, allowed in table.items():
        value = data.get(key, allowed[0])
        if not _allowed(value, allowed):
            why = f": {WHY[key]}" if key in WHY else ""
            raise CheckpointError(f"{source}: {key}={value!r} is not supported{what} "
                                  f"(musicldm_core supports {' or '.join(map(repr, allowed))}){why}")


def one_of(source: str, key: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise CheckpointError(f"{source}: {key}={value!r} is not supported "
                              f"(musicldm_core supports {' or '.join(map(repr, allowed))})")


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
        n = len(_convert(Tuple[str, ...], data.get("down_block_types", cls.down_block_types),
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


@dataclass(frozen=True)
class VAEConfig(Config):
    """diffusers' AutoencoderKL: the KL-VAE (vae.py)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: Tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: Tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    FIXED = {"act_fn": ("silu",)}
    INERT = {
        "sample_size": "used only by diffusers' tiled decoding, which the pipeline does not enable",
        "shift_factor": "not read by MusicLDMPipeline (nor by AutoencoderKL itself)",
        "latents_mean": "not read by MusicLDMPipeline",
        "latents_std": "not read by MusicLDMPipeline",
        "force_upcast": "not read by MusicLDMPipeline",
    }

    def _check(self, source: str) -> None:
        n = len(self.block_out_channels)
        for key in ("down_block_types", "up_block_types"):
            types = getattr(self, key)
            if len(types) != n:
                raise CheckpointError(f"{source}: {key} has {len(types)} entries, block_out_channels {n}")
        for t in self.down_block_types:
            one_of(source, "down_block_types[]", t, ("DownEncoderBlock2D",))
        for t in self.up_block_types:
            one_of(source, "up_block_types[]", t, ("UpDecoderBlock2D",))
        if self.scaling_factor == 0:
            raise CheckpointError(f"{source}: scaling_factor=0 (latents are divided by it)")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise CheckpointError(f"{source}: block_out_channels[{i}]={c} is not divisible by "
                                      f"norm_num_groups={self.norm_num_groups}")

    @property
    def scale_factor(self) -> int:
        """Downsampling factor between mel frames/bins and latent rows/columns (2 ** (blocks - 1))."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class VocoderConfig(Config):
    """transformers' SpeechT5HifiGan: the HiFi-GAN vocoder (vocoder.py)."""

    model_in_dim: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: Tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: Tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: Tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: Tuple[Tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True

    INERT = {"initializer_range": "weight initialisation only"}

    def _check(self, source: str) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise CheckpointError(f"{source}: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise CheckpointError(f"{source}: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.sampling_rate < 1:
            raise CheckpointError(f"{source}: sampling_rate={self.sampling_rate} must be positive")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (160 for the published vocoder)."""
        return math.prod(self.upsample_rates)
