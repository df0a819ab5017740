"""Every component in float64 against the reference in float64: a bound far below any real bug.

In float32 a 1e-5 bound sits within 2x of some real bugs' errors (a GroupNorm eps of 1e-5 instead
of 1e-6 gave 1.6e-5). In float64 the same computations agree to ~1e-15, so a bound of 1e-12 leaves
a margin of six orders of magnitude: an eps, a missing upcast or a wrong constant cannot hide.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL as RefVAE, UNet2DConditionModel
from transformers import ClapFeatureExtractor, ClapModel, SpeechT5HifiGan

from helpers import assert_close, assert_detects
from musicldm_core.clap import Clap
from musicldm_core.tokenizer import ClapTokenizer
from musicldm_core.unet import UNet
from musicldm_core.vae import AutoencoderKL
from musicldm_core.vocoder import HifiGan

RTOL = 1e-12
# transformers' eager text attention takes its softmax in float32 whatever the dtype: 1.6e-8 measured (features),
# 5.3e-9 (logits). The bound is 3x that, so that LayerNorm's eps at 1e-5 for the config's 1e-12 (4.6e-7) shows 9x
# over, not 4.6x.
TEXT_RTOL = 5e-8
F64 = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_unet(tiny_ckpt):
    ref = UNet2DConditionModel.from_pretrained(tiny_ckpt / "unet").eval().double()
    ours = UNet.from_pretrained(tiny_ckpt / "unet", dtype=F64)
    x, c = _randn(2, 8, 7, 16), _randn(2, 32, seed=1)
    with torch.no_grad():
        a = ref(x, torch.tensor(433), encoder_hidden_states=None, class_labels=c).sample
        assert_close(ours(x, torch.tensor(433), c), a, RTOL, "unet float64")
        ours.down_blocks[1].attentions[0].norm.eps = 1e-5  # the reference's Transformer2D GroupNorm eps is 1e-6
        assert_detects(ours(x, torch.tensor(433), c), a, RTOL, "unet float64, Transformer2D eps 1e-5")


def test_vae(tiny_ckpt):
    ref = RefVAE.from_pretrained(tiny_ckpt / "vae").eval().double()
    ours = AutoencoderKL.from_pretrained(tiny_ckpt / "vae", dtype=F64)
    z, mel = _randn(2, 8, 6, 16), _randn(1, 1, 24, 64, seed=2)
    with torch.no_grad():
        assert_close(ours.decode(z), ref.decode(z).sample, RTOL, "vae decode float64")
        assert_close(ours.encode(mel).mean, ref.encode(mel).latent_dist.mean, RTOL, "vae encode float64")


def test_vocoder(tiny_ckpt):
    ref = SpeechT5HifiGan.from_pretrained(tiny_ckpt / "vocoder").eval().double()
    ours = HifiGan.from_pretrained(tiny_ckpt / "vocoder", dtype=F64)
    mel = _randn(2, 20, 64, seed=3)
    with torch.no_grad():
        assert_close(ours(mel), ref(mel), RTOL, "vocoder float64")


def test_clap(tiny_ckpt):
    ref = ClapModel.from_pretrained(tiny_ckpt / "text_encoder").eval().double()
    ours = Clap.from_pretrained(tiny_ckpt / "text_encoder", dtype=F64)
    ids, mask = ClapTokenizer.from_pretrained(tiny_ckpt / "tokenizer")(["calm piano", "a much longer prompt here", ""],
                                                                         pad_to_max_length=False)
    rng = np.random.RandomState(0)
    mel = ClapFeatureExtractor.from_pretrained(tiny_ckpt / "feature_extractor")(
        [rng.randn(48000 * 3) * 0.1], return_tensors="pt", sampling_rate=48000).input_features.double()
    with torch.no_grad():
        assert_close(ours.text_features(ids, mask), ref.get_text_features(ids, attention_mask=mask), TEXT_RTOL,
                     "clap text float64")
        assert_close(ours.audio_features(mel), ref.get_audio_features(mel), RTOL, "clap audio float64")
        a = ref(input_ids=ids, attention_mask=mask, input_features=mel).logits_per_text
        assert_close(ours.logits_per_text(ids, mask, mel), a, TEXT_RTOL, "clap logits float64")
        for layer in ours.text.layers:
            layer.attn_norm.eps = 1e-5  # the config's 1e-12, hard-coded to the audio tower's 1e-5
        assert_detects(ours.text_features(ids, mask), ref.get_text_features(ids, attention_mask=mask), TEXT_RTOL,
                       "clap text float64, LayerNorm eps 1e-5")
