"""Component configs: how the published JSON files are read, and the VAE and vocoder configs.

The UNet's config is in unet_config.py, CLAP's in clap_config.py, the schedulers' in samplers/config.py;
all follow the rules below.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Tuple, Type, TypeVar

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


def convert_value(tp: Any, value: Any, where: str) -> Any:
    """`value` as the annotation `tp` says, or a CheckpointError naming `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return None if value is None else convert_value(inner[0], value, where)
    if origin is tuple:
        if tp == Pair and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise CheckpointError(f"{where}={value!r} must have {len(args)} entries")
        return tuple(convert_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
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
                values[f.name] = convert_value(hints[f.name], raw, f"{source}: {f.name}")
            elif f.name in data:
                values[f.name] = convert_value(hints[f.name], data[f.name], f"{source}: {f.name}")
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
