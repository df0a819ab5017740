"""The front door of every entry point: a request made ready before the weights load, and the pipeline a
command opens. The command line, batch mode and the page all come through here:

    options = options_of([request, ...])             # short names -> one pipe call (request.py's table)
    ready = prepare(options, opener, device)         # checked once, input read once, planned, memory estimated
    pipe = open_pipeline(folder, device, ...)         # device, dtype, invariance, compile
    out = pipe.generate(ready.options, ready.run)     # no second plan
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, NamedTuple, Optional

import torch

from .. import conditioning
from ..load import Checkpoint
from ..options import AUDIO_RATE, Options, Run, plan_call, read_input
from ..pipeline import MusicLDMPipeline
from ..placement import default_device, parse_device
from .request import BY_NAME, CONDITION_FIELDS, Request, condition_options, parse_span, pipeline_options

# the fields one pipe call shares among its prompts (batch.Item.group keeps them equal), and those it sets
# only when a request gives them (otherwise the template's stand: batch mode's eta is the run's)
SHARED = ("seconds", "steps", "guidance", "takes", "sampler", "loop", "window")
GIVEN = ("eta", "strength", "extend")
# the condition's fields that feed their pipe() argument as they are (blend's and schedule's words are read by
# condition_options); a request that sets one runs alone
CONDITION = tuple(k for k in CONDITION_FIELDS if k not in ("blend", "schedule"))


def options_of(requests: List[Request], template: Options = Options()) -> Options:
    """Requests of one group as one pipeline call: their prompts, each drawing its noise from its own seed
    exactly as a single run draws it, ranked per prompt with a deterministic crop (so that a take does not
    depend on what shares its call). template: what the requests do not say (progress, return_mels)."""
    first, one = requests[0], len(requests) == 1
    prompts, negatives = [r.prompt for r in requests], [r.negative or "" for r in requests]
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    negative = (negatives[0] if one else negatives) if any(negatives) else None
    edit = {"input": first.input, "inpaint": parse_span(first.inpaint)} if first.input is not None else {}
    if edit and first.strength is None and first.inpaint is None and first.extend is None:
        edit["strength"] = 0.6  # an input alone moves 60% of the way from it
    given = {k: getattr(first, k) for k in GIVEN + CONDITION if getattr(first, k) != BY_NAME[k].default}
    options = replace(template, **pipeline_options({**{k: getattr(first, k) for k in SHARED}, **given, **edit}),
                      prompt=prompts[0] if one else prompts, negative_prompt=negative,
                      generator=generators[0] if one else generators, rank_within_prompt=True, crop="start")
    return replace(options, **condition_options(first)) if one else options


class Ready(NamedTuple):
    """A request ready to generate: its options (an input read once, as 16 kHz samples), its run, and the
    checkpoint it was planned against."""

    options: Options
    run: Run
    checkpoint: Checkpoint


def prepare(options: Options, checkpoint: Callable[[], Checkpoint], device: torch.device) -> Ready:
    """Every check of a request before the weights load, each once: the arguments, then the input audio
    and any audio prompt (read and resampled once), then, from `checkpoint()` (its configs: no weights), the plan against its
    geometry and sampler and the memory estimate. Its errors name diffusers' arguments: the caller renames
    them to its own (errors.RequestError.renamed, with request.names)."""
    checked = options.check(), read_input(options), conditioning.read(options)
    opened = checkpoint()
    run = plan_call(options, opened.configs, opened.scheduler, device, checked=checked)
    if run.wave is not None:  # the input as read: generation does not read it again
        options = replace(options, audio=run.wave, audio_sampling_rate=AUDIO_RATE)
    return Ready(options, run, opened)


def run_device(device: Optional[str], dtype: Optional[str]) -> tuple:
    """(torch.device, dtype name): the best device unless one is named, and its dtype (run_dtype)."""
    device = parse_device(device or default_device())
    return device, run_dtype(device, dtype)


def run_dtype(device: torch.device, dtype: Optional[str]) -> str:
    """The dtype named, else float16 on CUDA and float32 elsewhere."""
    return dtype or ("float16" if device.type == "cuda" else "float32")


def open_pipeline(folder, device: torch.device, dtype: str, attention_heads: str = "checkpoint",
                  compile: bool = False, exact_batches: bool = False) -> MusicLDMPipeline:  # noqa: A002
    """The pipeline a command runs, from a checkpoint `folder`: loaded on `device` in `dtype`, batch
    invariance on or off, compiled if asked."""
    pipe = MusicLDMPipeline.from_pretrained(folder, device=device, dtype=dtype,
                                            attention_heads=attention_heads)
    pipe.enable_batch_invariance(exact_batches)  # off: the same kernels as pipe() with these arguments
    if compile:
        pipe.compile()
    return pipe
