"""KL-VAE parity with diffusers' AutoencoderKL and HiFi-GAN parity with transformers' SpeechT5HifiGan."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL as RefVAE
from transformers import SpeechT5HifiGan

from helpers import assert_close, assert_detects
from musicldm_core.vae import AutoencoderKL
from musicldm_core.vocoder import HifiGan

RTOL = 1e-5


def _latents(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 8, frames, 16, generator=torch.Generator().manual_seed(seed))


def _mel(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, frames, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 5


@pytest.mark.parametrize("frames, batch", [(10, 2), (7, 1), (1, 3)])
def test_decode_tiny(tiny_ckpt, frames, batch):
    ref, ours = RefVAE.from_pretrained(tiny_ckpt / "vae").eval(), AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    z = _latents(frames, batch)
    with torch.no_grad():
        assert_close(ours.decode(z), ref.decode(z).sample, RTOL, f"vae decode tiny {frames}x{batch}")
        assert_close(ours.decode(z, slice_batch=True), ref.decode(z).sample, RTOL, "vae decode tiny, sliced")
        ours.decoder.mid_block.attention.to_q.weight.mul_(1.001)
        assert_detects(ours.decode(z), ref.decode(z).sample, RTOL, "vae mid attention to_q x1.001")


@pytest.mark.parametrize("frames", [40, 12])
def test_encode_tiny(tiny_ckpt, frames):
    ref, ours = RefVAE.from_pretrained(tiny_ckpt / "vae").eval(), AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    mel = _mel(frames, 2)
    with torch.no_grad():
        a, b = ref.encode(mel).latent_dist, ours.encode(mel)
        assert_close(b.mean, a.mean, RTOL, "vae encode mean")
        assert_close(b.logvar, a.logvar, RTOL, "vae encode logvar")
        assert_close(b.sample(torch.Generator().manual_seed(4)), a.sample(torch.Generator().manual_seed(4)), RTOL,
                     "vae posterior sample, same generator")


@pytest.mark.parametrize("seconds", [10.24, 2.5])
def test_full_size(full_ckpt, seconds):
    frames = -(-int(seconds / 0.01) // 4)
    ref, ours = RefVAE.from_pretrained(full_ckpt / "vae").eval(), AutoencoderKL.from_pretrained(full_ckpt / "vae")
    with torch.no_grad():
        z = _latents(frames)
        assert_close(ours.decode(z), ref.decode(z).sample, RTOL, f"vae decode full {seconds} s")
        mel = _mel(frames * 4)
        a, b = ref.encode(mel).latent_dist, ours.encode(mel)
        assert_close(b.mean, a.mean, RTOL, f"vae encode mean full {seconds} s")
        assert_close(b.logvar, a.logvar, RTOL, f"vae encode logvar full {seconds} s")
    ref_voc, voc = SpeechT5HifiGan.from_pretrained(full_ckpt / "vocoder").eval(), HifiGan.from_pretrained(
        full_ckpt / "vocoder")
    with torch.no_grad():
        m = _mel(frames * 4)[:, 0]
        assert_close(voc(m), ref_voc(m), RTOL, f"vocoder full {seconds} s")


@pytest.mark.parametrize("frames, batch", [(50, 2), (9, 1)])
def test_vocoder_tiny(tiny_ckpt, frames, batch):
    ref, ours = SpeechT5HifiGan.from_pretrained(tiny_ckpt / "vocoder").eval(), HifiGan.from_pretrained(
        tiny_ckpt / "vocoder")
    m = _mel(frames, batch)[:, 0]
    with torch.no_grad():
        out = ours(m)
        assert out.shape == (batch, frames * 160 + 32)  # transposed-conv padding adds 32 samples; trimmed later
        assert_close(out, ref(m), RTOL, f"vocoder tiny {frames}x{batch}")
        assert_close(ours(m[0]), ref(m[0]), RTOL, "vocoder tiny, unbatched")
        ours.resblocks[4].convs1[1].weight.mul_(1.001)
        assert_detects(ours(m), ref(m), RTOL, "vocoder resblock conv x1.001")


def test_vocoder_normalize_before(tmp_path):
    from transformers import SpeechT5HifiGanConfig
    from reference_checkpoints import randomize_

    ref = SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=64, upsample_initial_channel=32,
                                                upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
                                                normalize_before=True)).eval()
    randomize_(ref, 9)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = HifiGan.from_pretrained(tmp_path)
    m = _mel(20, 2)[:, 0]
    with torch.no_grad():
        assert_close(ours(m), ref(m), RTOL, "vocoder with normalize_before (mean/scale buffers)")


def test_half_precision_pipeline_keeps_the_vocoder_in_float32(tiny_ckpt):
    """The precision policy (placement.py): in half precision the vocoder alone stays float32."""
    from musicldm_core import MusicLDMPipeline

    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt, dtype=torch.float16)
    assert pipe.vocoder.conv_pre.weight.dtype == torch.float32 and pipe.unet.conv_in.weight.dtype == torch.float16
    pipe.to(dtype=torch.bfloat16)
    assert pipe.vocoder.conv_pre.weight.dtype == torch.float32 and pipe.unet.conv_in.weight.dtype == torch.bfloat16
    pipe.to(dtype="float16")
    assert pipe.vocoder.conv_pre.weight.dtype == torch.float32 and pipe.vae.decoder.conv_in.weight.dtype == torch.float16
    out = pipe.vocoder(_mel(20)[:, 0].half() * 50)  # loud input: fp16 would overflow in the residual sums
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and out.abs().max() > 0
