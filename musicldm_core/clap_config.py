"""CLAP's configs (transformers ClapModel, ClapFeatureExtractor), read by the rules of config.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from .config import Config, Pair, one_of
from .errors import CheckpointError

# the names of transformers' ACT2FN that CLAP configs use (layers.ACTIVATIONS computes each; a test checks)
ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh")

# Keys every transformers PretrainedConfig carries; these few change what a text encoder computes.
_PRETRAINED_FIXED = {"is_decoder": (False,), "add_cross_attention": (False,), "pruned_heads": ({},)}


@dataclass(frozen=True)
class ClapTextConfig(Config):
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
    # set from the top-level ClapConfig, which overrides the tower's own values (as transformers does)
    projection_dim: int = 512
    projection_hidden_act: str = "relu"

    FIXED = {"position_embedding_type": ("absolute",), **_PRETRAINED_FIXED}
    INERT = {
        "hidden_dropout_prob": "dropout is off at inference",
        "attention_probs_dropout_prob": "dropout is off at inference",
        "initializer_factor": "weight initialisation only",
        "bos_token_id": "the tokenizer adds <s>; the model does not read it",
        "eos_token_id": "the tokenizer adds </s>; the model does not read it",
        "use_cache": "no decoding: there is nothing to cache",
    }

    def _check(self, source: str) -> None:
        one_of(source, "hidden_act", self.hidden_act, ACTIVATIONS)
        one_of(source, "projection_hidden_act", self.projection_hidden_act, ACTIVATIONS)
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(f"{source}: hidden_size={self.hidden_size} is not divisible by "
                                  f"num_attention_heads={self.num_attention_heads}")


@dataclass(frozen=True)
class ClapAudioConfig(Config):
    window_size: int = 8
    num_mel_bins: int = 64
    spec_size: int = 256
    hidden_act: str = "gelu"
    patch_size: Pair = (4, 4)
    patch_stride: Pair = (4, 4)
    hidden_size: int = 768
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: Tuple[int, ...] = (4, 8, 16, 32)
    patch_embed_input_channels: int = 1
    patch_embeds_hidden_size: int = 96
    enable_patch_layer_norm: bool = True
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512  # from the top-level ClapConfig, as text_config's
    projection_hidden_act: str = "relu"

    # enable_fusion: the reference pipeline itself cannot rank with it (it passes no `is_longer`).
    FIXED = {"enable_fusion": (False,), "flatten_patch_embeds": (True,), **_PRETRAINED_FIXED}
    INERT = {
        "hidden_dropout_prob": "dropout is off at inference",
        "attention_probs_dropout_prob": "dropout is off at inference",
        "drop_path_rate": "stochastic depth is off at inference",
        "initializer_factor": "weight initialisation only",
        "num_classes": "no classification head in ClapModel",
        "num_hidden_layers": "the tower's depth comes from `depths`",
        "fusion_type": "used only with enable_fusion, which is refused",
        "aff_block_r": "used only with enable_fusion, which is refused",
    }

    def _check(self, source: str) -> None:
        one_of(source, "hidden_act", self.hidden_act, ACTIVATIONS)
        if len(self.depths) != len(self.num_attention_heads):
            raise CheckpointError(f"{source}: depths and num_attention_heads differ in length")
        width = self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)
        if width != self.hidden_size:
            raise CheckpointError(
                f"{source}: hidden_size={self.hidden_size} must equal patch_embeds_hidden_size "
                f"* 2**(len(depths)-1) = {width} (transformers fails at the projection otherwise)")
        if self.spec_size < self.num_mel_bins:
            raise CheckpointError(f"{source}: spec_size={self.spec_size} is smaller than "
                                  f"num_mel_bins={self.num_mel_bins}")
        rows, cols = self.grid
        for i in range(len(self.depths)):
            if min(rows // 2**i, cols // 2**i) < self.window_size:
                # transformers shrinks the window there but keeps the bias table's size: it fails.
                raise CheckpointError(
                    f"{source}: stage {i} has a {rows // 2**i}x{cols // 2**i} patch grid, smaller "
                    f"than window_size={self.window_size} (spec_size / patch_stride / 2**stage)")

    @property
    def grid(self) -> Tuple[int, int]:
        """Patch grid (rows, columns) of the spec_size x spec_size image."""
        return self.spec_size // self.patch_stride[0], self.spec_size // self.patch_stride[1]


@dataclass(frozen=True)
class ClapConfig(Config):
    text_config: ClapTextConfig = dataclasses.field(default_factory=ClapTextConfig)
    audio_config: ClapAudioConfig = dataclasses.field(default_factory=ClapAudioConfig)
    projection_dim: int = 512

    INERT = {
        "logit_scale_init_value": "initialisation only: the scales are weights",
        "initializer_factor": "weight initialisation only",
        "projection_hidden_act": "copied into text_config and audio_config",
        "hidden_size": "derived from text_config by transformers",
    }

    @classmethod
    def from_hf(cls, data: Mapping[str, Any], source: str = "<config>") -> "ClapConfig":
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(data).__name__}")
        # transformers' ClapConfig overwrites both towers' projection settings with its own.
        top = {k: data[k] for k in ("projection_dim", "projection_hidden_act") if k in data}
        towers = {}
        for tower, config_cls in (("text_config", ClapTextConfig), ("audio_config", ClapAudioConfig)):
            sub = data.get(tower) or {}
            if not isinstance(sub, Mapping):
                raise CheckpointError(f"{source}: {tower} must be a JSON object")
            towers[tower] = config_cls.from_hf({**sub, **top}, f"{source}: {tower}")
        return cls(**towers, projection_dim=towers["text_config"].projection_dim)


# --------------------------------------------------------------------------------------------
# Audio front end of CLAP (transformers ClapFeatureExtractor)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureExtractorConfig(Config):
    feature_size: int = 64
    sampling_rate: int = 48000
    hop_length: int = 480
    max_length_s: int = 10
    fft_window_size: int = 1024
    frequency_min: float = 0.0
    frequency_max: float = 14000.0
    truncation: str = "fusion"
    padding: str = "repeatpad"

    INERT = {
        "padding_value": "ClapFeatureExtractor pads with zeros whatever this says",
        "top_db": "stored but never applied by ClapFeatureExtractor",
        "return_attention_mask": "no attention mask is used for audio",
    }

    def _check(self, source: str) -> None:
        one_of(source, "truncation", self.truncation, ("rand_trunc", "fusion"))
        one_of(source, "padding", self.padding, ("repeatpad", "repeat", "pad"))
        for key in ("sampling_rate", "hop_length", "max_length_s", "fft_window_size", "feature_size"):
            if getattr(self, key) < 1:
                raise CheckpointError(f"{source}: {key}={getattr(self, key)} must be positive")

    @property
    def nb_max_samples(self) -> int:
        return self.max_length_s * self.sampling_rate
