"""Parity with the MusicLDM authors' own code (tests/authors_code.py: audioldm's UNet, autoencoder and
HiFi-GAN, laion-clap's CLAP), on a synthetic release converted by weights_convert.original.

Small shapes for the release files (every convention kept: heads of 32 channels, GroupNorm of 32);
the published shapes for the two places where the layout matters most: the UNet's heads and the text
tower's LayerNorm eps.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import authors_code
from helpers import assert_close, assert_detects, errors
from musicldm_core import MusicLDMPipeline
from musicldm_core.clap import Clap
from musicldm_core.clap_config import ClapConfig
from musicldm_core.unet import UNet
from musicldm_core.names import clap as clap_names, diffusers as diffusers_names
from weights_convert import layouts, original

RTOL = 1e-5


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unet_inputs(channels: int, film: int, frames: int = 32, seed: int = 0):
    g = _g(seed)
    return (torch.randn(2, channels, frames, 16, generator=g), torch.tensor([17, 803]),
            torch.randn(2, film, generator=g))


def _tokens(vocab: int, seed: int = 0):
    """Two prompts' ids as the tokenizer pads them: <s> ... </s> then <pad>, mask 1 on the tokens."""
    g = _g(seed)
    ids = torch.ones(2, 24, dtype=torch.long)
    mask = torch.zeros(2, 24, dtype=torch.long)
    for row, n in enumerate((9, 17)):
        ids[row, 0], ids[row, n - 1] = 0, 2
        ids[row, 1:n - 1] = torch.randint(5, vocab, (n - 2,), generator=g)
        mask[row, :n] = 1
    return ids, mask


def _laion_text(model, ids, mask):
    return model.get_text_embedding({"input_ids": ids.clone(), "attention_mask": mask.clone()})


def _laion_audio(model, mel):
    """laion-clap's audio embedding of a mel: its STFT and mel front end bypassed (ours has its own)."""
    branch = model.audio_branch
    saved = branch.spectrogram_extractor, branch.logmel_extractor
    branch.spectrogram_extractor = branch.logmel_extractor = torch.nn.Identity()
    try:
        return model.get_audio_embedding([{"waveform": m} for m in mel])
    finally:
        branch.spectrogram_extractor, branch.logmel_extractor = saved


@pytest.fixture(scope="module")
def converted(authors_release):
    return MusicLDMPipeline.from_pretrained(authors_release.ema)


def test_unet_equals_the_authors_ema_unet(authors_release, converted):
    m = authors_release.model
    x, t, y = _unet_inputs(8, 32)
    with torch.no_grad():
        assert_close(converted.unet(x, t, y), m.ema(x, t, y=y), RTOL, "unet (EMA) vs the authors'")
        # the trained twin is another network: the EMA choice is visible
        assert_detects(converted.unet(x, t, y), m.unet(x, t, y=y), RTOL, "unet (EMA) vs the authors' non-EMA")


def test_no_ema_converts_the_trained_unet(authors_release):
    m = authors_release.model
    ours = UNet.from_pretrained(authors_release.no_ema / "unet")
    x, t, y = _unet_inputs(8, 32, seed=1)
    with torch.no_grad():
        assert_close(ours(x, t, y), m.unet(x, t, y=y), RTOL, "unet (--no-ema) vs the authors' trained")


def test_vae_encode_and_decode_equal_the_authors(authors_release, converted):
    m = authors_release.model
    g = _g(2)
    z, mel = torch.randn(2, 8, 16, 16, generator=g), torch.randn(2, 1, 64, 64, generator=g)
    with torch.no_grad():
        assert_close(converted.vae.decode(z), m.vae.decode(z), RTOL, "vae decode vs the authors'")
        ours, theirs = converted.vae.encode(mel), m.vae.encode(mel)
        assert_close(ours.mean, theirs.mean, RTOL, "vae encode mean vs the authors'")
        assert_close(ours.logvar, theirs.logvar, RTOL, "vae encode logvar vs the authors'")


def test_vocoder_is_bit_exact_to_the_authors(authors_release, converted):
    mel = torch.randn(2, 64, 40, generator=_g(3))  # (B, mels, frames), the authors' layout
    with torch.no_grad():
        theirs = authors_release.model.plain_vocoder()(mel).squeeze(1)
        ours = converted.vocoder(mel.transpose(1, 2))
    assert_close(ours, theirs, 0.0, "vocoder vs the authors' (same arithmetic)")
    assert torch.equal(ours, theirs)


def test_clap_text_and_audio_equal_laion_clap(authors_release, converted):
    m = authors_release.model
    ids, mask = _tokens(1000)
    mel = torch.randn(2, 1, 1001, 64, generator=_g(4))
    with torch.no_grad():
        assert_close(converted.text_encoder.text_features(ids, mask), _laion_text(m.clap, ids, mask), RTOL,
                     "CLAP text features vs laion-clap")
        assert_close(converted.text_encoder.audio_features(mel), _laion_audio(m.clap, mel), RTOL,
                     "CLAP audio features vs laion-clap")


