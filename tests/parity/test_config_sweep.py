"""A sweep of configs over every option the reference reads: each exact to the reference or refused.

Each case builds the reference class at a small config, randomises its weights, saves it with
the reference's own save_pretrained and loads ours from that folder; outputs are compared on the
same inputs. The option under test is set to an unusual value so that ignoring it shows.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL as RefVAE, UNet2DConditionModel
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from helpers import assert_close, assert_detects
from reference_checkpoints import randomize_, signal_preserving_init_
from musicldm_core.errors import CheckpointError
from musicldm_core.unet import UNet
from musicldm_core.vae import AutoencoderKL
from musicldm_core.vocoder import HifiGan

RTOL = 1e-5

UNET_BASE = dict(sample_size=8, in_channels=8, out_channels=8, block_out_channels=[16, 32],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, attention_head_dim=2,
                 norm_num_groups=8, cross_attention_dim=[16, 32], class_embed_type="simple_projection",
                 projection_class_embeddings_input_dim=12, class_embeddings_concat=True)

# option -> value that changes the output if ignored
UNET_OPTIONS = {
    "center_input_sample": dict(center_input_sample=True),
    "use_linear_projection": dict(use_linear_projection=True),
    "upcast_attention": dict(upcast_attention=True),
    "resnet_time_scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    "attention_head_dim per block": dict(attention_head_dim=[1, 4]),
    "class embedding added": dict(class_embeddings_concat=False),
    "no class embedding": dict(class_embed_type=None, class_embeddings_concat=False),
    "time_embedding_dim": dict(time_embedding_dim=40),
    "conv kernels": dict(conv_in_kernel=5, conv_out_kernel=1),
    "mid_block_scale_factor": dict(mid_block_scale_factor=1.7),
    "transformer_layers_per_block": dict(transformer_layers_per_block=[1, 2]),
    "flip_sin_to_cos, freq_shift": dict(flip_sin_to_cos=False, freq_shift=3),
    "norm_eps": dict(norm_eps=0.5),
    "downsample_padding 0": dict(downsample_padding=0),
    "resnet_out_scale_factor (not used by these blocks)": dict(resnet_out_scale_factor=2.0),
    "dropout": dict(dropout=0.3),
}


def _unet_pair(cfg: dict, folder, seed: int):
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**cfg).eval()
    randomize_(ref, seed)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, UNet.from_pretrained(folder)


def _unet_outputs(ref, ours, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 6, 8, generator=g)
    c = torch.randn(2, 12, generator=g) if cfg.get("class_embed_type") else None
    with torch.no_grad():
        return ours(x, torch.tensor(321), c), ref(x, torch.tensor(321), encoder_hidden_states=None,
                                                  class_labels=c).sample


@pytest.mark.parametrize("option", list(UNET_OPTIONS))
def test_unet_option(option, tmp_path):
    cfg = {**UNET_BASE, **UNET_OPTIONS[option]}
    ref, ours = _unet_pair(cfg, tmp_path, 7)
    b, a = _unet_outputs(ref, ours, cfg, 7)
    assert_close(b, a, RTOL, f"unet {option}")


@pytest.mark.parametrize("option, back", [
    ("center_input_sample", dict(center_input_sample=False)),
    ("mid_block_scale_factor", dict(mid_block_scale_factor=1.0)),
    ("flip_sin_to_cos, freq_shift", dict(flip_sin_to_cos=True, freq_shift=0)),
    ("norm_eps", dict(norm_eps=1e-5)),
    ("resnet_time_scale_shift", None),
])
def test_unet_option_ignored_would_show(option, back, tmp_path):
    """Our model built with the option reset (as if the key were read and ignored) misses the reference."""
    import json

    cfg = {**UNET_BASE, **UNET_OPTIONS[option]}
    ref, _ = _unet_pair(cfg, tmp_path, 7)
    if back is None:  # scale_shift changes weight shapes: ignoring it could not even load
        data = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**data, "resnet_time_scale_shift": "default"}))
        with pytest.raises(CheckpointError, match="wrong shape for 'down_blocks.0.resnets.0.time_emb_proj.weight'"):
            UNet.from_pretrained(tmp_path)
        return
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, **back}))
    b, a = _unet_outputs(ref, UNet.from_pretrained(tmp_path), cfg, 7)
    assert_detects(b, a, RTOL, f"unet with {option} ignored")


@pytest.mark.parametrize("key, value, message", [
    ("only_cross_attention", True, "only_cross_attention=True is not supported"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type='UNetMidBlock2DSimpleCrossAttn'"),
    ("cross_attention_dim", [16, 40], r"cross_attention_dim\[1\]=40 must equal block_out_channels\[1\]=32"),
    ("num_attention_heads", 2, "num_attention_heads=2 is not supported"),
    ("addition_embed_type", "text", "addition_embed_type='text'"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("resnet_skip_time_act", True, "resnet_skip_time_act=True"),
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("act_fn", "gelu", "act_fn='gelu'"),
    ("norm_eps", "1e-5", "norm_eps='1e-5' must be a finite number"),
    ("layers_per_block", [1, 2, 3], "layers_per_block has 3 entries, expected 2"),
    ("norm_num_groups", None, "norm_num_groups=None must be an integer"),
])
def test_unet_refusals(key, value, message, tmp_path):
    import json

    _unet_pair(UNET_BASE, tmp_path, 1)
    data = json.loads((tmp_path / "config.json").read_text())
    data[key] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: " + message):
        UNet.from_pretrained(tmp_path)


VAE_BASE = dict(in_channels=1, out_channels=1, block_out_channels=[16, 32], latent_channels=4, norm_num_groups=8,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                scaling_factor=0.9)
VAE_OPTIONS = {
    "published-like": {},
    "mid_block_add_attention": dict(mid_block_add_attention=False),
    "no quant convs": dict(use_quant_conv=False, use_post_quant_conv=False),
    "layers_per_block": dict(layers_per_block=2),
    "channels": dict(in_channels=2, out_channels=3),
    "force_upcast, shift_factor (unread)": dict(force_upcast=False, shift_factor=0.3),
}


@pytest.mark.parametrize("option", list(VAE_OPTIONS))
def test_vae_option(option, tmp_path):
    torch.manual_seed(3)
    ref = RefVAE(**{**VAE_BASE, **VAE_OPTIONS[option]}).eval()
    randomize_(ref, 3)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 5, 4, generator=g)
    mel = torch.randn(2, ours.config.in_channels, 12, 8, generator=g)
    with torch.no_grad():
        assert_close(ours.decode(z), ref.decode(z).sample, RTOL, f"vae decode {option}")
        post, ref_post = ours.encode(mel), ref.encode(mel).latent_dist
        assert_close(post.mean, ref_post.mean, RTOL, f"vae encode mean {option}")
        assert_close(post.std, ref_post.std, RTOL, f"vae encode std {option}")


def test_vocoder_unusual_slope_and_sizes(tmp_path):
    cfg = SpeechT5HifiGanConfig(model_in_dim=12, upsample_initial_channel=32, upsample_rates=[3, 2],
                                upsample_kernel_sizes=[6, 4], resblock_kernel_sizes=[3, 5],
                                resblock_dilation_sizes=[[1, 2], [2, 3]], leaky_relu_slope=0.37,
                                normalize_before=True, sampling_rate=8000)
    ref = SpeechT5HifiGan(cfg).eval()
    signal_preserving_init_(ref, 4)
    randomize_(ref, 4)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = HifiGan.from_pretrained(tmp_path)
    assert ours.config.hop_length == 6
    mel = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(mel), ref(mel), RTOL, "vocoder slope 0.37, rates (3, 2)")
