"""Shared fixtures: the random-weight reference checkpoints (built once, cached across runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import reference_checkpoints  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    return reference_checkpoints.checkpoint("tiny")


@pytest.fixture(scope="session")
def full_ckpt() -> Path:
    return reference_checkpoints.checkpoint("full")


@pytest.fixture(scope="session")
def hf_cache() -> tuple[Path, str]:
    """(HF_HUB_CACHE folder holding ucsd-reach/musicldm, its revision)."""
    return reference_checkpoints.hf_cache()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def authors_release(tmp_path_factory, tiny_ckpt):
    """A synthetic release of the authors (small shapes, tests/authors_code.py) and its conversions.

    Returns a namespace: model (the authors' modules), other (those of the separate files), paths (the
    release files), ema / no_ema (converted folders), report (the EMA conversion's)."""
    import types

    import authors_code
    from weights_convert import original

    folder = tmp_path_factory.mktemp("authors-release")
    model, other = authors_code.AuthorsModel("small"), authors_code.AuthorsModel("small", seed=1)
    paths = authors_code.save_release(model, folder / "release", separate=other)
    quiet = lambda *a: None  # noqa: E731
    report = original.convert(paths["main"], folder / "ema", tokenizer_from=str(tiny_ckpt), log=quiet)
    original.convert(paths["main"], folder / "no-ema", ema=False, tokenizer_from=str(tiny_ckpt), log=quiet)
    return types.SimpleNamespace(model=model, other=other, paths=paths, ema=folder / "ema",
                                 no_ema=folder / "no-ema", report=report, root=folder)
