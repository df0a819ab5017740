"""Component configs: the one place where the published JSON files are read.

Each dataclass mirrors the constructor arguments of the reference class it stands for
(diffusers' UNet2DConditionModel / AutoencoderKL / DDIMScheduler, transformers' ClapModel /
SpeechT5HifiGan / ClapFeatureExtractor). Fields without a default are required: a config file
that lacks one is an error naming the file and the key. Fields with a default take the
reference class's default, which is what the reference does when the key is absent. Keys we do
not know are kept in `extra` and ignored. Options the reference supports but MusicLDM does not
use are rejected by file and key rather than silently computed wrong.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Type, TypeVar

from .errors import CheckpointError

C = TypeVar("C", bound="_Config")


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


@dataclass(frozen=True, kw_only=True)
class _Config:
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_hf(cls: Type[C], data: Mapping[str, Any], source: str = "<config>") -> C:
        """Build from a published config dict; `source` names the file in error messages."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name != "extra"
            and f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise CheckpointError(f"{source}: missing required key(s) {', '.join(map(repr, missing))}")
        # diffusers writes `null` for unset options; a null where we keep a non-None default means "default".
        known = {k: v for k, v in data.items() if k in names and (v is not None or _allows_none(cls, k))}
        extra = {k: v for k, v in data.items() if k not in names}
        cfg = cls(**cls._normalise(dict(known), source), extra=extra)
        cfg._check(source)
        return cfg

    @classmethod
    def from_json(cls: Type[C], path: Path) -> C:
        return cls.from_hf(read_json(path), str(path))

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        return data

    def _check(self, source: str) -> None:
        pass


def _allows_none(cls, name: str) -> bool:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default is None
    return False


