"""CLAP parity with transformers: tokenizer, text tower, feature extractor, audio tower, logits,
and the resampler against librosa."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizer, RobertaTokenizerFast

from helpers import assert_close, assert_detects
from musicldm_core.clap import Clap
from musicldm_core.audio_frontend import LogMel
from musicldm_core.resampler import resample
from musicldm_core.clap_config import FeatureExtractorConfig
from musicldm_core.tokenizer import ClapTokenizer
from text_corpus import prompts

RTOL = 1e-5


@pytest.fixture(scope="module")
def corpus():
    c = prompts()
    assert len(c) >= 300 and "" in c and max(map(len, c)) == 5000
    return c


@pytest.mark.parametrize("with_tokenizer_json", [True, False])
def test_tokenizer(tiny_ckpt, tmp_path, corpus, with_tokenizer_json):
    folder = tiny_ckpt / "tokenizer"
    if not with_tokenizer_json:  # vocab.json + merges.txt only
        folder = tmp_path / "tokenizer"
        shutil.copytree(tiny_ckpt / "tokenizer", folder)
        (folder / "tokenizer.json").unlink()
    ours = ClapTokenizer.from_pretrained(folder)
    assert ours.model_max_length == 512
    for ref in (RobertaTokenizerFast.from_pretrained(tiny_ckpt / "tokenizer"),
                RobertaTokenizer.from_pretrained(tiny_ckpt / "tokenizer")):
        # the pipeline's call: padded to max length, truncated
        r = ref(corpus, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
        ids, mask = ours(corpus)
        assert torch.equal(ids, r.input_ids), type(ref).__name__
        assert torch.equal(mask, r.attention_mask), type(ref).__name__
        # the ranking's call: padded to the longest, not truncated
        short = [c for c in corpus if len(c) < 1000]
        r = ref(short, padding=True, return_tensors="pt")
        ids, mask = ours(short, pad_to_max_length=False, truncate=False)
        assert torch.equal(ids, r.input_ids) and torch.equal(mask, r.attention_mask), type(ref).__name__
    # a truncated prompt keeps its closing </s>
    assert ids.shape[1] < 512 and ours([corpus[-1]])[0][0, -1].item() == 2


def test_tokenizer_detects_a_dropped_token(tiny_ckpt, corpus):
    ids, _ = ClapTokenizer.from_pretrained(tiny_ckpt / "tokenizer")(corpus[60:61])
    ref = RobertaTokenizerFast.from_pretrained(tiny_ckpt / "tokenizer")(
        corpus[60:61], padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
    dropped = torch.cat([ids[:, :1], ids[:, 2:], ids[:, -1:]], dim=1)
    assert not torch.equal(dropped, ref)


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_text_features(variant, request, corpus):
    folder = request.getfixturevalue(f"{variant}_ckpt")
    ref = ClapModel.from_pretrained(folder / "text_encoder").eval()
    ours = Clap.from_pretrained(folder / "text_encoder")
    ids, mask = ClapTokenizer.from_pretrained(folder / "tokenizer")(corpus[::40] + [""])  # padded batch of 9
    with torch.no_grad():
        a = ref.get_text_features(ids, attention_mask=mask)
        b = ours.text_features(ids, mask)
        assert b.shape == (9, ours.config.projection_dim)
        assert_close(b, a, RTOL, f"text features {variant}")
        ours.text.layers[0].attn.v.weight.mul_(1.001)
        assert_detects(ours.text_features(ids, mask), a, RTOL, f"text tower {variant} value weight x1.001")


def _waves(seconds, n=3, sr=48000, seed=0):
    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * sr)) / sr
    return [(0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.randn(len(t))).astype(np.float32)
            for i in range(n)]


@pytest.mark.parametrize("seconds", [3.0, 10.24, 12.0])
def test_feature_extractor(tiny_ckpt, seconds):
    ref = ClapFeatureExtractor.from_pretrained(tiny_ckpt / "feature_extractor")
    ours = LogMel(FeatureExtractorConfig.from_json(tiny_ckpt / "feature_extractor" / "preprocessor_config.json"))
    waves = _waves(seconds)
    np.random.seed(7)  # the reference crops long audio at numpy's global RandomState: so does crop="random"
    a = ref(list(waves), return_tensors="pt", sampling_rate=48000).input_features
    np.random.seed(7)
    b = ours(waves)
    assert b.shape == a.shape == (3, 1, 1001, 64)
    assert_close(b, a, RTOL, f"log-mel features {seconds} s")
    if seconds > 10:
        assert not torch.equal(ours(waves, crop="start"), ours(waves, crop="center"))


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_audio_features_and_logits(variant, request):
    folder = request.getfixturevalue(f"{variant}_ckpt")
    ref = ClapModel.from_pretrained(folder / "text_encoder").eval()
    ours = Clap.from_pretrained(folder / "text_encoder")
    fe = ClapFeatureExtractor.from_pretrained(folder / "feature_extractor")
    mel = fe(list(_waves(4.0)), return_tensors="pt", sampling_rate=48000).input_features
    ids, mask = ClapTokenizer.from_pretrained(folder / "tokenizer")(["calm piano", "fast techno"],
                                                                      pad_to_max_length=False)
    with torch.no_grad():
        assert_close(ours.audio_features(mel), ref.get_audio_features(mel), RTOL, f"audio features {variant}")
        a = ref(input_ids=ids, attention_mask=mask, input_features=mel).logits_per_text
        assert_close(ours.logits_per_text(ids, mask, mel), a, RTOL, f"logits_per_text {variant}")
        ours.audio.stages[2].blocks[1].attn.v.weight.mul_(1.001)  # a shifted-window block
        assert_detects(ours.audio_features(mel), ref.get_audio_features(mel), RTOL,
                       f"audio tower {variant} shifted-window value x1.001")


def test_resampler_against_librosa():
    """Our windowed-sinc 16 -> 48 kHz against librosa.resample (soxr_hq): measured, asserted."""
    import librosa

    rng = np.random.RandomState(0)
    t = np.arange(16000 * 2) / 16000
    signals = np.stack([0.3 * rng.randn(len(t)), 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 5000 * t),
                        np.tanh(rng.randn(len(t)))]).astype(np.float32)
    ref = librosa.resample(signals, orig_sr=16000, target_sr=48000)
    ours = resample(torch.from_numpy(signals), 16000, 48000).numpy()
    assert ours.shape == ref.shape
    err = np.abs(ours - ref)
    rms = np.sqrt((err**2).mean() / (ref**2).mean())
    print(f"[resample] vs librosa soxr_hq: max abs {err.max():.3e}, rms rel {rms:.3e}")
    assert err.max() < 2e-3 and rms < 1e-3


def test_ranking_with_our_resampler_matches_librosa(tiny_ckpt):
    """The order CLAP gives several takes is the same whichever resampler fed it."""
    import librosa

    ours = Clap.from_pretrained(tiny_ckpt / "text_encoder")
    fe = LogMel(FeatureExtractorConfig.from_json(tiny_ckpt / "feature_extractor" / "preprocessor_config.json"))
    takes = np.stack([w[:32000] for w in _waves(2.0, n=4, sr=16000, seed=3)])
    ids, mask = ClapTokenizer.from_pretrained(tiny_ckpt / "tokenizer")(["a", "b"], pad_to_max_length=False)
    with torch.no_grad():
        a = ours.logits_per_text(ids, mask, fe(list(librosa.resample(takes, orig_sr=16000, target_sr=48000))))
        b = ours.logits_per_text(ids, mask, fe(list(resample(torch.from_numpy(takes), 16000, 48000).numpy())))
    assert torch.equal(a.argsort(dim=1), b.argsort(dim=1))
    assert_close(b, a, 1e-3, "logits through our resampler vs librosa's")
