"""diffusers' own MusicLDM fast-test components, in every scenario of its test file.

diffusers' tests/pipelines/musicldm/test_musicldm.py builds tiny components that differ from the
published ones in ways that matter: a 2-block UNet with 4 latent channels, a 2-block VAE, an int
`patch_stride`, a 4-channel HTSAT patch embedding fed by the "fusion" feature extractor, an
8-bin vocoder, and a DDIM config with steps_offset 0. The fixture saves exactly those (see
reference_checkpoints.py); each scenario runs diffusers live and ours on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler
from transformers import SpeechT5HifiGan

import reference_checkpoints
from helpers import assert_close, assert_detects, reference_pipeline
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.samplers import Scheduler
from musicldm_core.vocoder import HifiGan

RTOL = 1e-4
PROMPT = "A hammer hitting a wooden surface"


@pytest.fixture(scope="module")
def folder():
    return reference_checkpoints.checkpoint("fasttest")


@pytest.fixture()
def pipes(folder):
    return reference_pipeline(folder), MusicLDMPipeline.from_pretrained(folder)


def _both(ref, ours, seed=0, **kw):
    """The same call to both pipelines, default arguments and all (the drop-in promise)."""
    np.random.seed(0)
    a = ref(**kw, generator=torch.Generator().manual_seed(seed)).audios
    np.random.seed(0)
    b = ours(**kw, generator=torch.Generator().manual_seed(seed)).audios
    return b, a


def _plms(ref, ours):
    """The scenarios' `PNDMScheduler(skip_prk_steps=True)`: PNDM's own defaults, not the checkpoint's."""
    ref.scheduler = PNDMScheduler(skip_prk_steps=True)
    ours.scheduler = Scheduler.from_config({**ref.scheduler.config, "_class_name": "PNDMScheduler"})


@pytest.mark.parametrize("steps", [2, 4])
def test_musicldm_ddim(pipes, steps):
    b, a = _both(*pipes, prompt=PROMPT, num_inference_steps=steps, guidance_scale=6.0)
    assert b.shape == a.shape == (1, 256)
    assert_close(b, a, RTOL, f"fast-test ddim {steps} steps")


