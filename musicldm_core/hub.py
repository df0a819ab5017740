"""Where a checkpoint lives: a local folder, or a Hugging Face Hub repo id resolved to one.

The published checkpoint `ucsd-reach/musicldm` is a diffusers pipeline folder. This module knows
its layout (which file holds what) and nothing about the models themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

DEFAULT_REPO = "ucsd-reach/musicldm"

# Component folder -> (config file, safetensors stem). Tokenizer and feature extractor have no weights.
LAYOUT = {
    "unet": ("config.json", "diffusion_pytorch_model"),
    "vae": ("config.json", "diffusion_pytorch_model"),
    "text_encoder": ("config.json", "model"),
    "vocoder": ("config.json", "model"),
    "scheduler": ("scheduler_config.json", None),
    "tokenizer": ("tokenizer_config.json", None),
    "feature_extractor": ("preprocessor_config.json", None),
}

# Only what loading needs: JSON configs, tokenizer text files and safetensors. Never pickle
# (.bin/.ckpt/.pt) nor flax (.msgpack), even where the repo also ships them.
ALLOW_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hub cache as huggingface_hub defines it, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def _looks_like_path(source: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (./x, /x, ~/x, a/b/c, a\\b) is a path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def resolve(source: str | os.PathLike = DEFAULT_REPO, revision: Optional[str] = None) -> Path:
    """Return the local folder of a checkpoint given a folder path or a Hub repo id.

    A repo id is fetched with `huggingface_hub.snapshot_download` (or found in the cache when
    HF_HUB_OFFLINE=1), limited to ALLOW_PATTERNS. HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE are read
    when this is called, not when the module was imported.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"source: expected a checkpoint folder or a Hub repo id such as 'ucsd-reach/musicldm', "
                              f"got {source!r}")
    text = os.fspath(source)
    if not text.strip():
        raise CheckpointError("source: empty; give a checkpoint folder or a Hub repo id such as 'ucsd-reach/musicldm'")
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint folder")
        if revision is not None:
            raise CheckpointError(f"{path}: revision={revision!r} applies to Hub repo ids, not to local folders")
        return check_folder(path)
    return check_folder(_download(text, revision))


def _download(repo_id: str, revision: Optional[str]) -> Path:
    from huggingface_hub import snapshot_download  # deferred: importing it costs start-up time
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            cache_dir=hub_cache_dir(),
            local_files_only=offline,
        )
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such Hub repository (or it is private)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE=1 is set and it" if offline else "the Hub cannot be reached and it"
        raise CheckpointError(
            f"{repo_id}" + (f"@{revision}" if revision else "")
            + f": not available: {where} is not in the cache at {hub_cache_dir()}; give --weights FOLDER (a "
            "local copy in the diffusers layout), or set HF_HUB_CACHE to a cache that holds it"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{repo_id}: could not be fetched from the Hub ({e})") from None
    return Path(folder)


def check_folder(folder: Path) -> Path:
    """Fail early, naming what is missing, if `folder` is not a MusicLDM pipeline folder."""
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(
            f"{folder}: not a MusicLDM checkpoint folder (no model_index.json; expected the diffusers "
            f"layout with {', '.join(LAYOUT)})"
        )
    absent = [f"{name}/{cfg}" for name, (cfg, _) in LAYOUT.items() if not (folder / name / cfg).is_file()]
    if absent:
        raise CheckpointError(f"{folder}: checkpoint folder is incomplete, missing {', '.join(absent)}")
    unweighted = [name for name, (_, stem) in LAYOUT.items()
                  if stem and not any((folder / name).glob(f"{stem}.safetensors*"))]
    if unweighted:
        pickles = [str(p.relative_to(folder)) for name in unweighted for p in sorted((folder / name).glob("*.bin"))]
        found = f" (it has {', '.join(pickles)})" if pickles else ""
        raise CheckpointError(
            f"{folder}: no safetensors weights for {', '.join(unweighted)}{found}. musicldm_core loads safetensors "
            "only, never pickle .bin files (nor downloads them); a checkpoint published as .bin only can be converted "
            "once with `python -m weights_convert.to_safetensors FOLDER` on a downloaded copy")
    return folder
