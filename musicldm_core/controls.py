"""How a pipeline runs, apart from what it computes (pipeline.py): its device and dtype, its memory
policies, batch invariance, and its compiled stages. MusicLDMPipeline inherits these controls; each reads
or sets the pipeline's `placement`, `compiled`, `vae_slicing` and `batch_invariant`."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from .compiled import compile_stages
from .guidance import guided_eps
from .layers import rows_apart
from .placement import parse_device, parse_dtype


class Controls:
    device = property(lambda self: self.placement.device)
    dtype = property(lambda self: self.placement.dtype)

    def to(self, device=None, dtype=None) -> "Controls":
        self.compiled = {}  # compiled for the old device and dtype
        self.placement.to(parse_device(device) if device is not None else None,
                          parse_dtype(dtype) if dtype is not None else None)
        return self

    def enable_vae_slicing(self, on: bool = True) -> None:
        """Decode one take at a time: VAE activation memory no longer grows with the batch."""
        self.vae_slicing = on

    def disable_vae_slicing(self) -> None:
        self.enable_vae_slicing(False)

    def enable_model_cpu_offload(self, device: Union[str, torch.device] = "cuda") -> None:
        """Keep every component on the CPU and move each to `device` only while it runs."""
        self.placement.offload(parse_device(device))

    def enable_low_memory(self) -> None:
        """On the CPU, keep only the running component's weights resident (see placement.py)."""
        self.placement.low_memory = True

    def enable_batch_invariance(self, on: bool = True) -> None:
        """Make each take independent of what shares its call, to the last bit, at any batch size and
        thread count: the UNet's convolutions and linear layers run one row at a time (layers.rows_apart),
        each take is decoded and vocoded alone, and takes are ranked per prompt. Off by default, as in
        diffusers; `--exact-batches` turns it on for the command line, batch mode and the page. Without
        it a take made beside others differs from its single run by the batch-composition error (about
        1e-6 relative: docs/exactness.md). The cost on a CPU: 3-20% for one item, and batching four items, which
        gains 1.18x by running other kernels, gains little (benchmarks/results/batch-cpu-2026-12-03.md)."""
        self.batch_invariant = on
        rows_apart(self.unet, on)

    def compile(self, stages: Optional[Tuple[str, ...]] = None, mode: Optional[str] = None) -> None:
        """torch.compile `stages` ("unet": the step's `guided_eps`, "vae", "vocoder"); see compiled.py.
        Each new input shape or guidance scale compiles on first use (`compile_seconds()`)."""
        targets = {"unet": guided_eps, "vae": self.vae.decode, "vocoder": self.vocoder}
        self.compiled = compile_stages(targets, self.device, stages, mode)

    def compile_seconds(self) -> Dict[str, float]:
        """Seconds spent compiling, per stage (every input shape it met)."""
        return {name: sum(stage.compile_seconds.values()) for name, stage in self.compiled.items()}
