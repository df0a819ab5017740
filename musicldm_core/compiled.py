"""A compiled generation path: torch.compile of the stages that take the time (`pipe.compile()`).

The eager path runs the same oneDNN / cuBLAS kernels as the reference; what is left is the glue
between them (GroupNorm + SiLU, softmax, residual adds, layout changes), which a compiler fuses, and
on a GPU the launch overhead, which CUDA graphs remove. So:

* CPU: inductor with `freezing` (weights folded into the graph as constants and pre-packed for
  oneDNN), static shapes. The first call for each input shape compiles (tens of seconds at full
  size); later calls with that shape reuse it, so there is no recompilation inside a generation.
* CUDA: mode "reduce-overhead" captures each stage's call in a CUDA graph with static input
  buffers; the sampling loop has no host synchronisation (timesteps and sigmas are read on the
  host, the model's t is moved to the device once).

The exact path stays the default; `pipe.to()` drops the compiled stages (their constants belong
to the old device and dtype). Compile time is reported per stage and input shape.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

import torch


class CompiledStage:
    """A module (or a module's method) through torch.compile, timing the first call of each input shape."""

    def __init__(self, fn: Callable, mode: str):
        options = {"freezing": True} if mode == "default" else None
        self.forward = torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, options=options)
        self.compile_seconds: Dict[Tuple, float] = {}

    def __call__(self, *args, **kwargs):
        key = tuple((tuple(a.shape), a.dtype) for a in args if torch.is_tensor(a))
        if key in self.compile_seconds:
            return self.forward(*args, **kwargs)
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        self.compile_seconds[key] = time.perf_counter() - start
        return out


def compile_stages(pipe, stages: Optional[Tuple[str, ...]], mode: Optional[str]) -> Dict[str, CompiledStage]:
    """The pipeline's stages to compile, by name, with the defaults of each device."""
    cuda = pipe.device.type == "cuda"
    mode = mode or ("reduce-overhead" if cuda else "default")
    compiled = {}
    for name in stages or (("unet", "vae", "vocoder") if cuda else ("unet",)):
        if name not in ("unet", "vae", "vocoder"):
            raise ValueError(f"compile: unknown stage {name!r}; choose from 'unet', 'vae', 'vocoder'")
        compiled[name] = CompiledStage(pipe.vae.decode if name == "vae" else pipe.components[name], mode)
    return compiled