def test_separate_files_replace_their_components(authors_release, tiny_ckpt, tmp_path):
    """--vae, --vocoder (weight-norm pairs fused) and --clap carry other weights: each replaces its part."""
    r, other = authors_release, authors_release.other
    out = tmp_path / "separate"
    original.convert(r.paths["main"], out, vae=r.paths["vae"], vocoder=r.paths["vocoder"], clap=r.paths["clap"],
                     tokenizer_from=str(tiny_ckpt), log=lambda *a: None)
    pipe = MusicLDMPipeline.from_pretrained(out)
    g = _g(5)
    z, mel = torch.randn(1, 8, 8, 16, generator=g), torch.randn(1, 64, 30, generator=g)
    ids, mask = _tokens(1000, seed=5)
    with torch.no_grad():
        assert_close(pipe.vae.decode(z), other.vae.decode(z), RTOL, "vae from vae-ckpt.ckpt")
        # the authors' generator with its weight norm live (w = g v / |v| at every call)
        assert_close(pipe.vocoder(mel.transpose(1, 2)), other.vocoder(mel).squeeze(1), RTOL,
                     "vocoder from hifigan-ckpt.ckpt (weight norm fused)")
        assert_close(pipe.text_encoder.text_features(ids, mask), _laion_text(other.clap, ids, mask), RTOL,
                     "CLAP from clap-ckpt.pt")
        assert_detects(pipe.vae.decode(z), authors_release.model.vae.decode(z), RTOL, "vae: not the main file's")


def test_weight_norm_fusion_is_detected_when_wrong(authors_release):
    """The fusion matters: taking v alone (the gain dropped) is caught by the vocoder comparison."""
    sd = {k: v for k, v in authors_release.other.vocoder.state_dict().items()}
    fused = layouts.fuse_weight_norm(sd)
    careless = {k[: -len("_v")]: v for k, v in sd.items() if k.endswith("weight_v")}
    key = "conv_pre.weight"
    assert_close(fused[key], authors_release.other.plain_vocoder().state_dict()[key], RTOL, "fused conv_pre")
    assert_detects(careless[key], fused[key], RTOL, "v without its gain")


# --- the published shapes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def authors_unet_on_published_weights(full_ckpt):
    """The authors' UNet (openaimodel, num_head_channels 32) holding the full test checkpoint's weights."""
    theirs = authors_code.unet("full")
    to_published = layouts.unet_key_map(theirs.state_dict())
    published = UNet.from_pretrained(full_ckpt / "unet").state_dict()
    ours_names = {k: diffusers_names.published_to_ours(v) for k, v in to_published.items()}
    theirs.load_state_dict({k: published[ours_names[k]] for k in theirs.state_dict()}, strict=True)
    return theirs


def test_authors_heads_on_the_published_checkpoint(full_ckpt, authors_unet_on_published_weights, monkeypatch):
    """attention_heads="authors" runs the published weights with the heads they were trained with; the
    checkpoint's config (diffusers' conversion, 8 heads everywhere) computes other attention."""
    theirs = authors_unet_on_published_weights
    authors = UNet.from_pretrained(full_ckpt / "unet", attention_heads="authors")
    default = UNet.from_pretrained(full_ckpt / "unet")
    assert authors.config.attention_head_dim == (4, 8, 12, 20)
    assert default.config.attention_head_dim == (8, 8, 8, 8)
    x, t, y = _unet_inputs(8, 512, frames=16, seed=6)
    with torch.no_grad():
        ref = theirs(x, t, y=y)
        assert_close(authors(x, t, y), ref, RTOL, "unet, authors' heads, published shapes")
        _, rel, _ = errors(default(x, t, y), ref)
    print(f"[parity] diffusers' conversion (8 heads) vs the authors' UNet, one forward fp32: rel {rel:.3e}")
    assert rel > 1e-3, f"8 heads should differ from the authors' 4/8/12/20 heads, rel {rel:.3e}"
    # in float64 the authors' heads agree to rounding, and 8 heads still differ: a difference of model, not of
    # arithmetic. (Their UNet computes in float32 whatever its weights: the timestep embedding is built in
    # float32, the input cast to `self.dtype`, GroupNorm32 normalises in float32; here all three follow the
    # weights' dtype.)
    openaimodel = authors_code.modules().openaimodel
    embedding = openaimodel.timestep_embedding
    monkeypatch.setattr(openaimodel, "timestep_embedding", lambda *a, **k: embedding(*a, **k).double())
    monkeypatch.setattr(sys.modules[openaimodel.__name__.replace("openaimodel", "util")].GroupNorm32, "forward",
                        torch.nn.GroupNorm.forward)
    monkeypatch.setattr(theirs, "dtype", torch.float64)
    with torch.no_grad():
        ref64 = theirs.double()(x.double(), t, y=y.double())
        assert_close(authors.double()(x.double(), t, y.double()), ref64, 1e-12, "unet float64, authors' heads")
        _, rel64, _ = errors(default.double()(x.double(), t, y.double()), ref64)
    theirs.float()
    print(f"[parity] diffusers' conversion (8 heads) vs the authors' UNet, one forward float64: rel {rel64:.3e}")
    assert rel64 > 1e-3


