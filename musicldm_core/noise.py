"""Gaussian noise drawn exactly as diffusers' `randn_tensor` draws it.

Same seed, same tensor: a CPU generator used for a non-CPU device draws on the CPU and moves the
result; a list of generators draws one (1, ...) slice per sample, in order; a list of one is one
generator; a CUDA generator for a CPU tensor is an error. Beyond the reference, a list of k
generators for a batch of k * n draws n rows from each (one generator per prompt, n takes each: what
each prompt draws alone from its generator).
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch

Generator = Union[torch.Generator, List[torch.Generator], None]


def randn(shape: Sequence[int], generator: Generator, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    device = torch.device(device)
    draw_device = device
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, list) else generator).device.type
        if gen_type != device.type:
            if gen_type != "cpu":
                raise ValueError(f"generator: cannot draw a {device.type} tensor from a {gen_type} generator")
            draw_device = torch.device("cpu")
    shape = tuple(shape)
    if isinstance(generator, list):
        if shape[0] % len(generator):
            raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {shape[0]}")
        rows = shape[0] // len(generator)
        parts = [torch.randn((rows,) + shape[1:], generator=g, device=draw_device, dtype=dtype) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
