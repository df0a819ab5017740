"""`MusicLDMPipeline.from_pretrained`'s body: a diffusers-layout checkpoint (folder or Hub id) to components.

The folder is resolved first (hub.py: a local folder, or the Hub's safetensors files only), then each
component is read with its strict loader. The precision policy (placement.component_dtype) decides
each component's dtype: the pipeline's, but the vocoder's always float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch

from .audio_frontend import LogMel
from .clap import Clap
from .clap_config import FeatureExtractorConfig
from .config import VAEConfig, VocoderConfig
from .unet_config import UNetConfig
from .hub import DEFAULT_REPO, resolve
from .placement import component_dtype, parse_device, parse_dtype
from .presets import ATTENTION_HEADS
from .samplers import Scheduler, check_sampler
from .tokenizer import ClapTokenizer
from .unet import UNet
from .vae import AutoencoderKL
from .vocoder import HifiGan


class Checkpoint(NamedTuple):
    """A checkpoint's folder and what plans a generation without its weights: the (UNet, VAE, vocoder)
    configs and the sampler. The command line checks every request against it before loading."""

    folder: Path
    configs: Tuple[UNetConfig, VAEConfig, VocoderConfig]
    scheduler: Scheduler


def open_checkpoint(source: Union[str, Path] = DEFAULT_REPO, revision: Optional[str] = None) -> Checkpoint:
    """The folder resolved (hub.py) and its configs read, each checked; no weight is read."""
    folder = resolve(source, revision)
    configs = (UNetConfig.from_json(folder / "unet" / "config.json"), VAEConfig.from_json(folder / "vae" / "config.json"),
               VocoderConfig.from_json(folder / "vocoder" / "config.json"))
    return Checkpoint(folder, configs, Scheduler.from_pretrained(folder / "scheduler"))


def load_components(source: Union[str, Path] = DEFAULT_REPO, *, revision: Optional[str] = None,
                    device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                    torch_dtype: Union[str, torch.dtype, None] = None,
                    scheduler: Optional[str] = None, attention_heads: str = "checkpoint") -> Dict[str, Any]:
    """The pipeline's components by name (see MusicLDMPipeline.from_pretrained for the arguments).
    Arguments are checked before anything is downloaded or read."""
    if dtype is not None and torch_dtype is not None and parse_dtype(dtype) != parse_dtype(torch_dtype):
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; give one")
    dtype = parse_dtype(dtype if dtype is not None else torch_dtype if torch_dtype is not None else torch.float32)
    device = parse_device(device)
    if scheduler is not None:
        check_sampler(scheduler, "scheduler")
    if attention_heads not in ATTENTION_HEADS:
        raise ValueError(f"attention_heads must be one of {', '.join(map(repr, ATTENTION_HEADS))}, "
                         f"got {attention_heads!r}")
    folder = resolve(source, revision)
    kw = dict(device=device, dtype=dtype)
    return dict(
        tokenizer=ClapTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=Clap.from_pretrained(folder / "text_encoder", **kw),
        unet=UNet.from_pretrained(folder / "unet", attention_heads=attention_heads, **kw),
        vae=AutoencoderKL.from_pretrained(folder / "vae", **kw),
        vocoder=HifiGan.from_pretrained(folder / "vocoder", device=device, dtype=component_dtype("vocoder", dtype)),
        scheduler=Scheduler.from_pretrained(folder / "scheduler", scheduler),
        feature_extractor=LogMel(FeatureExtractorConfig.from_json(
            folder / "feature_extractor" / "preprocessor_config.json")),
    )
