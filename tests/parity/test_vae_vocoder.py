"""KL-VAE parity with diffusers' AutoencoderKL and HiFi-GAN parity with transformers' SpeechT5HifiGan."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL as RefVAE
from transformers import SpeechT5HifiGan

from helpers import assert_close, assert_detects, errors
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


def test_tiled_decoding_is_seamless(tiny_ckpt):
    """Tiles of 256 latent frames (10.24 s) overlapping by 64, cross-faded, against one untiled decode.

    Not exact: GroupNorm statistics and the mid-block self-attention are global over time, so each
    tile sees less context. Measured on random weights (where attention is most diffuse), 24 s of
    audio: rms 3.8%, max 3.7% of the peak. The seams themselves show no step: the largest jump
    between neighbouring frames is no larger than in the untiled decode.
    """
    vae = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")
    z = _latents(600, seed=0)
    with torch.no_grad():
        whole = vae.decode(z)
        tiled = vae.decode(z, tile_frames=256, tile_overlap=64)
    _, max_rel, _ = errors(tiled, whole)
    rms_rel = float((tiled - whole).pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())
    print(f"[seam] tiled vs whole decode: max rel {max_rel:.3e}, rms rel {rms_rel:.3e}")
    assert tiled.shape == whole.shape
    assert max_rel < 0.05 and rms_rel < 0.05
    jump_tiled = (tiled[:, :, 1:] - tiled[:, :, :-1]).abs().max()
    jump_whole = (whole[:, :, 1:] - whole[:, :, :-1]).abs().max()
    assert jump_tiled <= 1.05 * jump_whole


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


def test_float16_pipeline_keeps_the_vocoder_in_float32(tiny_ckpt):
    """The precision policy (placement.py): under float16 the vocoder alone stays float32."""
    from musicldm_core import MusicLDMPipeline

    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt, dtype=torch.float16)
    assert pipe.vocoder.conv_pre.weight.dtype == torch.float32 and pipe.unet.conv_in.weight.dtype == torch.float16
    pipe.to(dtype=torch.bfloat16)
    assert pipe.vocoder.conv_pre.weight.dtype == torch.bfloat16  # float32's range: no exception needed
    pipe.to(dtype="float16")
    assert pipe.vocoder.conv_pre.weight.dtype == torch.float32 and pipe.vae.decoder.conv_in.weight.dtype == torch.float16
    out = pipe.vocoder(_mel(20)[:, 0].half() * 50)  # loud input: fp16 would overflow in the residual sums
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and out.abs().max() > 0


def test_tiled_cross_fade_is_symmetric(tiny_ckpt):
    """With a stand-in decoder that paints each tile one constant (its mean), the overlap is a pure
    cross-fade between two constants: a symmetric linear ramp puts out[k] + out[ramp-1-k] = m1 + m2."""
    vae = AutoencoderKL.from_pretrained(tiny_ckpt / "vae")

    class TileMean(torch.nn.Module):
        def forward(self, z):
            B, _, T, F = z.shape
            return z.mean(dim=(1, 2, 3), keepdim=True).expand(B, 1, T * 4, F * 4)

    vae.decoder, vae.post_quant_conv = TileMean(), torch.nn.Identity()
    z = _latents(40, seed=5)
    tile, overlap = 16, 6
    with torch.no_grad():
        out = vae.decode(z, tile_frames=tile, tile_overlap=overlap)[0, 0, :, 0].double()
    stride, ramp = tile - overlap, overlap * 4
    m1, m2 = z[:, :, :tile].mean().double(), z[:, :, stride:stride + tile].mean().double()
    seam = out[stride * 4:stride * 4 + ramp]
    assert torch.allclose(seam + seam.flip(0), (m1 + m2).expand(ramp), rtol=0, atol=1e-6)
    assert torch.allclose(out[:stride * 4], m1.expand(stride * 4), atol=1e-6)  # before the seam: tile 1 only
