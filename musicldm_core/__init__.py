"""musicldm_core: MusicLDM text-to-music inference in plain PyTorch, exact to diffusers' MusicLDMPipeline.

    from musicldm_core import MusicLDMPipeline
    pipe = MusicLDMPipeline.from_pretrained("ucsd-reach/musicldm")
    audio = pipe("techno with a fast beat", num_inference_steps=50).audios[0]   # float32, 16 kHz

Importing this package is cheap: the pipeline and its components load on first use.
"""

from __future__ import annotations

from .errors import CheckpointError

__all__ = ["MusicLDMPipeline", "CheckpointError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "MusicLDMPipeline":
        from .pipeline import MusicLDMPipeline

        return MusicLDMPipeline
    raise AttributeError(f"module 'musicldm_core' has no attribute {name!r}")
