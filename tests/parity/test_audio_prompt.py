"""An audio prompt's vector against the authors' conditioner: MusicLDM's CLAPAudioEmbeddingClassifierFreev2 with
embed_mode="audio" (tests/authors_code.clap_audio_condition: torchaudio's resample from its wheel, laion-clap's
get_audio_features and CLAP model, untouched), on the same weights at the published CLAP shapes (HTSAT-base,
RoBERTa-base, 512-d), within 1e-5 relative.

The waveform both sides get is the clip as the training data loader read it: resampled to 16 kHz by torchaudio's
resample, mean removed and peaked at 0.5 (AudioLDM's normalize_wav, written here from its definition). Clips
shorter than, equal to and longer than CLAP's 10 s, read at 16, 44.1 and 48 kHz; the longer one's crop is
the centred one on both sides (the reference's random crop offset drawn as the centre)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

import authors_code
import reference_checkpoints
from helpers import assert_close, assert_detects
from musicldm_core.audio_frontend import LogMel
from musicldm_core.audio_prompt import audio_embedding, read_audio_prompt
from musicldm_core.clap import Clap
from musicldm_core.clap_config import FeatureExtractorConfig
from weights_convert.layouts import convert_clap

RTOL = 1e-5
CLIPS = [(6.0, 16000), (10.0, 44100), (12.5, 48000)]  # (seconds, rate): shorter than, equal to, longer than 10 s

@pytest.fixture(scope="module")
def clap_pair(tmp_path_factory, full_ckpt):
    """(the authors' CLAP at the published shapes, random weights; ours converted from it; our front end)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = authors_code.clap("full")
    fixed = {k: v.clone() for k, v in theirs.state_dict().items() if k.endswith("attn_mask") or "_extractor." in k}
    reference_checkpoints.randomize_(theirs, 31)  # all but what is computed: the masks, the STFT and mel filters
    theirs.load_state_dict(fixed, strict=False)
    folder = tmp_path_factory.mktemp("clap-full")
    component = convert_clap(theirs.state_dict(), folder)
    save_file({k: v.contiguous() for k, v in component.weights.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(component.config))
    ours = Clap.from_pretrained(folder).eval()
    logmel = LogMel(FeatureExtractorConfig.from_json(full_ckpt / "feature_extractor" / "preprocessor_config.json"))
    return theirs, ours, logmel


def _clip(folder, seconds: float, rate: int):
    rng = np.random.RandomState(int(seconds * 10))
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + t / 15)) + 0.05 * rng.randn(len(t)) + 0.02
    path = folder / f"like-{seconds:g}s-{rate}.wav"
    sf.write(path, wave.astype(np.float32), rate, subtype="FLOAT")
    return path


def _as_training_read(path) -> torch.Tensor:
    """The clip as the training loader read it: torchaudio's resample to 16 kHz, then normalize_wav."""
    data, rate = sf.read(path, dtype="float32")
    wave = torch.from_numpy(data)[None]
    if rate != 16000:
        wave = authors_code.torchaudio_resample()(wave, rate, 16000)
    wave = wave - wave.mean()
    return wave / (wave.abs().max() + 1e-8) * 0.5


def _centred_crop(monkeypatch):
    """get_audio_features' rand_trunc draws np.random.randint(0, overflow + 1): let it draw the centre."""
    monkeypatch.setattr(np.random, "randint", lambda low, high: (low + high - 1) // 2)


@pytest.mark.full_size
@pytest.mark.parametrize("seconds,rate", CLIPS)
def test_audio_prompt_equals_the_authors_conditioner(clap_pair, seconds, rate, tmp_path, monkeypatch):
    theirs, ours, logmel = clap_pair
    path = _clip(tmp_path, seconds, rate)
    wave = read_audio_prompt(str(path), None, "audio_prompt")
    reference = _as_training_read(path)
    assert_close(wave[None], reference, 1e-6, f"the clip read at 16 kHz ({seconds} s at {rate} Hz)")
    _centred_crop(monkeypatch)
    with torch.no_grad():
        expected = authors_code.clap_audio_condition(theirs, reference)[:, 0]
        got = audio_embedding(ours, logmel, [wave])
        assert_close(got, expected, RTOL, f"audio prompt vector, {seconds} s at {rate} Hz")
        block = ours.audio.stages[-1].blocks[0].attn.v.weight
        saved = block.detach().clone()
        block.data.mul_(1.001)  # one HTSAT weight
        try:
            assert_detects(audio_embedding(ours, logmel, [wave]), expected, RTOL,
                           f"audio prompt vector, {seconds} s at {rate} Hz, an HTSAT value weight x1.001")
        finally:
            block.data.copy_(saved)


@pytest.mark.full_size
def test_a_longer_clip_is_cropped_at_its_centre(clap_pair, tmp_path, monkeypatch):
    """The crop is stated: the reference's offset drawn at the start instead is another vector."""
    from musicldm_core.audio_prompt import crop_start

    theirs, ours, logmel = clap_pair
    path = _clip(tmp_path, 12.5, 48000)
    wave = read_audio_prompt(str(path), None, "audio_prompt")
    # the start a record states is the offset the centred crop takes: (600000 - 480000) // 2 samples at 48 kHz
    assert crop_start(len(wave)) == 1.25 and (600000 - 480000) // 2 == 1.25 * 48000
    monkeypatch.setattr(np.random, "randint", lambda low, high: low)
    with torch.no_grad():
        at_start = authors_code.clap_audio_condition(theirs, _as_training_read(path))[:, 0]
        assert_detects(audio_embedding(ours, logmel, [wave]), at_start, RTOL, "the centred crop vs the first 10 s")


@pytest.mark.full_size
def test_the_published_front_ends_band_would_be_another_vector(clap_pair, tmp_path, monkeypatch):
    """The conditioner's band (50 Hz up) is set, not the checkpoint's feature extractor's (0 Hz up, with which
    takes are ranked): left to the checkpoint's, the vector moves far past the bound."""
    import musicldm_core.audio_prompt as audio_prompt

    theirs, ours, logmel = clap_pair
    wave = read_audio_prompt(str(_clip(tmp_path, 6.0, 16000)), None, "audio_prompt")
    assert logmel.config.frequency_min == 0
    monkeypatch.setattr(audio_prompt, "CONDITIONER_FRONT_END",
                        dict(audio_prompt.CONDITIONER_FRONT_END, frequency_min=logmel.config.frequency_min))
    with torch.no_grad():
        expected = authors_code.clap_audio_condition(theirs, wave[None])[:, 0]
        assert_detects(audio_embedding(ours, logmel, [wave]), expected, RTOL, "the published 0 Hz band")


@pytest.mark.parametrize("orig,new", [(16000, 48000), (44100, 16000), (48000, 16000), (22050, 16000), (8000, 48000),
                                      (16000, 16000)])
def test_resample_hann_is_torchaudios_resample_to_the_bit(orig, new):
    from musicldm_core.resampler import resample_hann

    wave = torch.randn(2, 3001, generator=torch.Generator().manual_seed(orig + new))
    expected = authors_code.torchaudio_resample()(wave, orig, new)
    got = resample_hann(wave, orig, new)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_resample_hann_refuses_rates_without_a_small_ratio():
    from musicldm_core.audio_input import check_rate
    from musicldm_core.errors import RequestError

    with pytest.raises(RequestError, match="audio_prompt: the sampling rate 44101 Hz has no small ratio to 16000 Hz"):
        check_rate(44101, 16000, "audio_prompt: the sampling rate", "hann")
