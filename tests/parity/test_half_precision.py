"""Half precision without a GPU: fp16 and bf16 on this CPU, ours against diffusers in the same dtype.

Measured on the CPU (2 threads), relative to max |reference|:
  UNet, VAE decode: bit-exact in fp16 and bf16 (tiny and full size).
  vocoder module: bit-exact in fp16 and bf16 (the pipeline itself keeps it in fp32: placement.py).
  CLAP text features: fp16 1.1e-3 / 1.8e-3, bf16 6.3e-3 / 1.6e-2 (half-precision rounding in a
           different op order: SDPA and fused LayerNorm).
  whole pipeline, tiny, 4 steps: fp16 4.5e-3, bf16 3.0e-2 (the reference's own half vs fp32
           distance is 4.1e-3 and 2.9e-2).
The bounds below sit at about twice those figures. The full-size VAE runs in bf16 only: fp16
convolutions on this CPU take two minutes for one small decode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as RefVAE, UNet2DConditionModel
from transformers import ClapModel, SpeechT5HifiGan

from conftest import requires_cuda
from helpers import assert_close, reference_pipeline
from musicldm_core.clap import Clap
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.unet import UNet
from musicldm_core.vae import AutoencoderKL
from musicldm_core.vocoder import HifiGan

HALF = [torch.float16, torch.bfloat16]
EXACT = 1e-6
PIPELINE_RTOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}
VOCODER_RTOL = {torch.float16: EXACT, torch.bfloat16: EXACT}
TEXT_RTOL = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def _healthy(x: torch.Tensor, name: str) -> None:
    x = torch.as_tensor(x).float()
    assert torch.isfinite(x).all(), f"{name}: NaN or inf"
    assert x.std() > 1e-3 * x.abs().max() > 0, f"{name}: silent or constant"


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_pipeline(tiny_ckpt, dtype):
    ref = reference_pipeline(tiny_ckpt, torch_dtype=dtype)
    ours = MusicLDMPipeline.from_pretrained(tiny_ckpt, dtype=dtype)
    kw = dict(prompt="calm piano", negative_prompt="drums", num_inference_steps=4, guidance_scale=2.5,
              audio_length_in_s=0.5)
    a = ref(**kw, generator=torch.Generator().manual_seed(0)).audios
    b = ours(**kw, generator=torch.Generator().manual_seed(0)).audios
    assert b.dtype == np.float32
    _healthy(b, f"pipeline {dtype}")
    assert_close(b, a, PIPELINE_RTOL[dtype], f"pipeline {dtype}, tiny, 4 steps")


def _unet_case(folder, dtype, device="cpu"):
    ref = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).eval().to(device)
    ours = UNet.from_pretrained(folder / "unet", device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 16, generator=g).to(device, dtype)
    c = torch.randn(2, ours.config.projection_class_embeddings_input_dim, generator=g).to(device, dtype)
    with torch.no_grad():
        return ours(x, torch.tensor(500), c), ref(x, torch.tensor(500), encoder_hidden_states=None,
                                                  class_labels=c).sample


def _vae_case(folder, dtype, device="cpu"):
    ref = RefVAE.from_pretrained(folder / "vae", torch_dtype=dtype).eval().to(device)
    ours = AutoencoderKL.from_pretrained(folder / "vae", device=device, dtype=dtype)
    z = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with torch.no_grad():
        return ours.decode(z), ref.decode(z).sample


def _vocoder_case(folder, dtype, device="cpu"):
    ref = SpeechT5HifiGan.from_pretrained(folder / "vocoder", torch_dtype=dtype).eval().to(device)
    ours = HifiGan.from_pretrained(folder / "vocoder", device=device, dtype=dtype)
    # 24 frames reach every layer (fp16 convolutions are slow on a CPU: 64 frames took 40 s at full size)
    mel = torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    with torch.no_grad():
        return ours(mel), ref(mel)


def _text_case(folder, dtype, device="cpu"):
    ref = ClapModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype).eval().to(device)
    ours = Clap.from_pretrained(folder / "text_encoder", device=device, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 900, (3, 12), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    mask[1, 8:], ids[1, 8:] = 0, 1  # one padded row
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        return ours.text_features(ids, mask), ref.get_text_features(ids, attention_mask=mask)


def _audio_case(folder, dtype, device="cpu"):
    ref = ClapModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype).eval().to(device)
    ours = Clap.from_pretrained(folder / "text_encoder", device=device, dtype=dtype)
    mel = torch.randn(2, 1, 1001, 64, generator=torch.Generator().manual_seed(4)).to(device, dtype) * 10 - 40
    with torch.no_grad():
        return ours.audio_features(mel), ref.get_audio_features(mel)


CASES = {"unet": (_unet_case, lambda d: EXACT), "vae": (_vae_case, lambda d: EXACT),
         "vocoder": (_vocoder_case, VOCODER_RTOL.get), "text": (_text_case, TEXT_RTOL.get)}


# every component x dtype x size, but the full-size VAE in fp16 (fp16 convolutions on this CPU take
# minutes for one small decode; the same code runs in bf16 at full size and in fp16 on tiny)
COMPONENT_CASES = [(c, d, v) for c in CASES for d in HALF for v in ("tiny", "full")
                   if not (c == "vae" and d == torch.float16 and v == "full")]


@pytest.mark.parametrize("component, dtype, variant", COMPONENT_CASES, ids=str)
def test_component(component, dtype, variant, request):
    folder = request.getfixturevalue(f"{variant}_ckpt")
    run, rtol = CASES[component]
    b, a = run(folder, dtype)
    assert b.dtype == dtype and a.dtype == dtype
    _healthy(b, f"{component} {dtype}")
    assert_close(b.float(), a.float(), rtol(dtype), f"{component} {dtype} {variant}")


# On a GPU: every component, full size, in the three dtypes, against the reference on the same GPU
CUDA_RTOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@requires_cuda
@pytest.mark.parametrize("dtype", list(CUDA_RTOL), ids=str)
@pytest.mark.parametrize("component", [*CASES, "audio"])
def test_component_cuda(component, dtype, full_ckpt):
    run = _audio_case if component == "audio" else CASES[component][0]
    b, a = run(full_ckpt, dtype, "cuda")
    _healthy(b, f"{component} cuda {dtype}")
    assert_close(b.float(), a.float(), CUDA_RTOL[dtype], f"{component} cuda {dtype}")
