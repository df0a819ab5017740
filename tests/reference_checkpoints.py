"""Random-weight checkpoints built by the reference classes themselves, cached across runs.

The published weights cannot be downloaded here, so the tests make their own: diffusers'
MusicLDMPipeline assembled from the reference classes at the published configs
(shared/reference/published_configs.json), every weight randomised from fixed seeds, and saved
with `save_pretrained(safe_serialization=True)` in the Hub folder layout. Both our loader and
the reference load the same folder, so parity is measured on identical weights.

Like the published files, the text encoder stores its two CLAP logit scales as float64 (its
config says torch_dtype float64) and the VAE's scaling_factor is 1.0753 (not diffusers' 0.18215).

Variants:
- "full": the published shapes (~490 M parameters, ~2 GB on disk).
- "tiny": the same block types at small widths, for the fast default suite.
- "fasttest": diffusers' own MusicLDM fast-test components (tests/pipelines/musicldm/
  test_musicldm.py: same configs, seeds and default init), except two files that test reads from
  the Hub: its tokenizer is ours (vocabulary 1000, model_max_length 77 as there) and its feature
  extractor is ClapFeatureExtractor(hop_length=7900) with the class defaults ("fusion").
- hf_cache(): the full checkpoint laid out as a Hugging Face cache
  (models--ucsd-reach--musicldm/snapshots/<rev>/..., refs/main) for Hub-id resolution offline,
  with a pickle `.bin` twin beside every safetensors file as the Hub repo has: a trap whose
  unpickling would create TRAP_MARKER, so a test can prove it is never opened.

Cache: $MUSICLDM_FIXTURE_CACHE or ~/.cache/musicldm_core/fixtures, one folder per hash of the
configs, seeds, this file's format version and the reference library versions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

FORMAT_VERSION = 4  # bump when the way fixtures are built changes
SCALING_FACTOR = 1.075324296951294  # the published value; not diffusers' default 0.18215

PUBLISHED = {
    "unet": {
        "sample_size": 256, "in_channels": 8, "out_channels": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [128, 256, 384, 640], "layers_per_block": 2,
        "cross_attention_dim": [128, 256, 384, 640],
        "class_embed_type": "simple_projection", "projection_class_embeddings_input_dim": 512,
        "class_embeddings_concat": True,
    },
    "vae": {
        "sample_size": 1024, "in_channels": 1, "out_channels": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [128, 256, 512], "latent_channels": 8, "layers_per_block": 2,
        "scaling_factor": SCALING_FACTOR,
    },
    "vocoder": {
        "model_in_dim": 64, "sampling_rate": 16000, "upsample_initial_channel": 1024,
        "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "normalize_before": False,
    },
    "clap": {
        "projection_dim": 512,
        "text_config": {},  # ClapTextConfig defaults = RoBERTa-base shape
        "audio_config": {"patch_embeds_hidden_size": 128, "hidden_size": 1024, "depths": [2, 2, 12, 2]},
    },
    "scheduler": {
        "num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
        "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
    },
    "feature_extractor": {"truncation": "rand_trunc", "padding": "repeatpad"},
    "tokenizer": {"vocab_size": 1000, "model_max_length": 512},
}

TINY = copy.deepcopy(PUBLISHED)
TINY["unet"].update(
    sample_size=32, block_out_channels=[32, 64, 64, 96], cross_attention_dim=[32, 64, 64, 96],
    layers_per_block=1, norm_num_groups=8, attention_head_dim=4, projection_class_embeddings_input_dim=32,
)
TINY["vae"].update(sample_size=64, block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8)
TINY["vocoder"].update(upsample_initial_channel=64)
TINY["clap"] = {
    "projection_dim": 32,
    "text_config": {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 64},
    "audio_config": {"patch_embeds_hidden_size": 16, "hidden_size": 128, "depths": [1, 1, 2, 1],
                     "num_attention_heads": [1, 2, 4, 8]},
}
# diffusers' MusicLDMPipelineFastTests.get_dummy_components, as constructor arguments
FASTTEST = {
    "unet": {"block_out_channels": [32, 64], "layers_per_block": 2, "sample_size": 32, "in_channels": 4,
             "out_channels": 4, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": [32, 64],
             "class_embed_type": "simple_projection", "projection_class_embeddings_input_dim": 32,
             "class_embeddings_concat": True},
    "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                  "set_alpha_to_one": False},
    "vae": {"block_out_channels": [32, 64], "in_channels": 1, "out_channels": 1,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 4},
    "clap": {
        "projection_dim": 32,
        "text_config": {"bos_token_id": 0, "eos_token_id": 2, "hidden_size": 16, "intermediate_size": 37,
                        "layer_norm_eps": 1e-05, "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1,
                        "vocab_size": 1000},
        "audio_config": {"spec_size": 64, "window_size": 4, "num_mel_bins": 64, "intermediate_size": 37,
                         "layer_norm_eps": 1e-05, "depths": [2, 2], "num_attention_heads": [2, 2],
                         "num_hidden_layers": 2, "hidden_size": 192, "patch_size": 2, "patch_stride": 2,
                         "patch_embed_input_channels": 4},
    },
    "vocoder": {"model_in_dim": 8, "sampling_rate": 16000, "upsample_initial_channel": 16, "upsample_rates": [2, 2],
                "upsample_kernel_sizes": [4, 4], "resblock_kernel_sizes": [3, 7],
                "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]], "normalize_before": False},
    "feature_extractor": {"hop_length": 7900},
    "tokenizer": {"vocab_size": 1000, "model_max_length": 77},
}
VARIANTS = {"full": PUBLISHED, "tiny": TINY, "fasttest": FASTTEST}
TRAP_MARKER = "musicldm-bin-was-unpickled"
SEED = 1234
REPO_ID = "ucsd-reach/musicldm"


def cache_root() -> Path:
    root = os.environ.get("MUSICLDM_FIXTURE_CACHE") or os.path.expanduser("~/.cache/musicldm_core/fixtures")
    return Path(root)


def _key(variant: str) -> str:
    import diffusers
    import torch
    import transformers
    import tokenizers

    blob = json.dumps(
        {"cfg": VARIANTS[variant], "seed": SEED, "format": FORMAT_VERSION, "versions": [
            torch.__version__, diffusers.__version__, transformers.__version__, tokenizers.__version__]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def randomize_(module, seed: int) -> None:
    """Perturb every floating parameter and buffer from a seeded generator.

    Default inits leave norms at weight 1 / bias 0 and many biases at 0, which hides swapped or
    ignored parameters; after this every tensor matters.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or name.endswith(("position_ids", "num_batches_tracked")):
                continue
            if name.endswith("running_var"):
                t.copy_(1.0 + 0.2 * torch.rand(t.shape, generator=g))
                continue
            spread = float(t.float().std()) if t.numel() > 1 else 0.0
            t.add_(torch.randn(t.shape, generator=g) * max(0.25 * spread, 0.02))