def _embeds(ref, prompts):
    ids = ref.tokenizer(prompts, padding="max_length", max_length=ref.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        return ref.text_encoder.get_text_features(ids)


def test_musicldm_prompt_embeds(pipes):
    ref, ours = pipes
    b, a = _both(ref, ours, prompt=[PROMPT] * 3, num_inference_steps=3, guidance_scale=6.0)
    assert_close(b, a, RTOL, "fast-test 3 prompts")
    embeds = _embeds(ref, [PROMPT] * 3)
    b, a = _both(ref, ours, prompt_embeds=embeds, num_inference_steps=3, guidance_scale=6.0)
    assert b.shape == (3, 256)
    assert_close(b, a, RTOL, "fast-test prompt_embeds")


def test_musicldm_negative_prompt_embeds(pipes):
    ref, ours = pipes
    negative = ["this is a negative prompt"] * 3
    b, a = _both(ref, ours, prompt=[PROMPT] * 3, negative_prompt=negative, num_inference_steps=3,
                 guidance_scale=6.0)
    assert_close(b, a, RTOL, "fast-test negative prompts")
    b, a = _both(ref, ours, prompt_embeds=_embeds(ref, [PROMPT] * 3), negative_prompt_embeds=_embeds(ref, negative),
                 num_inference_steps=3, guidance_scale=6.0)
    assert_close(b, a, RTOL, "fast-test negative_prompt_embeds")


def test_musicldm_negative_prompt(pipes):
    ref, ours = pipes
    _plms(ref, ours)
    b, a = _both(ref, ours, prompt=PROMPT, negative_prompt="egg cracking", num_inference_steps=3, guidance_scale=6.0)
    assert b.shape == (1, 256)
    assert_close(b, a, RTOL, "fast-test PLMS negative prompt")


@pytest.mark.parametrize("prompts, takes", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_musicldm_num_waveforms_per_prompt(pipes, prompts, takes):
    """Several takes are ranked by the 4-channel CLAP audio tower on "fusion" features."""
    ref, ours = pipes
    _plms(ref, ours)
    prompt = PROMPT if prompts == 1 else [PROMPT, "a dog barking"]
    b, a = _both(ref, ours, prompt=prompt, num_inference_steps=3, num_waveforms_per_prompt=takes)
    assert b.shape == a.shape == (prompts * takes, 256)
    assert_close(b, a, RTOL, f"fast-test {prompts} prompts x {takes} takes")


@pytest.mark.parametrize("seconds, samples", [(0.016, 256), (0.032, 512)])
def test_musicldm_audio_length_in_s(pipes, seconds, samples):
    """0.032 s is 128 mel frames, past this UNet's sample_size of 32 latent (64 mel) frames: with no
    `window` argument, pipe(...) runs the reference's whole-latent path there too (the drop-in promise);
    the windowed path, asked for by name, is another computation."""
    b, a = _both(*pipes, prompt=PROMPT, num_inference_steps=3, guidance_scale=6.0, audio_length_in_s=seconds)
    assert b.shape == a.shape == (1, samples)
    assert_close(b, a, RTOL, f"fast-test {seconds} s")
    if seconds == 0.032:
        ours = pipes[1](prompt=PROMPT, num_inference_steps=3, guidance_scale=6.0, audio_length_in_s=seconds,
                        generator=torch.Generator().manual_seed(0), window="windowed").audios
        assert_detects(ours, a, RTOL, "fast-test 0.032 s, windowed")


def test_musicldm_vocoder_model_in_dim(pipes, tmp_path):
    """Twice the mel bins: the latent is twice as wide, the waveform as long."""
    ref, ours = pipes
    config = ref.vocoder.config
    config.model_in_dim *= 2
    torch.manual_seed(0)
    ref.vocoder = SpeechT5HifiGan(config).eval()
    ref.vocoder.save_pretrained(tmp_path, safe_serialization=True)
    ours.vocoder = HifiGan.from_pretrained(tmp_path)
    b, a = _both(ref, ours, prompt=["hey"], num_inference_steps=3)
    assert b.shape == a.shape == (1, 256)
    assert_close(b, a, RTOL, "fast-test 16 mel bins")


def test_attention_slicing_forward_pass(pipes):
    ref, ours = pipes
    ref.enable_attention_slicing(slice_size=1)
    b, a = _both(ref, ours, prompt=PROMPT, num_inference_steps=3, guidance_scale=6.0)
    assert_close(b, a, RTOL, "fast-test vs reference with attention slicing")


def test_inference_batch_single_identical(pipes):
    """A batch with one generator per prompt gives each prompt what it gets alone (ours and the reference's)."""
    ref, ours = pipes
    prompts = [PROMPT, "a cat", "rain on a roof"]
    kw = dict(num_inference_steps=3, guidance_scale=6.0)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = ours(prompt=prompts, generator=gens, **kw).audios
    batch_ref = ref(prompt=prompts, generator=[torch.Generator().manual_seed(i) for i in range(3)], **kw).audios
    assert_close(batch, batch_ref, RTOL, "fast-test batch of 3 with 3 generators")
    for i, p in enumerate(prompts):
        single = ours(prompt=p, generator=torch.Generator().manual_seed(i), **kw).audios
        assert_close(single[0], batch[i], 1e-5, f"fast-test prompt {i} alone vs in the batch")


def test_to_dtype(folder):
    """pipe.to(float16): the UNet, VAE and CLAP in half precision, the logit scales too; our vocoder keeps
    float32 weights (fp16 overflows in its residual sums, see README)."""
    ours = MusicLDMPipeline.from_pretrained(folder)
    assert {p.dtype for m in ours.components.values() for p in m.parameters()} == {torch.float32}
    ours.to(dtype=torch.float16)
    for name in ("unet", "vae", "text_encoder"):
        assert {p.dtype for p in ours.components[name].parameters()} == {torch.float16}, name
    assert ours.text_encoder.logit_scale_text.dtype == torch.float16
    assert {p.dtype for p in ours.vocoder.parameters()} == {torch.float32}


def test_long_negative_prompt_is_cut_at_the_embedding_width(pipes):
    """The reference tokenizes negative prompts with max_length = prompt_embeds.shape[1] (32 here), not
    the tokenizer's 77: a 60-word negative prompt shows which."""
    negative = " ".join(["noisy distorted low quality muffled"] * 12)
    b, a = _both(*pipes, prompt=PROMPT, negative_prompt=negative, num_inference_steps=3, guidance_scale=6.0)
    assert_close(b, a, RTOL, "fast-test long negative prompt")
