"""CLAP off the published path: text and audio tower options, and every feature-extractor mode.

Each case builds transformers' ClapModel / ClapFeatureExtractor at a small config with an
unusual value for the option under test, saves it with save_pretrained and compares ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import ClapConfig as RefClapConfig, ClapFeatureExtractor, ClapModel

from helpers import assert_close, assert_detects
from reference_checkpoints import randomize_
from musicldm_core.audio_frontend import LogMel, mel_filters
from musicldm_core.clap import Clap
from musicldm_core.clap_config import FeatureExtractorConfig
from musicldm_core.errors import CheckpointError

RTOL = 1e-5
TEXT = {"vocab_size": 99, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 40, "max_position_embeddings": 40}
AUDIO = {"spec_size": 64, "window_size": 4, "num_mel_bins": 64, "depths": [1, 2], "num_attention_heads": [2, 4],
         "patch_embeds_hidden_size": 16, "hidden_size": 32, "patch_size": 4, "patch_stride": [4, 4]}

TEXT_OPTIONS = {
    "layer_norm_eps 1e-3": {"layer_norm_eps": 1e-3},
    "hidden_act gelu_new": {"hidden_act": "gelu_new"},
    "hidden_act relu": {"hidden_act": "relu"},
    "type_vocab_size 2, pad_token_id 0": {"type_vocab_size": 2, "pad_token_id": 0},
}
AUDIO_OPTIONS = {
    "published-like": {},
    "patch_stride int": {"patch_stride": 2, "patch_size": 2},
    "patch pair sizes": {"patch_size": [4, 2], "patch_stride": [4, 2]},
    "patch overlap (size > stride)": {"patch_size": 6, "patch_stride": 4},
    "4 input channels": {"patch_embed_input_channels": 4},
    "hidden_act relu, layer_norm_eps": {"hidden_act": "relu", "layer_norm_eps": 1e-2},
    "no patch norm, no qkv bias, mlp_ratio 2": {"enable_patch_layer_norm": False, "qkv_bias": False, "mlp_ratio": 2.0},
    "spec 128 over 32 mel bins (freq_ratio 4)": {"spec_size": 128, "num_mel_bins": 32},
}


def _build(text: dict, audio: dict, folder, seed: int, **top) -> tuple[ClapModel, Clap]:
    torch.manual_seed(seed)
    ref = ClapModel(RefClapConfig(text_config=text, audio_config=audio, projection_dim=12, **top)).eval()
    randomize_(ref, seed)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, Clap.from_pretrained(folder)


def _tokens(vocab: int, pad: int = 1):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad, 0  # a padded row
    return ids, mask


@pytest.mark.parametrize("option", list(TEXT_OPTIONS))
def test_text_tower_option(option, tmp_path):
    """In float64 (the reference's softmax stays float32: 1e-7), so a slightly wrong constant shows."""
    text = {**TEXT, **TEXT_OPTIONS[option]}
    ref, _ = _build(text, AUDIO, tmp_path, 5)
    ref, ours = ref.double(), Clap.from_pretrained(tmp_path, dtype=torch.float64)
    ids, mask = _tokens(TEXT["vocab_size"], text.get("pad_token_id", 1))
    with torch.no_grad():
        a = ref.get_text_features(ids, attention_mask=mask)
        assert_close(ours.text_features(ids, mask), a, 1e-7, f"text features float64, {option}")


def test_text_layer_norm_eps_is_read(tmp_path):
    """An eps hard-coded to the published 1e-12 instead of the config's 1e-3 would show."""
    ref, _ = _build({**TEXT, "layer_norm_eps": 1e-3}, AUDIO, tmp_path, 5)
    data = json.loads((tmp_path / "config.json").read_text())
    data["text_config"]["layer_norm_eps"] = 1e-12
    (tmp_path / "config.json").write_text(json.dumps(data))
    ids, mask = _tokens(TEXT["vocab_size"])
    with torch.no_grad():
        assert_detects(Clap.from_pretrained(tmp_path).text_features(ids, mask),
                       ref.get_text_features(ids, attention_mask=mask), RTOL, "text layer_norm_eps ignored")


def test_projection_act_comes_from_the_top_level_config(tmp_path):
    """transformers' ClapConfig overwrites the towers' projection_hidden_act with its own: a file whose
    towers say relu and whose top level says silu projects with silu, in both towers."""
    _build(TEXT, AUDIO, tmp_path, 6, projection_hidden_act="silu")
    data = json.loads((tmp_path / "config.json").read_text())
    data["text_config"]["projection_hidden_act"] = data["audio_config"]["projection_hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(data))
    ref, ours = ClapModel.from_pretrained(tmp_path).eval(), Clap.from_pretrained(tmp_path)
    assert ours.config.text_config.projection_hidden_act == ours.config.audio_config.projection_hidden_act == "silu"
    ids, mask = _tokens(TEXT["vocab_size"])
    mel = torch.randn(2, 1, 61, 64, generator=torch.Generator().manual_seed(1)) * 10 - 40
    with torch.no_grad():
        assert_close(ours.text_features(ids, mask), ref.get_text_features(ids, attention_mask=mask), RTOL,
                     "text features, projection silu")
        assert_close(ours.audio_features(mel), ref.get_audio_features(mel), RTOL, "audio features, projection silu")


@pytest.mark.parametrize("option", list(AUDIO_OPTIONS))
def test_audio_tower_option(option, tmp_path):
    audio = {**AUDIO, **AUDIO_OPTIONS[option]}
    ref, ours = _build(TEXT, audio, tmp_path, 8)
    channels = audio.get("patch_embed_input_channels", 1)
    mel = torch.randn(2, channels, 61, audio["num_mel_bins"], generator=torch.Generator().manual_seed(1)) * 10 - 40
    ids, mask = _tokens(TEXT["vocab_size"])
    with torch.no_grad():
        assert_close(ours.audio_features(mel), ref.get_audio_features(mel), RTOL, f"audio features, {option}")
        a = ref(input_ids=ids, attention_mask=mask, input_features=mel).logits_per_text
        assert_close(ours.logits_per_text(ids, mask, mel), a, RTOL, f"logits, {option}")


@pytest.mark.parametrize("key, value, message", [
    ("enable_fusion", True, "enable_fusion=True is not supported .*is_longer"),
    ("window_size", 16, "stage 1 has a 8x8 patch grid, smaller than window_size=16"),
    ("hidden_act", "quick_gelu", "hidden_act='quick_gelu' is not supported"),
    ("patch_stride", [4, 4, 4], r"patch_stride=\[4, 4, 4\] must have 2 entries"),
    ("hidden_size", 48, "hidden_size=48 must equal patch_embeds_hidden_size"),
])
def test_audio_refusals(key, value, message, tmp_path):
    _build(TEXT, AUDIO, tmp_path, 2)
    data = json.loads((tmp_path / "config.json").read_text())
    data["audio_config"][key] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: audio_config: " + message):
        Clap.from_pretrained(tmp_path)


def _waves(lengths, sr=48000, seed=0):
    rng = np.random.RandomState(seed)
    return [(0.3 * np.sin(2 * np.pi * (220 + 55 * i) * np.arange(n) / sr) + 0.05 * rng.randn(n)).astype(np.float32)
            for i, n in enumerate(lengths)]


SECOND = 48000
EXTRACTOR_CASES = {
    # name: (feature extractor kwargs, waveform lengths in samples)
    "rand_trunc repeatpad short": ({"truncation": "rand_trunc", "padding": "repeatpad"}, [3 * SECOND, 7 * SECOND]),
    "rand_trunc repeat short": ({"truncation": "rand_trunc", "padding": "repeat"}, [3 * SECOND + 17]),
    "rand_trunc pad short": ({"truncation": "rand_trunc", "padding": "pad"}, [2 * SECOND]),
    "rand_trunc long": ({"truncation": "rand_trunc"}, [12 * SECOND, 10 * SECOND + 5000]),
    "fusion short (one marked longer at random)": ({"truncation": "fusion"}, [3 * SECOND, 4 * SECOND]),
    "fusion long": ({"truncation": "fusion"}, [13 * SECOND, 25 * SECOND + 123]),
    "fusion within one hop of the window": ({"truncation": "fusion"}, [10 * SECOND + 100, 3 * SECOND]),
    # two crop offsets (0 and 1) for three windows: the last range is empty and takes offset 0, as in the reference
    "fusion one frame past the window": ({"truncation": "fusion"}, [10 * SECOND + 490, 10 * SECOND + 970]),
    "rand_trunc exactly the window (no crop drawn)": ({"truncation": "rand_trunc"}, [10 * SECOND]),
    "fusion mixed, pad": ({"truncation": "fusion", "padding": "pad"}, [2 * SECOND, 14 * SECOND]),
    "fusion, small hop (the fast-test extractor)": ({"truncation": "fusion", "hop_length": 7900},
                                                    [SECOND // 10, 11 * SECOND]),
    "other bands": ({"truncation": "rand_trunc", "frequency_min": 50, "frequency_max": 8000, "feature_size": 32},
                    [3 * SECOND]),
    "other rate, window and FFT size": ({"truncation": "rand_trunc", "sampling_rate": 32000, "max_length_s": 4,
                                         "fft_window_size": 512, "hop_length": 320}, [SECOND, 5 * SECOND]),
    "fusion, other window": ({"truncation": "fusion", "max_length_s": 3, "fft_window_size": 2048},
                             [SECOND, 7 * SECOND]),
}


@pytest.mark.parametrize("case", list(EXTRACTOR_CASES))
def test_feature_extractor_modes(case, tmp_path):
    kwargs, lengths = EXTRACTOR_CASES[case]
    ref = ClapFeatureExtractor(**kwargs)
    ref.save_pretrained(tmp_path)
    ours = LogMel(FeatureExtractorConfig.from_json(tmp_path / "preprocessor_config.json"))
    waves = _waves(lengths)
    np.random.seed(11)
    a = torch.as_tensor(np.stack(ref(list(waves), sampling_rate=ref.sampling_rate)["input_features"]))
    after_ref = np.random.randint(0, 2**31)  # the global RandomState must move on exactly as the reference's
    np.random.seed(11)
    b = ours(waves)
    after_ours = np.random.randint(0, 2**31)
    assert b.shape == a.shape
    assert_close(b, a, RTOL, f"log-mel, {case}")
    assert after_ours == after_ref, "numpy's global RandomState was drawn differently"


@pytest.mark.parametrize("bins, mels, low, high, rate, scale", [
    (513, 64, 0, 14000, 48000, "slaney"), (513, 64, 50, 14000, 48000, "htk"), (257, 32, 50, 8000, 22051, "slaney"),
    (1025, 128, 20, 11000, 22051, "htk"), (513, 64, 0, 8000, 16000, "slaney")])
def test_mel_filters_against_transformers(bins, mels, low, high, rate, scale):
    """The extractor's filter bank (and MusicLDM's, slaney 0-8 kHz at 16 kHz), at an odd rate too."""
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(bins, mels, low, high, rate, norm="slaney" if scale == "slaney" else None, mel_scale=scale)
    assert_close(mel_filters(bins, mels, low, high, rate, scale), ref, RTOL, f"mel filters {scale} at {rate} Hz")


def test_a_crop_is_one_of_three():
    fe = LogMel(FeatureExtractorConfig.from_hf({"truncation": "rand_trunc"}))
    with pytest.raises(ValueError) as e:
        fe(_waves([SECOND]), crop="middle")
    assert str(e.value) == "crop: expected one of 'random', 'start', 'center', got 'middle'"


def test_rand_trunc_reaches_the_last_offset():
    """An overflow of one sample: the crop offset is 0 or 1, drawn as randint(0, overflow + 1)."""
    ref = ClapFeatureExtractor(truncation="rand_trunc")
    ours = LogMel(FeatureExtractorConfig.from_hf({"truncation": "rand_trunc"}))
    wave = _waves([10 * SECOND + 1])
    for seed in range(8):  # some of these seeds draw offset 1
        np.random.seed(seed)
        a = np.stack(ref(list(wave), sampling_rate=48000)["input_features"])
        np.random.seed(seed)
        b = ours(wave).numpy()
        assert np.array_equal(a, b), f"seed {seed}"


def test_deterministic_crops_for_fusion():
    fe = LogMel(FeatureExtractorConfig.from_hf({"truncation": "fusion"}))
    waves = _waves([15 * SECOND])
    start, center = fe(waves, crop="start"), fe(waves, crop="center")
    assert torch.equal(start, fe(waves, crop="start")) and not torch.equal(start, center)
    assert torch.equal(start[:, 0], center[:, 0])  # the shrunk whole mel does not depend on the crop
    # 501 offsets split in three ranges, 0-166, 167-333 and 334-500: their first offsets, then their middles
    mel, chunk = torch.from_numpy(fe.log_mel(waves[0].astype(np.float64))), 1001
    for crops, offsets in ((start, (0, 167, 334)), (center, (83, 250, 417))):
        for view, offset in enumerate(offsets, 1):
            assert torch.equal(crops[0, view], mel[offset:offset + chunk]), (view, offset)
