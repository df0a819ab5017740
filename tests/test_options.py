"""options.py on its own: every check's verdict and message, `read_input` and `plan`, without a model.

The pipeline's, the command line's and batch mode's refusal tests (test_pipeline_inputs, test_refusals)
reach these checks through a loaded checkpoint or a subprocess; here each is called directly, so a
wrong bound, a dropped argument name or a message that lost its value shows in milliseconds. Messages
are matched on what they must carry (the argument, under the name the caller gave it; the value; what
is allowed), not copied whole.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import reference_checkpoints
from helpers import refused, sine
from musicldm_core import options as opt
from musicldm_core.app.cli import FLAGS
from musicldm_core import checks
from musicldm_core.errors import RequestError
from musicldm_core.geometry import Geometry
from musicldm_core.options import Options, plan, read_input
from musicldm_core.samplers import Scheduler

PUBLISHED = reference_checkpoints.PUBLISHED["scheduler"]
GEOMETRY = Geometry(sampling_rate=16000, hop=160, mel_bins=64, vae_factor=4, latent_channels=8, sample_size=256)


def flagged(call):
    """`call`, its request errors as the command line shows them (renamed to the flags, once, as cli.main does)."""
    def run(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except RequestError as e:
            raise e.renamed(FLAGS) from None
    return run


OK = Options(prompt="calm piano")


def ddim() -> Scheduler:
    return Scheduler.from_config(PUBLISHED, "ddim")


# ---------------------------------------------------------------------------------------------
# Options.check: one case per refusal, under the argument's own name and under a flag's
# ---------------------------------------------------------------------------------------------

CHECK = [  # (override, the message's part under the API names, the same under FLAGS)
    (dict(audio_length_in_s=0), "audio_length_in_s must be a finite number > 0, got 0",
     "--seconds must be a finite number > 0, got 0"),
    (dict(num_inference_steps=0), "num_inference_steps must be >= 1, got 0", "--steps must be >= 1, got 0"),
    (dict(guidance_scale=-0.5), "guidance_scale must be a finite number >= 0, got -0.5",
     "--guidance must be a finite number >= 0, got -0.5"),
    (dict(num_waveforms_per_prompt=0), "num_waveforms_per_prompt must be >= 1, got 0", "--takes must be >= 1, got 0"),
    (dict(eta=1.5), "eta must be a finite number >= 0 and <= 1, got 1.5", "eta must be a finite number >= 0 and <= 1"),
    (dict(eta=-0.1), "eta must be a finite number >= 0 and <= 1, got -0.1", "eta must be"),
    (dict(callback_steps=0), "callback_steps must be >= 1, got 0", "callback_steps must be >= 1, got 0"),
    (dict(callback=5), "callback must be a function or None, got int", "callback must be a function or None, got int"),
    (dict(progress="bar"), "progress must be a function or None, got str", "progress must be a function or None"),
    (dict(return_dict="no"), "return_dict must be True or False, got 'no'", "return_dict must be True or False"),
    (dict(return_dict=1), "return_dict must be True or False, got 1", "return_dict must be True or False, got 1"),
    (dict(return_mels=0), "return_mels must be True or False, got 0", "return_mels must be True or False, got 0"),
    (dict(output_type="wav"), "output_type must be 'np', 'pt' or 'latent', got 'wav'", "output_type must be 'np'"),
    (dict(crop="middle"), "crop must be 'random', 'start' or 'center', got 'middle'", "crop must be 'random'"),
    (dict(window="wide"), "window must be None, 'auto', 'whole' or 'windowed', got 'wide'",
     "--window must be None, 'auto', 'whole' or 'windowed', got 'wide'"),
    (dict(loop="yes"), "loop must be True or False, got 'yes'", "--loop must be True or False, got 'yes'"),
    (dict(sampler="ddpm"), "sampler: unknown sampler 'ddpm'; choose one of ddim, pndm", "--sampler: unknown sampler"),
    (dict(cross_attention_kwargs={"gligen": 1}), "unsupported key(s) ['gligen']", "unsupported key(s) ['gligen']"),
    (dict(prompt=""), "prompt is empty or only whitespace", "prompt is empty or only whitespace"),
    (dict(generator="seed"), "generator must be a torch.Generator or a list of them, got str", "got str"),
    (dict(strength=0.5), "strength needs an input: give audio", "--strength needs an input: give --input"),
    (dict(negative_prompt=3), "negative_prompt must have the same type as prompt (str), got int",
     "--negative must have the same type as prompt (str), got int"),
]


@pytest.mark.parametrize("override, api, flag", CHECK, ids=[f"{i}-{next(iter(c[0]))}" for i, c in enumerate(CHECK)])
def test_check_names_the_argument_its_value_and_what_is_allowed(override, api, flag):
    error = TypeError if "same type" in api else ValueError
    bad = replace(OK, **override)
    refused(api, bad.check, error=error)
    refused(flag, flagged(bad.check), error=error)


def test_check_accepts_the_edges_and_returns_the_prompt_count():
    edges = dict(audio_length_in_s=0.01, num_inference_steps=1, guidance_scale=0, num_waveforms_per_prompt=1, eta=1,
                 callback_steps=1, callback=print, progress=print, return_dict=False, return_mels=True,
                 output_type="latent", crop="center", window="windowed", loop=True, sampler="heun",
                 cross_attention_kwargs={"scale": 0.5})
    assert replace(OK, **edges).check() == 1
    assert replace(OK, eta=0, window=None, output_type="pt", crop="start").check() == 1
    assert Options(prompt=["a", "b", "c"]).check() == 3
    assert Options(prompt_embeds=torch.zeros(4, 8)).check() == 4


def test_guidance_runs_only_above_one():
    assert not replace(OK, guidance_scale=1.0).guided and replace(OK, guidance_scale=1.0001).guided


def test_negative_prompts_one_per_prompt():
    assert OK.negative_prompts(2) == ["", ""]
    assert replace(OK, negative_prompt="noise").negative_prompts(3) == ["noise"] * 3
    given = ["a", "b"]
    out = replace(OK, negative_prompt=given).negative_prompts(2)
    assert out == ["a", "b"] and out is not given


# ---------------------------------------------------------------------------------------------
# The checks, one kind of argument each
# ---------------------------------------------------------------------------------------------


def test_check_number():
    assert checks.check_number("x", 3, minimum=0) == 3.0 and isinstance(checks.check_number("x", 3, minimum=0), float)
    assert checks.check_number("x", 0, minimum=0) == 0.0  # not strict: the minimum itself is allowed
    assert checks.check_number("x", 2, minimum=0, maximum=2) == 2.0
    refused("x must be a finite number > 0, got 0", checks.check_number, "x", 0, minimum=0, strict=True)
    refused("x must be a finite number >= 1, got 0.5", checks.check_number, "x", 0.5, minimum=1)
    refused("x must be a finite number >= 0 and <= 2, got 2.5", checks.check_number, "x", 2.5, minimum=0, maximum=2)
    for bad in (True, math.nan, math.inf, -math.inf, "3", None):
        refused(f"got {bad!r}", checks.check_number, "x", bad, minimum=-10)


def test_check_int():
    assert checks.check_int("n", 5, minimum=1) == 5 and checks.check_int("n", np.int64(1), minimum=1) == 1
    assert checks.check_int("n", 9, minimum=1, maximum=9) == 9
    for bad in (True, 2.0, "3", None):
        refused(f"n must be an integer, got {bad!r}", checks.check_int, "n", bad, minimum=0)
    refused("n must be >= 1, got 0", checks.check_int, "n", 0, minimum=1)
    refused("n must be between 1 and 9, got 10", checks.check_int, "n", 10, minimum=1, maximum=9)
    refused("n must be between 1 and 9, got 0", checks.check_int, "n", 0, minimum=1, maximum=9)


def test_check_text_names_the_character():
    checks.check_text("p", "techno ünd 音楽")
    refused("p is not valid Unicode at character 7 ('\\udcff\\udcfe'): was it typed in a non-UTF-8 locale? "
            "Re-encode it as UTF-8", checks.check_text, "p", "techno \udcff\udcfeok")


def test_check_prompt():
    assert checks.check_prompt("a") == 1 and checks.check_prompt(["a", "b"]) == 2
    for bad in (3, [], ["a", 3], ("a",), None):
        refused(f"prompt must be a string or a non-empty list of strings, got {type(bad).__name__}",
                checks.check_prompt, bad)
    refused("negative must be a string", checks.check_prompt, 3, "negative")
    refused("prompt is empty or only whitespace", checks.check_prompt, " \t")
    refused("prompt[1] is empty or only whitespace", checks.check_prompt, ["a", " "])
    refused("prompt is not valid Unicode", checks.check_prompt, "a \ud800")
    refused("prompt[0] is not valid Unicode", checks.check_prompt, ["a \ud800"])


def test_check_embeds():
    assert checks.check_embeds("e", torch.zeros(3, 8)) == 3
    refused("e must be a (batch, width) tensor, got list", checks.check_embeds, "e", [[0.0]])
    refused("e must be a (batch, width) tensor, got (1, 2, 3)", checks.check_embeds, "e", torch.zeros(1, 2, 3))
    refused("e has no rows", checks.check_embeds, "e", torch.zeros(0, 8))
    refused("e must hold finite floating-point values", checks.check_embeds, "e", torch.zeros(1, 8, dtype=torch.long))
    refused("e must hold finite floating-point values", checks.check_embeds, "e", torch.tensor([[0.0, math.inf]]))


def test_check_attention_kwargs():
    checks.check_attention_kwargs(None)
    checks.check_attention_kwargs({"scale": 0.3})
    refused("cross_attention_kwargs must be a dict or None, got 'scale'", checks.check_attention_kwargs, "scale")
    refused("cross_attention_kwargs: unsupported key(s) ['a', 'b']; only 'scale' (a LoRA weight, which has no effect "
            "without LoRA layers) is accepted", checks.check_attention_kwargs, {"b": 1, "scale": 1, "a": 2})


def check_prompts(**kwargs) -> int:
    return flagged(checks.check_prompts)(Options(**kwargs))


def test_check_prompts():
    e2, e1 = torch.zeros(2, 8), torch.zeros(1, 8)
    assert check_prompts(prompt=["a", "b"], negative_prompt=["x", "y"]) == 2
    assert check_prompts(prompt_embeds=e2, negative_prompt_embeds=e2) == 2
    assert check_prompts(prompt="a", negative_prompt_embeds=e1) == 1
    assert check_prompts(prompt_embeds=e2, negative_prompt=["x", "y"]) == 2  # looser than diffusers, and right
    refused("give either prompt or prompt_embeds, not both", check_prompts, prompt="a", prompt_embeds=e1)
    refused("give prompt (a string or a list of strings) or prompt_embeds", check_prompts)
    refused("give either negative_prompt or negative_prompt_embeds, not both", check_prompts, prompt="a",
            negative_prompt="x", negative_prompt_embeds=e1)
    refused("--negative must have the same type as prompt (list), got str", check_prompts, prompt=["a"],
            negative_prompt="x", error=TypeError)
    refused("--negative must be a string or a list of strings, got list", check_prompts, prompt_embeds=e1,
            negative_prompt=[3])
    refused("--negative must be a string or a list of strings, got int", check_prompts, prompt_embeds=e1,
            negative_prompt=3)
    refused("--negative has 1 entries but prompt has 2", check_prompts, prompt=["a", "b"], negative_prompt=["x"])
    refused("--negative is not valid Unicode at character 2", check_prompts, prompt="a", negative_prompt="x \udcff")
    refused("--negative[1] is not valid Unicode", check_prompts, prompt=["a", "b"], negative_prompt=["x", "\udcff"])
    refused("prompt_embeds has no rows", check_prompts, prompt_embeds=torch.zeros(0, 8))
    refused("negative_prompt_embeds has no rows", check_prompts, prompt="a", negative_prompt_embeds=torch.zeros(0, 8))
    refused("prompt_embeds (2, 8) and negative_prompt_embeds (2, 9) must have the same shape", check_prompts,
            prompt_embeds=e2, negative_prompt_embeds=torch.zeros(2, 9))
    refused("negative_prompt_embeds has 2 rows but there are 1 prompts", check_prompts, prompt="a",
            negative_prompt_embeds=e2)


def check_noise(prompts: int = 2, **kwargs) -> None:
    checks.check_noise(Options(prompt=["a"] * prompts, num_waveforms_per_prompt=3, **kwargs), prompts)


def test_check_noise():
    gens = lambda n: [torch.Generator() for _ in range(n)]  # noqa: E731
    for n in (1, 2, 6):  # one, one per prompt, one per take
        check_noise(generator=gens(n))
    check_noise(generator=torch.Generator())
    check_noise(latents=torch.zeros(6, 8, 25, 16))
    refused("generator: a list of 3 generators for 6 takes (2 prompts x 3); give one, one per prompt or one per take",
            check_noise, generator=gens(3))
    refused("generator must be a torch.Generator or a list of them", check_noise, generator=[torch.Generator(), 1])
    refused("generator must be a torch.Generator or a list of them, got int", check_noise, generator=5)
    refused("latents must be a torch.Tensor, got ndarray", check_noise, latents=np.zeros((6, 8, 25, 16)))
    refused("latents must be a floating-point tensor, got torch.int64", check_noise,
            latents=torch.zeros(6, 8, 25, 16, dtype=torch.long))
    refused("latents contains NaN or infinite values", check_noise, latents=torch.full((6, 8, 25, 16), math.nan))


def check_edit(**kwargs) -> None:
    flagged(checks.check_edit)(replace(OK, **kwargs))


def test_check_edit():
    wave = np.ones(1600, "float32")
    check_edit(loop=True)
    check_edit(loop=True, window="windowed")
    for edit in (dict(strength=0), dict(strength=1), dict(inpaint=(0.1, 0.2)), dict(inpaint=[0, 1]), dict(extend=2)):
        check_edit(audio=wave, **edit)
    refused("--loop needs the windowed path (circular windows); not window='whole'", check_edit, loop=True,
            window="whole")
    for name, value, flag in (("strength", 0.5, "--strength"), ("inpaint", (0, 1), "--inpaint"),
                              ("extend", 1.0, "--extend")):
        refused(f"{flag} needs an input: give --input", check_edit, **{name: value})
    refused("give one of --strength, --inpaint or --extend, not several", check_edit, audio=wave, strength=0.5,
            extend=1.0)
    refused("--loop cannot be used with --input: the input sets the length", check_edit, audio=wave, loop=True)
    refused("--seconds cannot be used with --input", check_edit, audio=wave, audio_length_in_s=2.0)
    refused("--strength must be a finite number >= 0 and <= 1, got 1.5", check_edit, audio=wave, strength=1.5)
    refused("--extend must be a finite number > 0, got 0", check_edit, audio=wave, extend=0)
    for span in ((1.0,), (0, 1, 2), "0-1", (True, 2), (0, math.nan), (0, "1"), 3.0):
        refused(f"--inpaint must be a span (start, end) in seconds, got {span!r}", check_edit, audio=wave,
                inpaint=span)


# ---------------------------------------------------------------------------------------------
# read_input: the input read once, its span checked against its length
# ---------------------------------------------------------------------------------------------


def test_read_input_resamples_to_16_khz_and_reports_it():
    assert read_input(OK) is None
    seen = []
    o = replace(OK, audio=sine(0.5, 8000), audio_sampling_rate=8000, progress=lambda *a: seen.append(a))
    wave = read_input(o)
    assert wave.shape == (8000,) and wave.dtype == torch.float32
    assert seen and {s for s, _, _ in seen} == {"reading the input"} and seen[-1][1] == seen[-1][2]
    same = read_input(replace(o, audio=sine(0.5, 16000), audio_sampling_rate=16000, progress=None))
    torch.testing.assert_close(same, torch.from_numpy(sine(0.5, 16000)), rtol=0, atol=1e-6)


def test_read_input_names_the_input_and_checks_its_length_and_span():
    o = replace(OK, audio=sine(0.5, 16000), audio_sampling_rate=16000)
    refused("--input: an array needs its sampling rate", flagged(read_input), replace(o, audio_sampling_rate=None))
    refused("audio: the sampling rate must be a whole number of Hz", read_input, replace(o, audio_sampling_rate=10))
    refused("--input is 30.0 ms long; it must be at least 40 ms", flagged(read_input),
            replace(o, audio=sine(0.03, 16000)))
    assert read_input(replace(o, audio=sine(0.04, 16000))).shape == (640,)
    assert read_input(replace(o, inpaint=(0, 0.5))).shape == (8000,)  # the whole input may be regenerated
    for span in ((0.2, 0.2), (-0.1, 0.2), (0.3, 0.2), (0.2, 0.51)):
        refused(f"--inpaint must be a span (start, end) in seconds with 0 <= start < end <= 0.50 (the input's "
                f"length), got {span!r}", flagged(read_input), replace(o, inpaint=span))


# ---------------------------------------------------------------------------------------------
# plan: what only the checkpoint can tell
# ---------------------------------------------------------------------------------------------


def planned(o: Options = OK, geometry: Geometry = GEOMETRY, scheduler: Scheduler = None, wave=None,
            width=None, flags=True) -> opt.Run:
    """plan(o, ...), its errors in the command line's words (flags=False: in pipe()'s)."""
    return (flagged(plan) if flags else plan)(o, o.check(), geometry, scheduler or ddim(), wave, width)


def test_plan_of_the_default_length():
    s = ddim()
    run = planned(replace(OK, prompt=["a", "b"], num_waveforms_per_prompt=3, num_inference_steps=7), scheduler=s)
    assert (run.takes, run.seconds, run.frames, run.windowed, run.wave, run.input_frames) == (6, 10.24, 1024, False,
                                                                                             None, 0)
    assert run.scheduler is s and run.sampling.steps == 7
    assert torch.equal(run.sampling.timesteps, s.timesteps(7).timesteps)


def test_plan_rounds_a_length_up_to_whole_latent_frames():
    run = planned(replace(OK, audio_length_in_s=1.005))
    assert (run.frames, run.seconds) == (100, 1.005)  # the reference trims the audio back to the length asked
    assert planned(replace(OK, audio_length_in_s=1.01)).frames == 104
    loop = planned(replace(OK, audio_length_in_s=1.01, loop=True))
    assert (loop.frames, loop.seconds, loop.windowed) == (104, 1.04, True)  # a loop keeps whole frames: no trim


def test_plan_refuses_what_the_checkpoint_cannot_take():
    refused("--seconds must be at least 0.04 s (one latent frame), got 0.01", planned,
            replace(OK, audio_length_in_s=0.01))
    assert planned(replace(OK, audio_length_in_s=GEOMETRY.min_seconds)).frames == 4  # one latent frame: allowed
    refused("the vocoder's 62 mel bins are not divisible by the VAE scale factor 4", planned,
            geometry=replace(GEOMETRY, mel_bins=62))
    refused("audio_length_in_s must be given: unet/config.json has no sample_size", planned,
            geometry=replace(GEOMETRY, sample_size=None))
    refused("prompt_embeds must be a (batch, 32) tensor, got (1, 31)", planned,
            Options(prompt_embeds=torch.zeros(1, 31)), width=32)
    refused("negative_prompt_embeds must be a (batch, 32) tensor, got (1, 31)", planned,
            replace(OK, negative_prompt_embeds=torch.zeros(1, 31)), width=32)
    assert planned(Options(prompt_embeds=torch.zeros(1, 31)), width=None).takes == 1  # None: any width
    refused("latents has shape (2, 8, 25, 16), expected (2, 8, 26, 16) for 2 takes of 1.04 s", planned,
            replace(OK, num_waveforms_per_prompt=2, audio_length_in_s=1.04, latents=torch.zeros(2, 8, 25, 16)))
    assert planned(replace(OK, audio_length_in_s=1.0, latents=torch.zeros(1, 8, 25, 16))).frames == 100


@pytest.mark.parametrize("window, seconds, windowed", [
    (None, 20.0, False), ("whole", 20.0, False), ("windowed", 1.0, True), ("auto", 10.24, False),
    ("auto", 10.28, True)])
def test_plan_chooses_the_windowed_path(window, seconds, windowed):
    assert planned(replace(OK, window=window, audio_length_in_s=seconds)).windowed is windowed


def test_plan_without_a_trained_length_never_windows_on_auto():
    g = replace(GEOMETRY, sample_size=None)
    assert not planned(replace(OK, window="auto", audio_length_in_s=30.0), geometry=g).windowed


def test_plan_of_an_input_takes_its_length():
    wave = torch.ones(8100)  # 0.50625 s: 50.6 mel frames -> 52 (whole latent frames)
    o = replace(OK, audio=np.ones(1), audio_sampling_rate=16000)
    run = planned(o, wave=wave)
    assert (run.seconds, run.frames, run.input_frames, run.windowed) == (0.50625, 52, 52, False)
    assert run.wave is wave
    longer = planned(replace(o, extend=0.5), wave=wave)
    assert (longer.seconds, longer.frames, longer.input_frames) == (1.00625, 100, 52)
    assert planned(o, wave=torch.ones(16000 * 11)).windowed  # "auto" is the input's default: windows past 10.24 s
    assert not planned(replace(o, window="whole"), wave=torch.ones(16000 * 11)).windowed
    refused("audio-to-audio reads its input at MusicLDM's 16000 Hz; this checkpoint's vocoder is at 22050 Hz",
            planned, o, geometry=replace(GEOMETRY, sampling_rate=22050), wave=wave)
    refused("audio-to-audio starts part way down the schedule, which PNDM's warm-up cannot; use another sampler "
            "(ddim, the default, or lms, euler, heun, dpmsolver++)", planned, o,
            scheduler=Scheduler.from_config(PUBLISHED, "pndm"), wave=wave)


def test_plan_checks_the_step_count_with_the_sampler():
    message = refused("--steps=1000", planned, replace(OK, num_inference_steps=1000))  # in the caller's words
    assert re.search(r"outside 0\.\.999", message) and "num_inference_steps" not in message
    assert refused("num_inference_steps=1000", planned, replace(OK, num_inference_steps=1000), flags=False)
