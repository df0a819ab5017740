"""Inputs: what diffusers refuses we refuse, before any model runs; where we are looser, we are right.

Every case in REFUSED is run through the reference (which must fail: a case it accepts does not
belong here) and through ours, whose models are replaced by tripwires so the error provably comes
from the input checks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_close, reference_pipeline, reference_scheduler
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.samplers import SAMPLERS


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    return reference_pipeline(tiny_ckpt)


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    return MusicLDMPipeline.from_pretrained(tiny_ckpt)


def _embeds(rows: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


BASE = dict(num_inference_steps=2, audio_length_in_s=0.08)
REFUSED = {
    "audio_length_in_s below one latent frame": dict(prompt="a", audio_length_in_s=0.01),
    "callback_steps 0": dict(prompt="a", callback_steps=0),
    "callback_steps None": dict(prompt="a", callback_steps=None),
    "callback_steps 1.5": dict(prompt="a", callback_steps=1.5),
    "prompt and prompt_embeds": dict(prompt="a", prompt_embeds=_embeds(1)),
    "neither prompt nor prompt_embeds": dict(),
    "prompt of a wrong type": dict(prompt=5),
    "prompt list with a non-string": dict(prompt=["a", 3]),
    "negative_prompt and negative_prompt_embeds": dict(prompt="a", negative_prompt="b",
                                                       negative_prompt_embeds=_embeds(1)),
    "embeds of different shapes": dict(prompt_embeds=_embeds(2), negative_prompt_embeds=_embeds(1)),
    "negative_prompt list for a string prompt": dict(prompt="a", negative_prompt=["b"]),
    "negative_prompt string for a list prompt": dict(prompt=["a", "b"], negative_prompt="c"),
    "negative_prompt of the wrong length": dict(prompt=["a", "b"], negative_prompt=["c"]),
    "negative_prompt of a wrong type": dict(prompt="a", negative_prompt=5),
    "negative_prompt_embeds rows differ from the prompts": dict(prompt="a", negative_prompt_embeds=_embeds(2)),
    "generator list of the wrong length": dict(prompt=["a", "b", "c"], generator=[torch.Generator()] * 2),
    "zero steps": dict(prompt="a", num_inference_steps=0),
    "prompt_embeds of one dimension": dict(prompt_embeds=_embeds(1)[0]),
    "prompt_embeds of the wrong width": dict(prompt_embeds=_embeds(2, dim=16)),
    "empty prompt list": dict(prompt=[]),
    "zero takes": dict(prompt="a", num_waveforms_per_prompt=0),
}


def _tripwire(*args, **kwargs):
    raise AssertionError("a model ran before the inputs were checked")


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_like_the_reference(case, reference, ours, monkeypatch):
    kw = {**BASE, **REFUSED[case]}
    with pytest.raises(Exception) as ref_error:
        reference(**kw)
    assert not isinstance(ref_error.value, AssertionError)
    for module in (ours.unet, ours.vae, ours.vocoder, ours.text_encoder.text, ours.text_encoder.audio):
        monkeypatch.setattr(module, "forward", _tripwire)
    with pytest.raises((ValueError, TypeError)) as e:
        ours(**kw)
    message = str(e.value)
    assert message and "\n" not in message
    print(f"[input] {case}: reference {type(ref_error.value).__name__}; ours: {message}")


def _run(pipe, **kw):
    np.random.seed(0)
    return pipe(**{**BASE, "num_inference_steps": 3}, **kw).audios


def test_looser_prompt_embeds_with_a_negative_prompt(reference, ours):
    """diffusers refuses a negative_prompt beside prompt_embeds (a TypeError); we use it for every row,
    which is the reference run with those negative prompts' embeddings."""
    embeds = _embeds(2, seed=3)
    neg = ours.encode_prompt(["quiet", "quiet"], None, torch.device("cpu"), max_length=embeds.shape[1])
    b = _run(ours, prompt_embeds=embeds, negative_prompt="quiet", generator=torch.Generator().manual_seed(1))
    a = _run(reference, prompt_embeds=embeds, negative_prompt_embeds=neg, generator=torch.Generator().manual_seed(1))
    assert_close(b, a, 1e-4, "prompt_embeds + negative_prompt string vs reference with its embeddings")


def test_looser_list_of_one_generator(reference, ours):
    """diffusers refuses a list of one generator for a batch of two; we use it as the generator."""
    b = _run(ours, prompt=["a", "b"], generator=[torch.Generator().manual_seed(5)])
    a = _run(reference, prompt=["a", "b"], generator=torch.Generator().manual_seed(5))
    assert_close(b, a, 1e-4, "a list of one generator vs the generator")


def test_no_sample_size_needs_a_length(tiny_ckpt, tmp_path):
    import json
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    del config["sample_size"]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    pipe = MusicLDMPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="audio_length_in_s must be given: unet/config.json has no sample_size"):
        pipe("a", num_inference_steps=2)
    assert pipe("a", num_inference_steps=2, audio_length_in_s=0.04).audios.shape == (1, 640)


@pytest.mark.parametrize("guidance, batch", [(1.0, 1), (0.5, 1), (1.01, 2)])
def test_guidance_runs_the_unet_as_the_reference(ours, guidance, batch, monkeypatch):
    """diffusers guides only when guidance_scale > 1: at 1.0 one UNet row per take, not two."""
    calls = []
    forward = ours.unet.forward
    monkeypatch.setattr(ours.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    ours("a", num_inference_steps=2, audio_length_in_s=0.08, guidance_scale=guidance)
    assert calls == [batch, batch]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callbacks_and_audio_for_every_sampler(reference, tiny_ckpt, name):
    """The callback's (step index, timestep) pairs and the audio, against diffusers, sampler by sampler
    (Heun's two evaluations per step report i // order, as the reference's loop does)."""
    reference.scheduler = reference_scheduler(tiny_ckpt, name)
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt, scheduler=name)
    calls_ref, calls = [], []
    kw = dict(prompt="a", num_inference_steps=4, audio_length_in_s=0.2, guidance_scale=2.0, callback_steps=1)
    a = reference(**kw, generator=torch.Generator().manual_seed(2),
                  callback=lambda i, t, x: calls_ref.append((i, float(t)))).audios
    b = pipe(**kw, generator=torch.Generator().manual_seed(2), callback=lambda i, t, x: calls.append((i, float(t)))).audios
    reference.scheduler = reference_scheduler(tiny_ckpt, "ddim")
    assert calls == calls_ref
    assert_close(b, a, 1e-4, f"pipeline {name}, 4 steps")