def _reject(source: str, key: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise CheckpointError(
            f"{source}: {key}={value!r} is not supported (musicldm_core supports {', '.join(map(repr, allowed))})"
        )


def _per_block(value: Any, n: int, key: str, source: str) -> tuple:
    """Normalise a scalar-or-list option to one value per block, as diffusers does."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise CheckpointError(f"{source}: {key} has {len(value)} entries, expected {n} (one per block)")
        return tuple(value)
    return (value,) * n


# --------------------------------------------------------------------------------------------
# UNet (diffusers UNet2DConditionModel)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UNetConfig(_Config):
    in_channels: int
    out_channels: int
    block_out_channels: Tuple[int, ...]
    down_block_types: Tuple[str, ...]
    up_block_types: Tuple[str, ...]
    sample_size: Optional[int] = None
    layers_per_block: Tuple[int, ...] = (2,)
    transformer_layers_per_block: Tuple[int, ...] = (1,)
    # diffusers' legacy naming: for this model family `attention_head_dim` is the NUMBER of heads
    # (see https://github.com/huggingface/diffusers/issues/2011); head width = channels // heads.
    attention_head_dim: Tuple[int, ...] = (8,)
    num_attention_heads: Optional[Tuple[int, ...]] = None
    cross_attention_dim: Tuple[int, ...] = (1280,)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    class_embed_type: Optional[str] = None
    projection_class_embeddings_input_dim: Optional[int] = None
    class_embeddings_concat: bool = False
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    act_fn: str = "silu"
    time_embedding_type: str = "positional"
    resnet_time_scale_shift: str = "default"
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    dual_cross_attention: bool = False
    center_input_sample: bool = False
    mid_block_scale_factor: float = 1.0
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    addition_embed_type: Optional[str] = None
    encoder_hid_dim: Optional[int] = None
    time_cond_proj_dim: Optional[int] = None
    time_embedding_dim: Optional[int] = None
    time_embedding_act_fn: Optional[str] = None
    timestep_post_act: Optional[str] = None
    num_class_embeds: Optional[int] = None
    attention_type: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    cross_attention_norm: Optional[str] = None
    reverse_transformer_layers_per_block: Optional[Any] = None
    dropout: float = 0.0

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        n = len(data["down_block_types"])
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            data[key] = tuple(data[key])
        if len(data["block_out_channels"]) != n or len(data["up_block_types"]) != n:
            raise CheckpointError(
                f"{source}: block_out_channels, down_block_types and up_block_types must have the same length"
            )
        for key in ("layers_per_block", "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim"):
            if key in data:
                data[key] = _per_block(data[key], n, key, source)
        for key, default in (("layers_per_block", 2), ("transformer_layers_per_block", 1),
                             ("attention_head_dim", 8), ("cross_attention_dim", 1280)):
            data.setdefault(key, (default,) * n)
        if data.get("num_attention_heads") is not None:
            data["num_attention_heads"] = _per_block(data["num_attention_heads"], n, "num_attention_heads", source)
        return data

    def _check(self, source: str) -> None:
        for t in self.down_block_types:
            _reject(source, "down_block_types[]", t, ("DownBlock2D", "CrossAttnDownBlock2D"))
        for t in self.up_block_types:
            _reject(source, "up_block_types[]", t, ("UpBlock2D", "CrossAttnUpBlock2D"))
        _reject(source, "mid_block_type", self.mid_block_type, ("UNetMidBlock2DCrossAttn",))
        _reject(source, "class_embed_type", self.class_embed_type, (None, "simple_projection"))
        if self.class_embed_type == "simple_projection" and self.projection_class_embeddings_input_dim is None:
            raise CheckpointError(
                f"{source}: class_embed_type='simple_projection' needs projection_class_embeddings_input_dim"
            )
        if self.class_embeddings_concat and self.class_embed_type is None:
            raise CheckpointError(f"{source}: class_embeddings_concat=true needs a class_embed_type "
                                  "(diffusers would fail at the first forward)")
        _reject(source, "act_fn", self.act_fn, ("silu",))
        _reject(source, "time_embedding_type", self.time_embedding_type, ("positional",))
        _reject(source, "resnet_time_scale_shift", self.resnet_time_scale_shift, ("default",))
        _reject(source, "use_linear_projection", self.use_linear_projection, (False,))
        _reject(source, "only_cross_attention", self.only_cross_attention, (False,))
        _reject(source, "upcast_attention", self.upcast_attention, (False,))
        _reject(source, "dual_cross_attention", self.dual_cross_attention, (False,))
        _reject(source, "conv_in_kernel", self.conv_in_kernel, (3,))
        _reject(source, "conv_out_kernel", self.conv_out_kernel, (3,))
        _reject(source, "addition_embed_type", self.addition_embed_type, (None,))
        _reject(source, "encoder_hid_dim", self.encoder_hid_dim, (None,))
        _reject(source, "time_cond_proj_dim", self.time_cond_proj_dim, (None,))
        _reject(source, "time_embedding_dim", self.time_embedding_dim, (None,))
        _reject(source, "time_embedding_act_fn", self.time_embedding_act_fn, (None,))
        _reject(source, "timestep_post_act", self.timestep_post_act, (None,))
        _reject(source, "num_class_embeds", self.num_class_embeds, (None,))
        _reject(source, "attention_type", self.attention_type, ("default",))
        _reject(source, "resnet_skip_time_act", self.resnet_skip_time_act, (False,))
        _reject(source, "resnet_out_scale_factor", self.resnet_out_scale_factor, (1.0,))
        _reject(source, "cross_attention_norm", self.cross_attention_norm, (None,))
        _reject(source, "reverse_transformer_layers_per_block", self.reverse_transformer_layers_per_block, (None,))
        _reject(source, "mid_block_scale_factor", self.mid_block_scale_factor, (1.0,))
        if self.num_attention_heads is not None:
            # diffusers itself refuses this for UNet2DConditionModel; so do we.
            raise CheckpointError(f"{source}: num_attention_heads is not supported by UNet2DConditionModel")
        for i, (c, h) in enumerate(zip(self.block_out_channels, self.heads)):
            if c % h:
                raise CheckpointError(f"{source}: block_out_channels[{i}]={c} is not divisible by {h} heads")

    @property
    def heads(self) -> Tuple[int, ...]:
        """Attention heads per block (diffusers: `num_attention_heads or attention_head_dim`)."""
        return self.num_attention_heads or self.attention_head_dim

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @property
    def resnet_temb_dim(self) -> int:
        """Width of the embedding the ResNets see: the CLAP projection is concatenated, doubling it."""
        return self.time_embed_dim * (2 if self.class_embeddings_concat else 1)


# --------------------------------------------------------------------------------------------
# KL-VAE (diffusers AutoencoderKL)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VAEConfig(_Config):
    in_channels: int
    out_channels: int
    block_out_channels: Tuple[int, ...]
    latent_channels: int
    scaling_factor: float
    down_block_types: Tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: Tuple[str, ...] = ("UpDecoderBlock2D",)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    act_fn: str = "silu"
    sample_size: Optional[int] = None
    shift_factor: Optional[float] = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key in data:
                data[key] = tuple(data[key])
        return data

    def _check(self, source: str) -> None:
        n = len(self.block_out_channels)
        for key in ("down_block_types", "up_block_types"):
            types = getattr(self, key)
            if len(types) != n:
                raise CheckpointError(f"{source}: {key} has {len(types)} entries, block_out_channels {n}")
        for t in self.down_block_types:
            _reject(source, "down_block_types[]", t, ("DownEncoderBlock2D",))
        for t in self.up_block_types:
            _reject(source, "up_block_types[]", t, ("UpDecoderBlock2D",))
        _reject(source, "act_fn", self.act_fn, ("silu",))
        _reject(source, "shift_factor", self.shift_factor, (None, 0, 0.0))
        _reject(source, "use_quant_conv", self.use_quant_conv, (True,))
        _reject(source, "use_post_quant_conv", self.use_post_quant_conv, (True,))
        _reject(source, "mid_block_add_attention", self.mid_block_add_attention, (True,))

    @property
    def scale_factor(self) -> int:
        """Downsampling factor between mel frames/bins and latent rows/columns (2 ** (blocks - 1))."""
        return 2 ** (len(self.block_out_channels) - 1)


# --------------------------------------------------------------------------------------------
# HiFi-GAN vocoder (transformers SpeechT5HifiGan)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VocoderConfig(_Config):
    model_in_dim: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: Tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: Tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: Tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: Tuple[Tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            if key in data:
                data[key] = tuple(data[key])
        if "resblock_dilation_sizes" in data:
            data["resblock_dilation_sizes"] = tuple(tuple(d) for d in data["resblock_dilation_sizes"])
        return data

    def _check(self, source: str) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise CheckpointError(f"{source}: upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise CheckpointError(f"{source}: resblock_kernel_sizes and resblock_dilation_sizes differ in length")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (160 for the published vocoder)."""
        n = 1
        for r in self.upsample_rates:
            n *= r
        return n


# --------------------------------------------------------------------------------------------
# CLAP (transformers ClapModel: RoBERTa text tower + HTSAT audio tower)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClapTextConfig(_Config):
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    position_embedding_type: str = "absolute"
    projection_hidden_act: str = "relu"
    projection_dim: int = 512

    def _check(self, source: str) -> None:
        _reject(source, "text_config.hidden_act", self.hidden_act, ("gelu",))
        _reject(source, "text_config.position_embedding_type", self.position_embedding_type, ("absolute",))
        _reject(source, "text_config.projection_hidden_act", self.projection_hidden_act, ("relu",))


@dataclass(frozen=True, kw_only=True)
class ClapAudioConfig(_Config):
    window_size: int = 8
    num_mel_bins: int = 64
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: Tuple[int, int] = (4, 4)
    hidden_size: int = 768
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: Tuple[int, ...] = (4, 8, 16, 32)
    enable_fusion: bool = False
    hidden_act: str = "gelu"
    projection_dim: int = 512
    flatten_patch_embeds: bool = True
    patch_embeds_hidden_size: int = 96
    enable_patch_layer_norm: bool = True
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    patch_embed_input_channels: int = 1
    layer_norm_eps: float = 1e-5
    projection_hidden_act: str = "relu"

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        for key in ("patch_stride", "depths", "num_attention_heads"):
            if key in data:
                data[key] = tuple(data[key])
        return data

    def _check(self, source: str) -> None:
        _reject(source, "audio_config.enable_fusion", self.enable_fusion, (False,))
        _reject(source, "audio_config.hidden_act", self.hidden_act, ("gelu",))
        _reject(source, "audio_config.projection_hidden_act", self.projection_hidden_act, ("relu",))
        _reject(source, "audio_config.flatten_patch_embeds", self.flatten_patch_embeds, (True,))
        if self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1) != self.hidden_size:
            raise CheckpointError(
                f"{source}: audio_config.hidden_size={self.hidden_size} must equal patch_embeds_hidden_size "
                f"* 2**(len(depths)-1) = {self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)}"
            )