def fan_in(m) -> float:
    """Inputs summed into one output of a 1-d convolution (a transposed one spreads each over stride outputs)."""
    import torch

    if isinstance(m, torch.nn.ConvTranspose1d):
        return m.in_channels * m.kernel_size[0] / m.stride[0]
    return m.in_channels * m.kernel_size[0]


def signal_preserving_init_(vocoder, seed: int) -> None:
    """Re-draw the vocoder's conv weights with std 1/sqrt(fan-in).

    SpeechT5HifiGan initialises with std 0.02, which at small widths shrinks the signal layer by
    layer until the output is tanh(bias) whatever the mel: a parity test could not fail then.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in vocoder.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in(m) ** 0.5)


def _train_tokenizer(folder: Path, cfg: dict) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    from text_corpus import prompts

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        prompts() * 3, vocab_size=cfg["vocab_size"], min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    raw = folder / "raw"
    raw.mkdir()
    bpe.save_model(str(raw))
    tok = RobertaTokenizerFast(vocab_file=str(raw / "vocab.json"), merges_file=str(raw / "merges.txt"),
                               model_max_length=cfg["model_max_length"])
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    tok.save_pretrained(str(folder / "tok"))
    shutil.rmtree(raw)


def _build(variant: str, out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MusicLDMPipeline, UNet2DConditionModel
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig,
                              RobertaTokenizerFast, SpeechT5HifiGan, SpeechT5HifiGanConfig)

    cfg = VARIANTS[variant]
    if variant == "fasttest":  # exactly diffusers' get_dummy_components: seed 0 before each, default init
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**cfg["unet"])
        scheduler = DDIMScheduler(**cfg["scheduler"])
        torch.manual_seed(0)
        vae = AutoencoderKL(**cfg["vae"])
        torch.manual_seed(0)
        clap = ClapModel(ClapConfig.from_text_audio_configs(
            text_config=ClapTextConfig(**cfg["clap"]["text_config"]),
            audio_config=ClapAudioConfig(**cfg["clap"]["audio_config"]), projection_dim=cfg["clap"]["projection_dim"]))
        torch.manual_seed(0)
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**cfg["vocoder"]))
    else:
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**cfg["vocoder"]))
        clap = ClapModel(ClapConfig(**cfg["clap"]))
        signal_preserving_init_(vocoder, SEED)
        for i, m in enumerate((unet, vae, vocoder, clap)):
            randomize_(m, SEED + i)
        scheduler = DDIMScheduler(**cfg["scheduler"])
    # as published: the CLAP logit scales are stored in float64, and the config says so
    with torch.no_grad():
        clap.logit_scale_a.data = clap.logit_scale_a.data.double()
        clap.logit_scale_t.data = clap.logit_scale_t.data.double()
    clap.config.torch_dtype = torch.float64
    work = Path(tempfile.mkdtemp(dir=out.parent))
    _train_tokenizer(work, cfg["tokenizer"])
    tokenizer = RobertaTokenizerFast.from_pretrained(str(work / "tok"))
    pipe = MusicLDMPipeline(
        vae=vae, text_encoder=clap, tokenizer=tokenizer,
        feature_extractor=ClapFeatureExtractor(**cfg["feature_extractor"]),
        unet=unet, scheduler=scheduler, vocoder=vocoder,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    shutil.rmtree(work)
    # the published text_encoder/config.json was written by transformers 4.32: "torch_dtype", not "dtype"
    config = out / "text_encoder" / "config.json"
    data = json.loads(config.read_text())
    data["torch_dtype"] = data.pop("dtype", None) or data.get("torch_dtype")
    config.write_text(json.dumps(data, indent=2, sort_keys=True))


class _Trap:
    """Unpickling this creates TRAP_MARKER in the temp folder: proof that a .bin was loaded."""

    def __reduce__(self):
        return (Path.touch, (Path(tempfile.gettempdir()) / TRAP_MARKER,))


def _write_trap(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(_Trap()))


def checkpoint(variant: str) -> Path:
    """The folder of a built checkpoint; built once, then reused while the key matches."""
    key = _key(variant)
    folder = cache_root() / f"{variant}-{key[:16]}"
    if (folder / ".complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=folder.parent))
    try:
        _build(variant, tmp / "ckpt")
        (tmp / "ckpt" / ".complete").write_text(key)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp / "ckpt", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(f"{variant}-", folder)
    return folder


def _remove_stale(prefix: str, keep: Path) -> None:
    """Fixtures built under an older key are dead weight (the full one is 2 GB): delete them."""
    for old in cache_root().glob(prefix + "*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def hf_cache() -> tuple[Path, str]:
    """(HF_HUB_CACHE folder, revision) holding the full checkpoint as `ucsd-reach/musicldm`."""
    full = checkpoint("full")
    rev = _key("full")[:40]
    root = cache_root() / f"hub-{rev[:16]}"
    if (root / ".complete").is_file():
        return root, rev
    shutil.rmtree(root, ignore_errors=True)
    repo = root / ("models--" + REPO_ID.replace("/", "--"))
    snap = repo / "snapshots" / rev
    for src in full.rglob("*"):
        if src.is_file() and src.name != ".complete":
            dst = snap / src.relative_to(full)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)  # hard links: no second 2 GB copy
            if src.suffix == ".safetensors":  # the published repo has a pickle twin of each
                _write_trap(dst.with_suffix(".bin"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (root / ".complete").write_text(rev)
    _remove_stale("hub-", root)
    return root, rev


if __name__ == "__main__":  # `python tests/reference_checkpoints.py full`: build (or find) it, print its folder
    import sys

    print(checkpoint(sys.argv[1] if len(sys.argv) > 1 else "full"))
