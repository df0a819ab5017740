"""The published checkpoints' parameter names <-> ours, for the loader (weights.py): pure data and the two
functions each table gives, `published_to_ours` and `ours_to_published`. They build no model and read no
weight, and no model file imports them: the loader picks a component's table by its class (`of`).

Our modules are named for their reader, and every difference from a published name lives here:
`diffusers.py` drops the UNet's and VAE's placeholders (`to_out.0`, `downsamplers.0`); `clap.py` renames
CLAP's deep BERT/Swin nesting; the vocoder's names are the published ones.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

from . import clap, diffusers

# our model class -> the table of its published layout (absent: the names are the published ones)
TABLES = {"UNet": diffusers, "AutoencoderKL": diffusers, "Clap": clap}


def of(model) -> Optional[ModuleType]:
    """The name table for a model of ours (None where its names are the published ones: the vocoder)."""
    return TABLES.get(type(model).__name__)