@dataclass(frozen=True, kw_only=True)
class ClapConfig(_Config):
    text_config: ClapTextConfig = field(default_factory=ClapTextConfig)
    audio_config: ClapAudioConfig = field(default_factory=ClapAudioConfig)
    projection_dim: int = 512
    hidden_size: int = 768

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        data["text_config"] = ClapTextConfig.from_hf(data.get("text_config") or {}, source)
        data["audio_config"] = ClapAudioConfig.from_hf(data.get("audio_config") or {}, source)
        return data

    def _check(self, source: str) -> None:
        for tower in ("text_config", "audio_config"):
            if getattr(self, tower).projection_dim != self.projection_dim:
                raise CheckpointError(f"{source}: {tower}.projection_dim differs from projection_dim")


# --------------------------------------------------------------------------------------------
# Audio front end of CLAP (transformers ClapFeatureExtractor)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FeatureExtractorConfig(_Config):
    feature_size: int = 64
    sampling_rate: int = 48000
    hop_length: int = 480
    max_length_s: int = 10
    fft_window_size: int = 1024
    padding_value: float = 0.0
    frequency_min: float = 0.0
    frequency_max: float = 14000.0
    top_db: Optional[float] = None
    truncation: str = "fusion"
    padding: str = "repeatpad"

    def _check(self, source: str) -> None:
        _reject(source, "truncation", self.truncation, ("rand_trunc",))
        _reject(source, "padding", self.padding, ("repeatpad", "repeat", "pad"))

    @property
    def nb_max_samples(self) -> int:
        return self.max_length_s * self.sampling_rate


# --------------------------------------------------------------------------------------------
# Noise schedule (diffusers DDIMScheduler and its siblings built from the same config)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig(_Config):
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    prediction_type: str = "epsilon"
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    skip_prk_steps: bool = False
    thresholding: bool = False
    rescale_betas_zero_snr: bool = False

    @classmethod
    def _normalise(cls, data: dict, source: str) -> dict:
        if data.get("trained_betas") is not None:
            data["trained_betas"] = tuple(data["trained_betas"])
        return data

    def _check(self, source: str) -> None:
        _reject(source, "beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2"))
        _reject(source, "prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"))
        _reject(source, "timestep_spacing", self.timestep_spacing, ("leading", "trailing", "linspace"))
        _reject(source, "thresholding", self.thresholding, (False,))
        _reject(source, "rescale_betas_zero_snr", self.rescale_betas_zero_snr, (False,))
