"""The condition beyond one text prompt (conditioning.py, audio_prompt.py), by exact properties on random weights:
an audio prompt is its embedding given as prompt_embeds, bit for bit; a blend of one part is the plain run; a
one-entry schedule is the plain windowed run; each window receives the vector the schedule gives at its centre
(the function that assigns them, and the vectors the UNet is handed); weights, schedules and audio prompts
are checked by name. Tiny checkpoint, and the published widths with a short (1.28 s) trained window. The
vector itself against the authors' conditioner: parity/test_audio_prompt.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import seeded
from musicldm_core import conditioning
from musicldm_core.conditioning import mix, schedule_weights, window_centres
from musicldm_core.errors import RequestError
from musicldm_core.pipeline import MusicLDMPipeline

KW = dict(num_inference_steps=3, guidance_scale=2.5)
RATE = 16000


def clip(seconds: float = 3.0, hz: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) + 0.02 * np.sin(2 * np.pi * 3 * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return MusicLDMPipeline.from_pretrained(tiny_ckpt)  # trained window: 32 latent frames (1.28 s)


@pytest.fixture(scope="module")
def wide(full_ckpt):
    """The published widths with the tiny checkpoint's short trained window (32 latent frames, 1.28 s)."""
    p = MusicLDMPipeline.from_pretrained(full_ckpt)
    p.unet.config = dataclasses.replace(p.unet.config, sample_size=32)
    return p


def run(p, seconds=2.0, **kw):
    return p(audio_length_in_s=seconds, generator=seeded(), **KW, **kw).audios


PIPES = ["pipe", pytest.param("wide", marks=pytest.mark.full_size)]


# --- audio prompts ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", PIPES)
def test_an_audio_prompt_is_its_embedding_given_as_prompt_embeds(which, request, tmp_path):
    p = request.getfixturevalue(which)
    path = tmp_path / "like.wav"
    sf.write(path, clip(rate=44100), 44100, subtype="FLOAT")
    vector = p.embed_audio_prompt(str(path))
    assert vector.shape == (1, p.text_encoder.config.projection_dim)
    assert torch.allclose(vector.norm(dim=-1), torch.ones(1), atol=1e-5)
    a = run(p, audio_prompt=str(path))
    assert np.array_equal(a, run(p, prompt_embeds=vector))
    negative = run(p, audio_prompt=str(path), negative_prompt="noise")
    assert np.array_equal(negative, run(p, prompt_embeds=vector, negative_prompt="noise"))
    assert not np.array_equal(a, negative)
    # an array at its rate is the same clip
    assert np.array_equal(p.embed_audio_prompt(clip(rate=44100), 44100), vector)


def test_an_audio_prompt_moves_the_music(pipe):
    """The vector reaches the UNet: another clip, or the text, is another piece."""
    a = run(pipe, audio_prompt=clip(), audio_sampling_rate=RATE)
    assert not np.array_equal(a, run(pipe, audio_prompt=clip(hz=523.0), audio_sampling_rate=RATE))
    assert not np.array_equal(a, run(pipe, prompt="warm jazz piano"))


def test_an_audio_prompt_beside_audio_to_audio(pipe):
    """Allowed: style from one clip, structure from another (`audio` sets the structure and the length)."""
    other = clip(2.0, hz=330.0)
    a = pipe(audio=clip(2.0), audio_sampling_rate=RATE, audio_prompt=other, generator=seeded(), strength=0.6,
             **KW).audios
    vector = pipe.embed_audio_prompt(other, RATE)
    assert np.array_equal(a, pipe(audio=clip(2.0), audio_sampling_rate=RATE, prompt_embeds=vector,
                                  generator=seeded(), strength=0.6, **KW).audios)


