"""`musicldm score` against transformers' ClapModel: each file's score is `logits_per_text / exp(logit_scale)` of
the reference on the same 48 kHz waveform, within 1e-5 relative, for files shorter than, equal to and longer than
CLAP's 10 s (the longer one scored on its first 10 s, as the reference sees exactly that clip) and read at 16,
44.1 and 48 kHz. The resampling to 48 kHz is ours on both sides: its own parity with librosa is test_clap.py's."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizerFast

from helpers import assert_close, assert_detects, musicldm
from musicldm_core import MusicLDMPipeline
from musicldm_core.app import score
from musicldm_core.audio_input import load_audio

RTOL = 1e-5
CLIPS = [(6.0, 16000), (10.0, 44100), (12.5, 48000)]  # (seconds, rate): shorter than, equal to, longer than 10 s


def _clips(folder):
    rng = np.random.RandomState(3)
    paths = []
    for seconds, rate in CLIPS:
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.2 * np.sin(2 * np.pi * 330 * t * (1 + t / 20)) + 0.05 * rng.randn(len(t))
        paths.append(folder / f"clip-{seconds:g}s-{rate}.wav")
        sf.write(paths[-1], wave.astype(np.float32), rate)
    return paths


def _reference(folder, prompt, paths) -> torch.Tensor:
    model = ClapModel.from_pretrained(folder / "text_encoder").eval()
    extractor = ClapFeatureExtractor.from_pretrained(folder / "feature_extractor")
    tokens = RobertaTokenizerFast.from_pretrained(folder / "tokenizer")([prompt], return_tensors="pt")
    out = []
    with torch.no_grad():
        for path in paths:
            wave = load_audio(str(path), None, 48000).numpy()[:480000]  # the first 10 s: what `score` scores
            features = extractor([wave], return_tensors="pt", sampling_rate=48000).input_features
            logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                           input_features=features).logits_per_text
            out.append(float(logits[0, 0] / model.logit_scale_t.exp()))
    return torch.tensor(out)


@pytest.mark.parametrize("variant", ["tiny", pytest.param("full", marks=pytest.mark.full_size)])
def test_scores_equal_clap_models_cosine(variant, request, tmp_path):
    folder = request.getfixturevalue(f"{variant}_ckpt")
    paths, prompt = _clips(tmp_path), "a rising tone over a little noise"
    pipe = MusicLDMPipeline.from_pretrained(folder)
    ours = torch.tensor(score.scores(pipe, [(prompt, p) for p in paths]))
    ref = _reference(folder, prompt, paths)
    assert_close(ours, ref, RTOL, f"CLAP score {variant}")
    pipe.text_encoder.audio.stages[-1].blocks[0].attn.v.weight.data.mul_(1.001)  # one HTSAT weight
    assert_detects(torch.tensor(score.scores(pipe, [(prompt, p) for p in paths])), ref, RTOL,
                   f"CLAP score {variant}, an HTSAT value weight x1.001")


def test_the_command_prints_writes_and_reads_a_manifest(tiny_ckpt, tmp_path):
    import json

    paths = _clips(tmp_path)
    r = musicldm("score", "a rising tone", *paths, "--weights", tiny_ckpt, "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    written = json.loads((tmp_path / "s.json").read_text())
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    expected = score.scores(pipe, [("a rising tone", p) for p in paths])
    assert [w["score"] for w in written] == expected and [w["file"] for w in written] == [str(p) for p in paths]
    assert r.stdout.splitlines() == [f"{v:+.4f}  {p}" for v, p in zip(expected, paths)]
    # a batch folder's manifest: each record's prompt against its own files
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"id": "a", "prompt": "a rising tone",
                                                         "files": [paths[0].name, paths[1].name]}) + "\n")
    r = musicldm("score", "--prompts", tmp_path / "manifest.jsonl", "--weights", tiny_ckpt)
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == \
        [f"{v:+.4f}" for v in expected[:2]], r.stderr


@pytest.mark.parametrize("args, says", [
    (["x"], "give at least one FILE to score against the prompt"),
    ([], "give PROMPT FILE..., or --prompts MANIFEST (not both)"),
    (["x", "missing.wav"], "no such file 'missing.wav'"),
    (["--prompts", "nothing.jsonl"], "--prompts: no such file 'nothing.jsonl'"),
])
def test_mistakes_are_one_line_before_the_model_loads(args, says, tmp_path):
    r = musicldm("score", *args, "--weights", tmp_path / "no-weights", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == f"musicldm score: error: {says}", r.stderr
