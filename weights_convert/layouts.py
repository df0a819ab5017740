"""The authors' key layouts: their names -> the published (diffusers / transformers) names, and each
component's config read from its tensors' shapes. Each convert_* returns a Component."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .reader import ConversionError, Tensors

HEAD_CHANNELS = 32  # the authors' num_head_channels (interface/musicldm.yaml)
LATENT_FRAMES = 256  # latent_t_size: 10.24 s at 16 kHz, hop 160, VAE factor 4
VAE_SAMPLE_SIZE = 1024  # the mel frames of one trained window (diffusers' vae sample_size)
VOCODER = dict(upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4], sampling_rate=16000)
ROBERTA_HEAD_WIDTH = 64
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195)  # linear_start/end, timesteps

class Component(NamedTuple):
    """One converted component: its weights under the published names, its config, the keys it does not
    use (the authors' names), and the prefix table that renamed them (read backwards in messages)."""

    weights: Tensors
    config: dict
    unused: List[str]
    prefixes: list


RESNET_UNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
               ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
RESNET_VAE = [("nin_shortcut.", "conv_shortcut.")]
ATTN_VAE = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
CLAP_BLOCK = [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."),
              ("mlp.fc2.", "output.dense."), ("attn.proj.", "attention.output.dense."),
              ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table")]


def _rename(rest: str, table) -> Optional[str]:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


class UNetLayout:
    """Block indices of openaimodel.UNetModel, read from its keys: levels, res blocks, attention levels."""

    def __init__(self, sd: Tensors):
        inputs = {int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")}
        downs = sorted(i for i in inputs if f"input_blocks.{i}.0.op.weight" in sd)
        self.per_level = downs[0] if downs else len(inputs)  # res blocks + 1 (the downsample's slot)
        self.res = self.per_level - 1
        self.levels = len(inputs) // self.per_level if downs else 1
        first = [1 + level * self.per_level for level in range(self.levels)]
        self.widths = [sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in first]
        self.attention = [f"input_blocks.{i}.1.proj_in.weight" in sd for i in first]

    def prefixes(self) -> List[Tuple[str, str, Optional[list]]]:
        """(authors' prefix, published prefix, sub-table or None for the same names)."""
        p = [("time_embed.0.", "time_embedding.linear_1.", None), ("time_embed.2.", "time_embedding.linear_2.", None),
             ("film_emb.", "class_embedding.", None), ("input_blocks.0.0.", "conv_in.", None),
             ("out.0.", "conv_norm_out.", None), ("out.2.", "conv_out.", None),
             ("middle_block.0.", "mid_block.resnets.0.", RESNET_UNET),
             ("middle_block.1.", "mid_block.attentions.0.", None),
             ("middle_block.2.", "mid_block.resnets.1.", RESNET_UNET)]
        n = self.levels
        for level in range(n):
            for j in range(self.res):
                i = 1 + level * self.per_level + j
                p.append((f"input_blocks.{i}.0.", f"down_blocks.{level}.resnets.{j}.", RESNET_UNET))
                p.append((f"input_blocks.{i}.1.", f"down_blocks.{level}.attentions.{j}.", None))
            if level < n - 1:
                p.append((f"input_blocks.{(level + 1) * self.per_level}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.",
                          None))
        for up in range(n):
            level = n - 1 - up
            for j in range(self.per_level):
                i = up * self.per_level + j
                p.append((f"output_blocks.{i}.0.", f"up_blocks.{up}.resnets.{j}.", RESNET_UNET))
                if self.attention[level]:
                    p.append((f"output_blocks.{i}.1.", f"up_blocks.{up}.attentions.{j}.", None))
            if up < n - 1:
                slot = 2 if self.attention[level] else 1
                p.append((f"output_blocks.{up * self.per_level + self.res}.{slot}.conv.",
                          f"up_blocks.{up}.upsamplers.0.conv.", None))
        return p


def _key_map(keys, prefixes) -> Dict[str, str]:
    """{authors' key: published key} for the keys a prefix claims; the others are not the model's."""
    out = {}
    for key in keys:
        for old, new, table in prefixes:
            if key.startswith(old):
                rest = key[len(old):]
                renamed = _rename(rest, table) if table else None
                out[key] = new + (renamed if renamed is not None else rest)
                break
    return out


def _by_prefix(sd: Tensors, prefixes) -> Tuple[Tensors, List[str]]:
    names = _key_map(sd, prefixes)
    return {names[k]: v for k, v in sd.items() if k in names}, [k for k in sd if k not in names]


def unet_key_map(sd: Tensors) -> Dict[str, str]:
    """{authors' UNet key (without `model.diffusion_model.`): diffusers' key}, from the keys' own layout."""
    return _key_map(sd, UNetLayout(sd).prefixes())


def convert_unet(sd: Tensors, path: Path, head_channels: int) -> Component:
    layout = UNetLayout(sd)
    prefixes = layout.prefixes()
    weights, unused = _by_prefix(sd, prefixes)
    for key in ("film_emb.weight", "time_embed.0.weight", "out.2.weight", "input_blocks.0.0.weight"):
        if key not in sd:
            raise ConversionError(f"{path}: missing key 'model.diffusion_model.{key}'"
                                  + (" (MusicLDM's film conditioning)" if key.startswith("film") else ""))
    bad = [(i, c) for i, c in enumerate(layout.widths) if c % head_channels]
    if bad:
        raise ConversionError(f"{path}: UNet width {bad[0][1]} (level {bad[0][0]}) is not a multiple of "
                              f"--head-channels {head_channels}")
    time_dim = sd["time_embed.0.weight"].shape[0]
    concat = sd["input_blocks.1.0.emb_layers.1.weight"].shape[1] == 2 * time_dim
    kinds = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention]
    config = {
        "_class_name": "UNet2DConditionModel", "sample_size": LATENT_FRAMES,
        "in_channels": sd["input_blocks.0.0.weight"].shape[1], "out_channels": sd["out.2.weight"].shape[0],
        "down_block_types": kinds,
        "up_block_types": [k.replace("Down", "Up") for k in reversed(kinds)],
        "block_out_channels": layout.widths, "layers_per_block": layout.res,
        "cross_attention_dim": layout.widths,  # attn2 attends to the latent itself: its keys are width-wide
        "attention_head_dim": [c // head_channels for c in layout.widths],  # diffusers' name for the head COUNT
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": sd["film_emb.weight"].shape[1],
        "class_embeddings_concat": concat,
    }
    return Component(weights, config, unused, prefixes)


def convert_vae(sd: Tensors, path: Path, scale_factor: float) -> Component:
    levels = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")), default=-1)
    res = 1 + max((int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block.")), default=-1)
    if levels == 0 or res == 0:
        raise ConversionError(f"{path}: no VAE encoder blocks (first_stage_model.encoder.down.*)")
    p = [(f"{side}.{old}", f"{side}.{new}", None) for side in ("encoder", "decoder")
         for old, new in [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out.")]]
    p += [("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None)]
    for side in ("encoder", "decoder"):
        p += [(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", RESNET_VAE),
              (f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", ATTN_VAE),
              (f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", RESNET_VAE)]
    for level in range(levels):
        up = levels - 1 - level  # the decoder's `up` list runs from the deepest level
        p += [(f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", RESNET_VAE)
              for j in range(res)]
        p += [(f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", RESNET_VAE)
              for j in range(res + 1)]
        p += [(f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv.", None),
              (f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv.", None)]
    weights, unused = _by_prefix(sd, p)
    for key, value in weights.items():  # 1x1 convolutions of the attention -> linear layers
        if ".mid_block.attentions." in key and key.endswith("weight") and value.dim() == 4:
            weights[key] = value[:, :, 0, 0]
    z = sd["post_quant_conv.weight"]
    if z.shape[0] != z.shape[1]:
        raise ConversionError(f"{path}: embed_dim {z.shape[1]} differs from z_channels {z.shape[0]} "
                              "(post_quant_conv.weight); diffusers' AutoencoderKL needs them equal")
    widths = [sd[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in range(levels)]
    config = {
        "_class_name": "AutoencoderKL", "sample_size": VAE_SAMPLE_SIZE,
        "in_channels": sd["encoder.conv_in.weight"].shape[1], "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths, "latent_channels": z.shape[0], "layers_per_block": res,
        "scaling_factor": scale_factor,
    }
    return Component(weights, config, unused, p)


def fuse_weight_norm(sd: Tensors) -> Tensors:
    """w = g * v / ||v||, the norm over every dimension but the first (torch's weight_norm, dim=0)."""
    out = {k: v for k, v in sd.items() if not k.endswith(("weight_g", "weight_v"))}
    for key in [k for k in sd if k.endswith("weight_g")]:
        stem = key[: -len("_g")]
        g, v = sd[key], sd[stem + "_v"]
        norm = v.double().flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[stem] = (g.double() * v.double() / norm).to(v.dtype)
    return out


VOCODER_PREFIXES = [("ups.", "upsampler.", None), ("conv_pre.", "conv_pre.", None), ("conv_post.", "conv_post.", None),
                    ("resblocks.", "resblocks.", None)]


def convert_vocoder(sd: Tensors, path: Path) -> Component:
    sd = fuse_weight_norm(sd)
    pre = sd["conv_pre.weight"]
    weights, unused = _by_prefix(sd, VOCODER_PREFIXES)
    kernels = [sd[f"ups.{i}.weight"].shape[-1] for i in range(len([k for k in sd if re.fullmatch(r"ups\.\d+\.weight", k)]))]
    if kernels != VOCODER["upsample_kernel_sizes"]:
        raise ConversionError(f"{path}: HiFi-GAN upsample kernels {kernels} are not MusicLDM's "
                              f"{VOCODER['upsample_kernel_sizes']} (its rates are not in the weights)")
    n_res = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("resblocks."))
    per = n_res // len(kernels)
    resblock_kernels = [sd[f"resblocks.{i}.convs1.0.weight"].shape[-1] for i in range(per)]
    dilations = [[1, 3, 5]] * per  # HiFi-GAN ResBlock1's dilations (not in the weights)
    weights["mean"] = torch.zeros(pre.shape[1])  # unused: normalize_before is false, as in the authors' model
    weights["scale"] = torch.ones(pre.shape[1])
    config = {"model_in_dim": pre.shape[1], "sampling_rate": VOCODER["sampling_rate"],
              "upsample_initial_channel": pre.shape[0], "upsample_rates": VOCODER["upsample_rates"],
              "upsample_kernel_sizes": kernels, "resblock_kernel_sizes": resblock_kernels,
              "resblock_dilation_sizes": dilations, "normalize_before": False}
    return Component(weights, config, unused, VOCODER_PREFIXES)


def convert_clap(sd: Tensors, path: Path) -> Component:
    """LAION CLAP -> transformers' ClapModel names (its config from the shapes: clap_config)."""
    weights, unused = clap_weights(sd)
    return Component(weights, clap_config(sd), unused, [])


def clap_weights(sd: Tensors) -> Tuple[Tensors, List[str]]:
    """(the weights under transformers' names, the keys the model does not use); the HTSAT's fused qkv
    split in three."""
    weights, unused = {}, []
    A, T = "audio_model.audio_encoder.", "text_model."
    for key, value in sd.items():
        m = re.match(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if key.startswith("text_branch.") and "position_ids" not in key:
            weights[T + key[len("text_branch."):]] = value
        elif re.match(r"(text|audio)_projection\.[02]\.", key):
            side, index, rest = key.split(".", 2)
            weights[f"{side}.linear{1 if index == '0' else 2}.{rest}"] = value
        elif m and m.group(3).startswith("attn.qkv."):
            q, k, v = value.chunk(3, dim=0)
            stem = f"{A}layers.{m.group(1)}.blocks.{m.group(2)}.attention.self."
            for name, part in (("query", q), ("key", k), ("value", v)):
                weights[stem + name + m.group(3)[len("attn.qkv"):]] = part
        elif m and _rename(m.group(3), CLAP_BLOCK) is not None:
            weights[f"{A}layers.{m.group(1)}.blocks.{m.group(2)}.{_rename(m.group(3), CLAP_BLOCK)}"] = value
        elif re.match(r"audio_branch\.(patch_embed\.|norm\.|layers\.\d+\.downsample\.)", key):
            weights[A + key[len("audio_branch."):]] = value
        elif key.startswith("audio_branch.bn0.") and not key.endswith("num_batches_tracked"):
            weights[A + "batch_norm." + key[len("audio_branch.bn0."):]] = value
        elif key in ("logit_scale_a", "logit_scale_t"):
            weights[key] = value
        else:  # the transforms of training, the STFT and mel buffers, HTSAT's classifier head and masks
            unused.append(key)
    return weights, unused


def clap_config(sd: Tensors) -> dict:
    """transformers' ClapConfig of a LAION CLAP state dict: widths, depths and heads read from its tensors."""
    word = sd["text_branch.embeddings.word_embeddings.weight"]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_branch.encoder.layer."))
    hidden = word.shape[1]
    depths, heads = [], []
    stage = 0
    while f"audio_branch.layers.{stage}.blocks.0.attn.qkv.weight" in sd:
        depths.append(len({k.split(".")[4] for k in sd if k.startswith(f"audio_branch.layers.{stage}.blocks.")}))
        table = sd[f"audio_branch.layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        heads.append(table.shape[1])
        window = (math.isqrt(table.shape[0]) + 1) // 2
        stage += 1
    patch = sd["audio_branch.patch_embed.proj.weight"]
    projection = sd["text_projection.0.weight"].shape[0]
    config = {
        "architectures": ["ClapModel"], "model_type": "clap", "projection_dim": projection,
        "projection_hidden_act": "relu", "logit_scale_init_value": 14.285714285714285, "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clap_text_model", "vocab_size": word.shape[0], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": hidden // ROBERTA_HEAD_WIDTH,
            "intermediate_size": sd["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
            "max_position_embeddings": sd["text_branch.embeddings.position_embeddings.weight"].shape[0],
            "type_vocab_size": sd["text_branch.embeddings.token_type_embeddings.weight"].shape[0],
            "layer_norm_eps": 1e-5,  # RoBERTa's, as the authors' tower runs (ClapConfig's default is 1e-12)
            "hidden_act": "gelu", "position_embedding_type": "absolute", "projection_dim": projection,
            "projection_hidden_act": "relu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        },
        "audio_config": {
            "model_type": "clap_audio_model", "depths": depths, "num_attention_heads": heads,
            "num_hidden_layers": len(depths), "patch_embeds_hidden_size": patch.shape[0],
            "hidden_size": sd["audio_branch.norm.weight"].shape[0], "window_size": window, "spec_size": 256,
            "patch_size": patch.shape[-1], "patch_stride": [patch.shape[-1]] * 2,
            "num_mel_bins": sd["audio_branch.bn0.weight"].shape[0], "patch_embed_input_channels": patch.shape[1],
            "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
            "enable_fusion": False, "fusion_type": None, "enable_patch_layer_norm": True,
            "flatten_patch_embeds": True, "projection_dim": projection, "projection_hidden_act": "relu",
            "num_classes": sd["audio_branch.head.weight"].shape[0] if "audio_branch.head.weight" in sd else 527,
        },
    }
    return config


def scheduler_config(state: Tensors, path: Path) -> dict:
    """DDIM as the authors sample: their `betas` buffer, checked to be scaled-linear (sqrt-linear)."""
    config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "steps_offset": 1,
              "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon", **SCHEDULE}
    betas = state.get("betas")
    if betas is not None:
        betas = betas.double()
        n, start, end = len(betas), float(betas[0]), float(betas[-1])
        expected = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
        if not torch.allclose(betas, expected, rtol=1e-6, atol=0):
            raise ConversionError(f"{path}: the 'betas' buffer is not a scaled-linear schedule; only MusicLDM's "
                                  "schedule (linear_start..linear_end, sqrt-linear) is converted")
        # stored as float32: the ends to float32's 7 significant digits give back the YAML's values exactly
        config.update(num_train_timesteps=n, beta_start=float(f"{start:.7g}"), beta_end=float(f"{end:.7g}"))
    return config
