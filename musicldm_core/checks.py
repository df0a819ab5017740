"""The model-free checks of a call's arguments, one function per kind (Options.check runs them): each
raises a RequestError that names the argument (errors.arg), its value and what is allowed."""

from __future__ import annotations

from .errors import RequestError, RequestTypeError, arg

import math
import numbers
from typing import Optional

import torch

def check_number(name: str, value, *, minimum: float, strict: bool = False, maximum: Optional[float] = None) -> float:
    """A finite real number >= minimum (> minimum when strict, <= maximum if given), else a ValueError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise RequestError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_int(name: str, value, *, minimum: int, maximum: Optional[int] = None) -> int:
    """An integer in [minimum, maximum], else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise RequestError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_text(name: str, text: str) -> None:
    """Text must be valid Unicode: a lone surrogate (bytes that were not UTF-8, e.g. an argument typed
    in a shell with another locale) is refused rather than silently replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"{name} is not valid Unicode at character {e.start} ({text[e.start:e.end]!r}): "
                           "was it typed in a non-UTF-8 locale? Re-encode it as UTF-8") from None


def check_prompt(prompt, name: str = "prompt") -> int:
    """A non-empty string or non-empty list of them, each valid Unicode with some text; returns how many."""
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and (
            not prompt or not all(isinstance(p, str) for p in prompt))):
        raise RequestError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    texts = [prompt] if isinstance(prompt, str) else prompt
    for i, p in enumerate(texts):
        item = name if isinstance(prompt, str) else f"{name}[{i}]"
        if not p.strip():
            raise RequestError(f"{item} is empty or only whitespace")
        check_text(item, p)
    return len(texts)


def check_embeds(name: str, embeds) -> int:
    """A (rows >= 1, width) floating-point tensor of finite values; returns the rows."""
    if not torch.is_tensor(embeds) or embeds.dim() != 2:
        shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
        raise RequestError(f"{name} must be a (batch, width) tensor, got {shape}")
    if embeds.shape[0] == 0:
        raise RequestError(f"{name} has no rows: give at least one embedding")
    if not embeds.is_floating_point() or not torch.isfinite(embeds).all():
        raise RequestError(f"{name} must hold finite floating-point values")
    return embeds.shape[0]


def check_attention_kwargs(kwargs) -> None:
    """diffusers reads only "scale", and only to weight LoRA layers; with no LoRA it changes nothing."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise RequestError(f"cross_attention_kwargs must be a dict or None, got {kwargs!r}")
    unknown = set(kwargs) - {"scale"}
    if unknown:
        raise RequestError(f"cross_attention_kwargs: unsupported key(s) {sorted(unknown)}; only 'scale' "
                           "(a LoRA weight, which has no effect without LoRA layers) is accepted")


def check_prompts(o) -> int:
    """o (Options): prompt or prompt_embeds, and the negative prompt or its embeddings to match; returns the prompts."""
    prompt, negative, embeds, negative_embeds = o.prompt, o.negative_prompt, o.prompt_embeds, o.negative_prompt_embeds
    if prompt is not None and embeds is not None:
        raise RequestError("give either prompt or prompt_embeds, not both")
    if prompt is None and embeds is None and o.audio_prompt is None and o.schedule is None:
        raise RequestError(f"give prompt (a string or a list of strings) or prompt_embeds (or {arg('audio_prompt')}, or "
                           f"{arg('schedule')})")
    prompts = check_prompt(prompt) if prompt is not None else check_embeds("prompt_embeds", embeds) \
        if embeds is not None else 1
    blended = prompts > 1 and (o.prompt_weights is not None or o.schedule is not None)  # one row (conditioning.py)
    if negative is not None and negative_embeds is not None:
        raise RequestError("give either negative_prompt or negative_prompt_embeds, not both")
    if negative is not None:
        name = arg("negative_prompt")
        if blended and not isinstance(negative, str):
            raise RequestError(f"{name} must be one string: {arg('prompt_weights')} blends the prompts into one")
        if prompt is not None and not blended and type(prompt) is not type(negative):
            raise RequestTypeError(f"{name} must have the same type as prompt ({type(prompt).__name__}), "
                                   f"got {type(negative).__name__}")
        if not isinstance(negative, (str, list)) or not all(isinstance(p, str) for p in negative):
            raise RequestError(f"{name} must be a string or a list of strings, got {type(negative).__name__}")
        if isinstance(negative, list) and len(negative) != prompts:
            raise RequestError(f"{name} has {len(negative)} entries but prompt has {prompts}")
        for i, p in enumerate([negative] if isinstance(negative, str) else negative):
            check_text(name if isinstance(negative, str) else f"{name}[{i}]", p)
    if negative_embeds is not None:
        check_embeds("negative_prompt_embeds", negative_embeds)
        if embeds is not None and embeds.shape != negative_embeds.shape:
            raise RequestError(f"prompt_embeds {tuple(embeds.shape)} and negative_prompt_embeds "
                               f"{tuple(negative_embeds.shape)} must have the same shape")
        if negative_embeds.shape[0] != prompts:
            raise RequestError(f"negative_prompt_embeds has {negative_embeds.shape[0]} rows but there are "
                               f"{prompts} prompts")
    return 1 if blended else prompts


def check_noise(o, prompts: int) -> None:
    """o (Options): generator: one, or a list of one per take or one per prompt; latents: finite floats."""
    generator, latents, takes = o.generator, o.latents, prompts * o.num_waveforms_per_prompt
    if isinstance(generator, list):
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise RequestError("generator must be a torch.Generator or a list of them")
        if len(generator) not in (1, prompts, takes):
            raise RequestError(f"generator: a list of {len(generator)} generators for {takes} takes "
                               f"({prompts} prompts x {o.num_waveforms_per_prompt}); give one, one per prompt "
                               "or one per take")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise RequestError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    if latents is not None:
        if not torch.is_tensor(latents):
            raise RequestError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if not latents.is_floating_point():
            raise RequestError(f"latents must be a floating-point tensor, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise RequestError("latents contains NaN or infinite values")


def check_edit(o) -> None:
    """o (Options): long form, loops and audio-to-audio: the values and how they combine (the input is read later)."""
    if o.loop and o.window == "whole":
        raise RequestError(f"{arg('loop')} needs the windowed path (circular windows); not window='whole'")
    edits = [name for name in ("strength", "inpaint", "extend") if getattr(o, name) is not None]
    if o.audio is None:
        if edits:
            raise RequestError(f"{arg(edits[0])} needs an input: give {arg('audio')}")
        return
    if len(edits) > 1:
        raise RequestError(f"give one of {arg('strength')}, {arg('inpaint')} or {arg('extend')}, not several")
    if o.loop or o.audio_length_in_s is not None:
        other = arg("loop") if o.loop else arg("audio_length_in_s")
        raise RequestError(f"{other} cannot be used with {arg('audio')}: the input sets the length")
    if o.strength is not None:
        check_number(arg("strength"), o.strength, minimum=0, maximum=1)
    if o.extend is not None:
        check_number(arg("extend"), o.extend, minimum=0, strict=True)
    span = o.inpaint
    if span is not None and not (isinstance(span, (tuple, list)) and len(span) == 2 and all(
            not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) for v in span)):
        raise RequestError(f"{arg('inpaint')} must be a span (start, end) in seconds, got {span!r}")