@pytest.mark.parametrize("audio,says", [
    (np.zeros(RATE, np.float32), "audio_prompt is silent"),
    (np.full(RATE, np.nan, np.float32), "audio_prompt contains NaN or infinite samples"),
    (np.ones(int(0.03 * RATE), np.float32), "audio_prompt is 30.0 ms long; it must be at least 40 ms"),
    ("missing.wav", "audio_prompt: no such file 'missing.wav'"),
])
def test_a_bad_audio_prompt_is_one_line(pipe, audio, says):
    with pytest.raises(RequestError, match=says.replace("(", r"\(").replace(")", r"\)")):
        pipe.plan(pipe_options(audio_prompt=audio, audio_sampling_rate=None if isinstance(audio, str) else RATE))


def test_an_unreadable_audio_prompt_is_named(pipe, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(RequestError, match=f"audio_prompt: cannot read '{bad}' as audio"):
        pipe.plan(pipe_options(audio_prompt=str(bad)))


def pipe_options(**kw):
    from musicldm_core.options import Options

    return Options(audio_length_in_s=2.0, num_inference_steps=3, **kw)


# --- blends -------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", PIPES)
def test_a_blend_of_one_part_is_the_plain_run(which, request):
    p = request.getfixturevalue(which)
    plain = run(p, prompt="warm jazz piano")
    assert np.array_equal(plain, run(p, prompt=["warm jazz piano"], prompt_weights=[2.5]))  # weights are relative
    # a part of weight 0 is left out
    assert np.array_equal(plain, run(p, prompt="warm jazz piano", audio_prompt=clip(), audio_sampling_rate=RATE,
                                     audio_prompt_weight=0.0))
    if which == "pipe":  # (the published widths: the cases above)
        assert np.array_equal(plain, run(p, prompt=["warm jazz piano"], prompt_weights=[1.0]))
        assert np.array_equal(plain, run(p, prompt=["warm jazz piano", "rain"], prompt_weights=[1.0, 0.0]))
        blended = run(p, prompt=["warm jazz piano", "rain"], prompt_weights=[0.7, 0.3])
        assert blended.shape == plain.shape and not np.array_equal(blended, plain)


def test_a_blend_is_the_normalised_weighted_mean_of_its_vectors(pipe):
    texts = ["warm jazz piano", "rainy night"]
    v = pipe.text_encoder.encode_texts(pipe.tokenizer, texts)
    audio = pipe.embed_audio_prompt(clip(), RATE)[0]
    expected = 0.5 * v[0] + 0.2 * v[1] + 0.3 * audio
    got = pipe.condition_vectors([conditioning.Blend(tuple(texts), (5.0, 2.0), clip_read(), 3.0)], "linear")[0]
    torch.testing.assert_close(got, expected / expected.norm(), rtol=0, atol=1e-6)


def clip_read():
    from musicldm_core.audio_prompt import read_audio_prompt

    return read_audio_prompt(clip(), RATE, "audio_prompt")


def test_slerp_walks_the_arc_at_constant_pace_and_linear_at_another():
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    both = torch.cat([a, b])
    for alpha in (0.1, 0.25, 0.5, 0.9):
        s = mix(both, [1 - alpha, alpha], "slerp")
        angle = math.atan2(float(s[1]), float(s[0]))
        assert abs(angle - alpha * math.pi / 2) < 1e-6 and abs(float(s.norm()) - 1) < 1e-6
        lin = mix(both, [1 - alpha, alpha], "linear")
        assert abs(math.atan2(float(lin[1]), float(lin[0])) - math.atan2(alpha, 1 - alpha)) < 1e-6
        assert float(lin[2]) == 0.0 == float(s[2])  # both stay on the arc between the two
    assert torch.equal(mix(both, [0.0, 1.0], "slerp"), b[0])  # one part: itself, untouched
    with pytest.raises(RequestError, match="cancel out"):
        mix(torch.cat([a, -a]), [1.0, 1.0], "linear")


@pytest.mark.parametrize("kw,says", [
    (dict(prompt=["a", "b"], prompt_weights=[0.0, 0.0]), "the blend's weights are all 0"),
    (dict(prompt=["a", "b"], prompt_weights=[1.0, -1.0]), r"prompt_weights\[1\] must be a finite number >= 0"),
    (dict(prompt=["a", "b"], prompt_weights=[1.0, float("nan")]), r"prompt_weights\[1\] must be a finite number"),
    (dict(prompt=["a", "b"], prompt_weights=[1.0]), "prompt_weights has 1 weights for 2 prompts"),
    (dict(prompt=["a", "b", "c"], prompt_weights=[1, 1, 1], blend="slerp"),
     "blend='slerp' interpolates between two parts; this blend has 3"),
    (dict(prompt="a", blend="cubic"), "blend must be 'linear' or 'slerp', got 'cubic'"),
    (dict(prompt="a", audio_prompt=np.ones(RATE, np.float32), audio_sampling_rate=RATE, audio_prompt_weight=-2),
     "audio_prompt_weight must be a finite number >= 0"),
    (dict(prompt_weights=[1.0]), r"give prompt \(a string or a list of strings\) or prompt_embeds"),
    (dict(prompt=5, audio_prompt="x.wav"), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a", "b"], prompt_weights=[1, 1], negative_prompt=["x", "y"]),
     "negative_prompt must be one string: prompt_weights blends the prompts into one"),
    (dict(prompt_embeds=torch.zeros(1, 32), audio_prompt="x.wav"), "prompt_embeds cannot be blended or scheduled"),
])
def test_bad_blends_are_one_line(kw, says):
    with pytest.raises(RequestError, match=says):
        pipe_options(**kw).check()


# --- schedules ----------------------------------------------------------------------------------

def test_the_schedule_at_each_time():
    times = [0.0, 30.0, 60.0]
    at = lambda t, travel=10.0, loop=False: schedule_weights(times, t, travel, 90.0, loop)  # noqa: E731
    assert at(5.0) == [(0, 1.0)] and at(40.0) == [(1, 1.0)] and at(89.0) == [(2, 1.0)]
    assert at(30.0) == [(0, 0.5), (1, 0.5)]  # a transition is centred on its entry's time
    assert at(27.5) == [(0, 0.75), (1, 0.25)] and at(32.5) == [(0, 0.25), (1, 0.75)]
    assert at(25.0) == [(0, 1.0)] and at(35.0) == [(1, 1.0)]  # travel 10 s: from 25 to 35
    assert at(29.0, travel=0.0) == [(0, 1.0)] and at(30.0, travel=0.0) == [(1, 1.0)]  # no travel: a switch
    assert at(2.0) == [(0, 1.0)]  # an open piece: nothing before its first entry
    # a loop wraps: the last entry travels into the first across the seam
    assert np.allclose(sum(at(88.0, loop=True), ()), (2, 0.7, 0, 0.3))
    assert np.allclose(sum(at(2.0, loop=True), ()), (2, 0.3, 0, 0.7))
    # a transition is cut to half the gap to either neighbour
    assert schedule_weights([0.0, 4.0], 1.0, 10.0, 20.0, False) == [(0, 1.0)]
    assert schedule_weights([0.0, 4.0], 3.0, 10.0, 20.0, False) == [(0, 0.75), (1, 0.25)]
    assert schedule_weights([5.0], 1.0, 10.0, 20.0, True) == [(0, 1.0)]  # one entry: itself everywhere


def test_window_centres():
    # 150 latent frames, windows of 32 overlapping 8 (stride 24): the last ends at the end
    starts = [0, 24, 48, 72, 96, 118]
    assert window_centres(150, 32, 8, False, 0.04) == pytest.approx([(s + 16) * 0.04 for s in starts])
    assert window_centres(20, 32, 8, False, 0.04) == pytest.approx([0.4])  # one short window: its middle
    ring = window_centres(96, 32, 8, True, 0.04)  # a ring: every stride, the last wrapping
    assert ring == pytest.approx([(s + 16) % 96 * 0.04 for s in range(0, 96, 24)])


def test_each_window_receives_the_vector_the_schedule_gives_it(pipe):
    """The vectors the UNet is handed, window by window, are the schedule's at each window's centre."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    schedule = [(0.0, "ambient pad"), (2.0, "deep house"), (4.5, "rain")]
    try:
        pipe(audio_length_in_s=6.0, generator=seeded(), schedule=schedule, travel=1.0, num_inference_steps=1,
             guidance_scale=1.0)
    finally:
        hook.remove()
    given = torch.cat(seen)  # one step, unguided: each UNet call two windows' rows
    entries = pipe.text_encoder.encode_texts(pipe.tokenizer, [text for _, text in schedule])
    centres = window_centres(150, 32, 8, False, 0.04)
    assert given.shape[0] == len(centres) == 6
    for k, t in enumerate(centres):
        weights = schedule_weights([0.0, 2.0, 4.5], t, 1.0, 6.0, False)
        expected = entries[weights[0][0]] if len(weights) == 1 else mix(
            entries[[weights[0][0], weights[1][0]]], [weights[0][1], weights[1][1]], "linear")
        assert torch.equal(given[k], expected), (k, t, weights)
    assert len({tuple(g.tolist()) for g in given}) >= 3  # the windows do differ


@pytest.mark.parametrize("which", PIPES)
def test_a_one_entry_schedule_is_the_plain_windowed_run(which, request):
    p = request.getfixturevalue(which)
    seconds = 3.0 if which == "pipe" else 2.0  # two windows of the 1.28 s trained length, or three
    assert np.array_equal(run(p, seconds, schedule=[(0, "warm jazz piano")]),
                          run(p, seconds, prompt="warm jazz piano", window="windowed"))
    assert np.array_equal(run(p, seconds, schedule=[(0, "warm jazz piano")], loop=True),
                          run(p, seconds, prompt="warm jazz piano", loop=True))
    if which == "wide":
        return
    clip_run = run(p, 3.0, schedule=[(1.0, {"audio_prompt": clip(), "audio_sampling_rate": RATE})])
    assert np.array_equal(clip_run, run(p, 3.0, audio_prompt=clip(), audio_sampling_rate=RATE, window="windowed"))


def test_a_schedule_travels(pipe):
    two = run(pipe, 4.0, schedule=[(0, "warm jazz piano"), (2.0, "deep house")])
    assert not np.array_equal(two, run(pipe, 4.0, schedule=[(0, "warm jazz piano")]))
    looped = run(pipe, 4.0, schedule=[(0, "warm jazz piano"), (2.0, "deep house")], loop=True)
    assert looped.shape == (1, 64000)


@pytest.mark.parametrize("kw,says", [
    (dict(schedule=[(0, "a"), (12.0, "b")]), r"schedule\[1\] at 12 s is past the piece's end \(4 s\)"),
    (dict(schedule=[(0, "a"), (2.0, "b"), (1.0, "c")]), r"schedule\[2\] at 1 s comes before the entry before it"),
    (dict(schedule=[(0, "a"), (0, "b")]), r"schedule\[1\] at 0 s repeats the entry before it"),
    (dict(schedule=[(0, "a")], prompt="b"), "give either schedule or prompt"),
    (dict(schedule=[(0, "a")], window="whole"), "schedule conditions each window of the windowed path"),
    (dict(schedule=[(-1, "a")]), r"schedule\[0\]'s time must be a finite number >= 0"),
    (dict(schedule=[(0, {"promt": "a"})]), r"schedule\[0\] has unknown key\(s\) \['promt'\]"),
    (dict(schedule=[(0, {"prompt": ["a", "b"], "prompt_weights": [0, 0]})]), "the blend's weights are all 0"),
    (dict(schedule=[]), "schedule must be a non-empty list of"),
    (dict(prompt="a", travel=2.0), "travel applies to a schedule"),
    (dict(schedule=[(0, "a")], travel=-1.0), "travel must be a finite number >= 0"),
])
def test_bad_schedules_are_one_line(pipe, kw, says):
    with pytest.raises(RequestError, match=says):
        pipe.plan(dataclasses.replace(pipe_options(**kw), audio_length_in_s=4.0))
