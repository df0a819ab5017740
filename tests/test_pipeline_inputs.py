"""Bad input gets a clear error naming the problem, before any model runs."""

from __future__ import annotations

import math
import re

import pytest
import torch

from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.samplers import SAMPLERS


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    p = MusicLDMPipeline.from_pretrained(tiny_ckpt)

    def heavy(*args, **kwargs):
        raise AssertionError("a model ran before the inputs were checked")

    for module in p.components.values():
        module.forward = heavy
    return p


GOOD = dict(prompt="calm piano", num_inference_steps=3, audio_length_in_s=1.0)
LAT = torch.zeros(1, 8, 25, 16)

CASES = [
    (dict(prompt=""), ValueError, "prompt is empty or only whitespace"),
    (dict(prompt=["ok", "  \t"]), ValueError, r"prompt\[1\] is empty"),
    (dict(prompt=[]), ValueError, "non-empty list of strings"),
    (dict(prompt=3), ValueError, "prompt must be a string or a non-empty list"),
    (dict(prompt=None), ValueError, "give prompt .* or prompt_embeds"),
    (dict(prompt_embeds=torch.zeros(1, 32)), ValueError, "either prompt or prompt_embeds, not both"),
    (dict(audio_length_in_s=0), ValueError, "audio_length_in_s must be a finite number > 0"),
    (dict(audio_length_in_s=-2.0), ValueError, "audio_length_in_s must be a finite number > 0"),
    (dict(audio_length_in_s=math.nan), ValueError, "audio_length_in_s"),
    (dict(audio_length_in_s=math.inf), ValueError, "audio_length_in_s"),
    (dict(audio_length_in_s=0.01), ValueError, r"audio_length_in_s must be at least 0.04 s"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps must be >= 1, got 0"),
    (dict(num_inference_steps=-1), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=2.5), ValueError, "num_inference_steps must be an integer"),
    (dict(num_inference_steps=1000), ValueError, "gives timesteps outside 0..999"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale must be a finite number >= 0"),
    (dict(guidance_scale=math.nan), ValueError, "guidance_scale"),
    (dict(num_waveforms_per_prompt=0), ValueError, "num_waveforms_per_prompt must be >= 1"),
    (dict(eta=-0.1), ValueError, "eta must be"),
    (dict(callback_steps=0), ValueError, "callback_steps must be >= 1"),
    (dict(callback_steps=None), ValueError, "callback_steps must be an integer"),
    (dict(output_type="wav"), ValueError, "output_type must be 'np', 'pt' or 'latent'"),
    (dict(negative_prompt=["a", "b"]), TypeError, "negative_prompt must have the same type as prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), ValueError, "negative_prompt has 1 entries but prompt has 2"),
    (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 32)), ValueError,
     "either negative_prompt or negative_prompt_embeds"),
    (dict(prompt=None, prompt_embeds=torch.zeros(2, 32), negative_prompt_embeds=torch.zeros(1, 32)), ValueError,
     "must have the same shape"),
    (dict(prompt=None, prompt_embeds=torch.zeros(2, 31)), ValueError, r"prompt_embeds must be a \(batch, 32\) tensor"),
    (dict(prompt=None, prompt_embeds=torch.full((1, 32), math.nan)), ValueError, "finite"),
    (dict(generator=[torch.Generator(), torch.Generator(), torch.Generator()]), ValueError,
     "a list of 3 generators for 1 takes"),
    (dict(generator="seed"), ValueError, "generator must be a torch.Generator"),
    (dict(latents=torch.zeros(1, 8, 24, 16)), ValueError, r"latents has shape \(1, 8, 24, 16\), expected \(1, 8, 25, 16\)"),
    (dict(latents=LAT.long()), ValueError, "latents must be a floating-point tensor"),
    (dict(latents=LAT + math.inf), ValueError, "latents contains NaN or infinite values"),
    (dict(cross_attention_kwargs={"gligen": 1}), ValueError, r"cross_attention_kwargs: unsupported key\(s\) \['gligen'\]"),
    (dict(crop="middle"), ValueError, "crop must be"),
    (dict(return_dict="no"), ValueError, "return_dict must be True or False, got 'no'"),
    (dict(eta=1.5), ValueError, r"eta must be a finite number >= 0 and <= 1, got 1.5"),
    (dict(callback=5), ValueError, "callback must be a function"),
    (dict(progress="bar"), ValueError, "progress must be a function"),
    (dict(cross_attention_kwargs="scale"), ValueError, "cross_attention_kwargs must be a dict or None"),
    (dict(prompt=None, prompt_embeds=torch.zeros(0, 32)), ValueError, "prompt_embeds has no rows"),
    (dict(prompt="techno \udcff\udcfe"), ValueError, r"prompt is not valid Unicode at character 7"),
    (dict(prompt=["ok", "bad \ud800"]), ValueError, r"prompt\[1\] is not valid Unicode"),
    (dict(negative_prompt="x \udcff"), ValueError, "negative_prompt is not valid Unicode"),
    (dict(audio_length_in_s=1e9), ValueError, r"1 take\(s\) of 1e\+09 s need about .* GiB of memory in the .*GiB "
                                                r"is available on cpu"),
    (dict(num_waveforms_per_prompt=1_000_000), ValueError, r"1000000 take\(s\) of 1 s need about .* GiB"),
]


