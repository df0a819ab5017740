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
