"""A compiled generation path: torch.compile of the stages that take the time (`pipe.compile()`).

The eager path runs the same oneDNN / cuBLAS kernels as the reference; what is left is the glue
between them (GroupNorm + SiLU, softmax, residual adds, layout changes), which a compiler fuses, and
on a GPU the launch overhead, which CUDA graphs remove. The "unet" stage is the whole model
evaluation of a denoising step, `guidance.guided_eps`: both halves of classifier-free guidance in
one batched UNet call and their combination. So:

* CPU: inductor with `freezing` (weights folded into the graph as constants and pre-packed for
  oneDNN), in the exact path's memory layout, static shapes. The first call for each input shape
  (and guidance scale, a constant of the graph) compiles (tens of seconds at full size); later
  calls reuse it, so there is no recompilation inside a generation.
* CUDA: mode "reduce-overhead" captures each stage's call in one CUDA graph with static input
  buffers: a denoising step's model evaluation is one graph replay. Only the sampler's update (a
  few elementwise kernels whose coefficients are read on the host) runs outside it. The loop has no
  host synchronisation (timesteps and sigmas are read on the host, the model's t is moved to the
  device once), so the host queues steps ahead of the GPU. A replay overwrites the previous
  replay's output buffers, while multistep samplers keep past outputs: outputs are cloned.

The exact path stays the default; `pipe.to()` drops the compiled stages (their constants belong
to the old device and dtype). Compile time is reported per stage and input signature.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

STAGES = ("unet", "vae", "vocoder")


def signature(args: tuple, kwargs: dict) -> Tuple[Hashable, ...]:
    """What a compiled graph is specialised on: tensor shapes and dtypes, plain values (modules by identity)."""
    def key(a):
        if torch.is_tensor(a):
            return tuple(a.shape), a.dtype
        return a if isinstance(a, (int, float, bool, str, type(None))) else id(a)
    return tuple(key(a) for a in args) + tuple((k, key(v)) for k, v in sorted(kwargs.items()))


class CompiledStage:
    """A function through torch.compile, timing the first call of each input signature."""

    def __init__(self, fn: Callable, mode: str):
        # layout_optimization off: with inductor's switch to channels_last the compiled UNet ran 1.03-1.11x
        # of eager on the CPU, without it 0.96-0.98x (benchmarks/results/cpu-compiled-step-2026-11-26.md)
        options = {"freezing": True, "layout_optimization": False} if mode == "default" else None
        self.graphs = mode == "reduce-overhead"
        self.forward = torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, options=options)
        self.compile_seconds: Dict[Tuple, float] = {}

    def __call__(self, *args, **kwargs):
        if self.graphs:  # each call is a new replay; its outputs are ours to keep (see the module docstring)
            torch.compiler.cudagraph_mark_step_begin()
        key = signature(args, kwargs)
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        if key not in self.compile_seconds:
            self.compile_seconds[key] = time.perf_counter() - start
        return out.clone() if self.graphs else out


def compile_stages(targets: Dict[str, Callable], device: torch.device, stages: Optional[Tuple[str, ...]],
                   mode: Optional[str]) -> Dict[str, CompiledStage]:
    """The stages to compile, from `targets` (name -> function), with the defaults of each device:
    on the CPU the UNet step (where inductor's fusion pays), on a GPU all three (launch overhead)."""
    cuda = device.type == "cuda"
    mode = mode or ("reduce-overhead" if cuda else "default")
    compiled = {}
    for name in stages or (STAGES if cuda else ("unet",)):
        if name not in STAGES:
            raise ValueError(f"compile: unknown stage {name!r}; choose from {', '.join(map(repr, STAGES))}")
        compiled[name] = CompiledStage(targets[name], mode)
    return compiled