@pytest.mark.parametrize("override, error, message", CASES)
def test_bad_input(pipe, override, error, message):
    with pytest.raises(error, match=message):
        pipe(**{**GOOD, **override})


def test_lora_scale_is_accepted_and_has_no_effect(tiny_ckpt):
    """diffusers reads cross_attention_kwargs["scale"] only as a LoRA weight: without LoRA, no effect."""
    p = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    kw = dict(GOOD, output_type="latent", guidance_scale=2.5)
    a = p(**kw, generator=torch.Generator().manual_seed(0)).audios
    b = p(**kw, cross_attention_kwargs={"scale": 0.3}, generator=torch.Generator().manual_seed(0)).audios
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="dpm3"), "unknown sampler 'dpm3'"),
    (dict(device="toaster"), "device: unknown device 'toaster'"),
    (dict(device="cuda:7"), "device: 'cuda:7' requested but"),
    (dict(dtype="float64"), "dtype: 'float64' is not supported"),
    (dict(dtype="float16", torch_dtype="bfloat16"), "disagree"),
])
def test_bad_load_arguments(tiny_ckpt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MusicLDMPipeline.from_pretrained(tiny_ckpt, **kwargs)


def test_load_options(tiny_ckpt):
    p = MusicLDMPipeline.from_pretrained(str(tiny_ckpt), torch_dtype=torch.bfloat16, scheduler="heun")
    assert p.dtype == torch.bfloat16 and p.scheduler.name == "heun" and p.sampling_rate == 16000
    assert p.vocoder.conv_pre.weight.dtype == torch.float32  # the precision policy: the vocoder stays float32
    p.to(dtype=torch.float32)
    assert p.dtype == torch.float32
    for name in ("tokenizer", "text_encoder", "unet", "vae", "vocoder", "scheduler", "feature_extractor"):
        assert getattr(p, name) is not None


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_generation_in_every_sampler_and_slicing(tiny_ckpt, name):
    p = MusicLDMPipeline.from_pretrained(tiny_ckpt, scheduler=name)
    calls = []
    out = p(["a", "b"], num_inference_steps=3, audio_length_in_s=0.5, callback=lambda i, t, x: calls.append(i),
            generator=torch.Generator().manual_seed(0)).audios
    assert out.shape == (2, 8000) and len(calls) == 3
    p.enable_vae_slicing()
    sliced = p(["a", "b"], num_inference_steps=3, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(sliced.audios - out).max() < 1e-5


def test_low_memory_and_offload_give_the_same_audio(tiny_ckpt):
    p = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    kw = dict(prompt="calm piano", num_inference_steps=3, audio_length_in_s=0.5, guidance_scale=2.5)
    a = p(**kw, generator=torch.Generator().manual_seed(0)).audios
    p.enable_low_memory()
    b = p(**kw, generator=torch.Generator().manual_seed(0)).audios
    p.enable_model_cpu_offload("cpu")  # the offload path, on the one device this machine has
    c = p(**kw, generator=torch.Generator().manual_seed(0)).audios
    assert (a == b).all() and (a == c).all()


def _copy(tiny_ckpt, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


def _edit_weights(path, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_a_nan_weight_is_named_not_written(tiny_ckpt, tmp_path):
    from musicldm_core.errors import DamagedOutputError

    folder = _copy(tiny_ckpt, tmp_path)
    _edit_weights(folder / "unet" / "diffusion_pytorch_model.safetensors",
                  lambda s: s["conv_in.weight"].view(-1).__setitem__(0, float("nan")))
    pipe = MusicLDMPipeline.from_pretrained(folder)
    with pytest.raises(DamagedOutputError, match=r"the denoised latents contain NaN or infinite values: a damaged "
                                             r"\(NaN or infinite\) weight in unet/"):
        pipe("calm piano", num_inference_steps=2, audio_length_in_s=0.1)


def test_an_integer_weight_is_named(tiny_ckpt, tmp_path):
    from musicldm_core.errors import CheckpointError

    folder = _copy(tiny_ckpt, tmp_path)
    _edit_weights(folder / "vocoder" / "model.safetensors", lambda s: s.__setitem__("conv_pre.bias", s["conv_pre.bias"].long()))
    with pytest.raises(CheckpointError) as e:
        MusicLDMPipeline.from_pretrained(folder)
    first = str(e.value).splitlines()[0]  # the command line shows only the first line: key and file are on it
    assert re.fullmatch(r".*vocoder: weight 'conv_pre.bias' is torch.int64 in .*vocoder/model.safetensors, where the "
                        r"model needs floating-point values", first), first


def test_no_limit_model_max_length(tiny_ckpt, tmp_path):
    """transformers writes int(1e30) for "no limit": no truncation, instead of an overflow."""
    import json

    from musicldm_core.tokenizer import ClapTokenizer

    folder = _copy(tiny_ckpt, tmp_path)
    path = folder / "tokenizer" / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": 1000000000000000019884624838656}))
    tok = ClapTokenizer.from_pretrained(folder / "tokenizer")
    assert tok.model_max_length is None
    ids, _ = tok(["calm piano " * 300], pad_to_max_length=False)
    assert ids.shape[1] > 512  # not truncated
    assert MusicLDMPipeline.from_pretrained(folder)("calm piano", num_inference_steps=2,
                                                    audio_length_in_s=0.1).audios.shape == (1, 1600)


def test_prk_needs_four_steps(tiny_ckpt):
    """diffusers fails with a numpy broadcasting error there; we say what is wrong."""
    import json

    from musicldm_core.samplers import Scheduler

    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    config = json.loads((tiny_ckpt / "scheduler" / "scheduler_config.json").read_text())
    pipe.scheduler = Scheduler.from_config({**config, "_class_name": "PNDMScheduler", "skip_prk_steps": False})
    with pytest.raises(ValueError, match=r"num_inference_steps=3: PNDM with Runge-Kutta warm-up steps .* at least 4"):
        pipe("calm piano", num_inference_steps=3)


def test_from_pretrained_without_a_source():
    from musicldm_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="source: expected a checkpoint folder or a Hub repo id"):
        MusicLDMPipeline.from_pretrained(None)


def test_a_saturated_vocoder_is_named(tiny_ckpt, tmp_path):
    """An infinite output bias makes tanh put out a constant, not NaN: still refused, by stage."""
    from musicldm_core.errors import DamagedOutputError

    folder = _copy(tiny_ckpt, tmp_path)
    _edit_weights(folder / "vocoder" / "model.safetensors", lambda s: s["conv_post.bias"].fill_(float("inf")))
    with pytest.raises(DamagedOutputError, match="the waveform of a take is constant: a damaged weight in vocoder/"):
        MusicLDMPipeline.from_pretrained(folder)("calm piano", num_inference_steps=2, audio_length_in_s=0.1)


def test_a_whole_latent_too_large_names_both_ways_out(tiny_ckpt, monkeypatch):
    """The default (the reference's whole latent) refused for memory names shorter audio and the windowed path,
    which fits; asked for by name, the windowed path passes the check."""
    from musicldm_core import placement
    from musicldm_core.options import Options

    monkeypatch.setattr(placement, "available_memory", lambda device: 2**29)  # 0.5 GiB
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    with pytest.raises(ValueError, match=r"1 take\(s\) of 300 s need about 0\.9 GiB .* ask for a smaller "
                                         r"num_waveforms_per_prompt or audio_length_in_s, or window=windowed \(the "
                                         r"memory of one window\)$"):
        pipe("rain", audio_length_in_s=300.0)
    assert pipe.plan(Options(prompt="rain", audio_length_in_s=300.0, window="windowed")).windowed
    with pytest.raises(ValueError, match=r"or audio_length_in_s$"):  # an hour does not fit in windows either
        pipe("rain", audio_length_in_s=3600.0 * 20)