def test_text_tower_layer_norm_eps_at_published_shapes():
    """laion-clap's RoBERTa runs LayerNorm eps 1e-5; the converted config carries it. With transformers'
    ClapConfig default (1e-12, what diffusers' conversion writes) the embedding moves."""
    model = authors_code.clap("full")
    authors_code.reference_checkpoints.randomize_(model.text_branch, 11)
    authors_code.reference_checkpoints.randomize_(model.text_projection, 12)
    sd = {k: v for k, v in model.state_dict().items()}
    weights, config, _, _ = layouts.convert_clap(sd, authors_code.Path("laion-clap"))
    ids, mask = _tokens(50265, seed=7)
    with torch.no_grad():
        ref = _laion_text(model, ids, mask)
        results = {}
        for eps in (1e-5, 1e-12):
            config["text_config"]["layer_norm_eps"] = eps
            ours = Clap(ClapConfig.from_hf(config, "converted"))
            state = {clap_names.published_to_ours(k): v for k, v in weights.items()}
            ours.load_state_dict({k: v for k, v in state.items() if k is not None}, strict=True)
            results[eps] = ours.eval().text_features(ids, mask)
    assert_close(results[1e-5], ref, RTOL, "CLAP text, published shapes, eps 1e-5")
    l2 = float((results[1e-12] - ref).norm() / ref.norm())
    print(f"[parity] CLAP text with eps 1e-12 (transformers' default) vs laion-clap: relative L2 {l2:.3e}")
    assert l2 > 1e-6


# --- end to end -------------------------------------------------------------------------------------------

def _authors_ddim(m, cond, uncond, x, steps: int, guidance: float, alphas_cumprod):
    """The authors' DDIMSampler.p_sample_ddim with eta 0: "uniform" timesteps + 1, alphas_cumprod[0] after
    the last step, guidance on the (uncond, cond) pair, film conditioning `y`."""
    ts = np.arange(0, 1000, 1000 // steps) + 1
    a = alphas_cumprod[ts]
    a_prev = np.concatenate([alphas_cumprod[:1], alphas_cumprod[ts[:-1]]])
    for i in reversed(range(len(ts))):
        t = torch.full((2 * x.shape[0],), int(ts[i]), dtype=torch.long)
        e_uncond, e_cond = m.ema(torch.cat([x, x]), t, y=torch.cat([uncond, cond])).chunk(2)
        e = e_uncond + guidance * (e_cond - e_uncond)
        pred_x0 = (x - float(np.sqrt(1 - a[i])) * e) / float(np.sqrt(a[i]))
        x = float(np.sqrt(a_prev[i])) * pred_x0 + float(np.sqrt(1 - a_prev[i])) * e
    return x


def test_pipeline_equals_a_ddim_loop_of_the_authors_modules(authors_release, converted):
    m, pipe = authors_release.model, converted
    steps, guidance, seconds = 4, 2.5, 0.64  # their "uniform" spacing gives `steps` steps when it divides 1000
    latents = torch.randn(1, 8, 16, 16, generator=_g(8))
    out = pipe("warm piano chords", num_inference_steps=steps, guidance_scale=guidance, audio_length_in_s=seconds,
               latents=latents.clone(), eta=0.0, sampler="ddim").audios
    with torch.no_grad():
        ids, mask = pipe.tokenizer(["warm piano chords", ""])  # padded to 512, as the authors' tokenizer call
        text = _laion_text(m.clap, ids, mask)
        betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
        alphas_cumprod = np.cumprod(1 - betas).astype(np.float32).astype(np.float64)  # their float32 buffer
        z = _authors_ddim(m, text[:1], text[1:], latents, steps, guidance, alphas_cumprod)
        vocoder = m.plain_vocoder()
        mel = m.vae.decode(z / float(m.scale_factor))
        wave = vocoder(mel.squeeze(1).permute(0, 2, 1)).squeeze(1)
        unscaled = vocoder(m.vae.decode(z).squeeze(1).permute(0, 2, 1)).squeeze(1)  # scale_factor forgotten
    # HiFi-GAN gives 32 samples more than frames x 160; the authors save them, the pipeline (as diffusers')
    # cuts the waveform to the asked length
    assert wave.shape[-1] == out.shape[-1] + 32
    assert_close(out, wave[:, : out.shape[-1]].numpy(), 1e-5, "pipeline vs the authors' DDIM loop (4 steps, guidance 2.5)")
    assert_detects(out, unscaled[:, : out.shape[-1]].numpy(), 1e-5, "the authors' loop without scale_factor")
