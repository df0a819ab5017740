"""The model-free checks of a call's arguments, one function per kind (Options.check runs them): each
raises a ValueError that names the argument, its value and what is allowed."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Mapping, Optional

import torch

def namer(names: Mapping[str, str]) -> Callable[[str], str]:
    """argument -> the name messages use for it: from `names` (command-line flags, batch fields), else itself."""
    return lambda argument: names.get(argument, argument)


def check_number(name: str, value, *, minimum: float, strict: bool = False, maximum: Optional[float] = None) -> float:
    """A finite real number >= minimum (> minimum when strict, <= maximum if given), else a ValueError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_int(name: str, value, *, minimum: int, maximum: Optional[int] = None) -> int:
    """An integer in [minimum, maximum], else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_text(name: str, text: str) -> None:
    """Text must be valid Unicode: a lone surrogate (bytes that were not UTF-8, e.g. an argument typed
    in a shell with another locale) is refused rather than silently replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode at character {e.start} ({text[e.start:e.end]!r}): "
                         "was it typed in a non-UTF-8 locale? Re-encode it as UTF-8") from None


def check_prompt(prompt, name: str = "prompt") -> int:
    """A non-empty string or non-empty list of them, each valid Unicode with some text; returns how many."""
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and (
            not prompt or not all(isinstance(p, str) for p in prompt))):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    texts = [prompt] if isinstance(prompt, str) else prompt
    for i, p in enumerate(texts):
        item = name if isinstance(prompt, str) else f"{name}[{i}]"
        if not p.strip():
            raise ValueError(f"{item} is empty or only whitespace")
        check_text(item, p)
    return len(texts)


def check_embeds(name: str, embeds) -> int:
    """A (rows >= 1, width) floating-point tensor of finite values; returns the rows."""
    if not torch.is_tensor(embeds) or embeds.dim() != 2:
        shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
        raise ValueError(f"{name} must be a (batch, width) tensor, got {shape}")
    if embeds.shape[0] == 0:
        raise ValueError(f"{name} has no rows: give at least one embedding")
    if not embeds.is_floating_point() or not torch.isfinite(embeds).all():
        raise ValueError(f"{name} must hold finite floating-point values")
    return embeds.shape[0]


def check_attention_kwargs(kwargs) -> None:
    """diffusers reads only "scale", and only to weight LoRA layers; with no LoRA it changes nothing."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise ValueError(f"cross_attention_kwargs must be a dict or None, got {kwargs!r}")
    unknown = set(kwargs) - {"scale"}
    if unknown:
        raise ValueError(f"cross_attention_kwargs: unsupported key(s) {sorted(unknown)}; only 'scale' "
                         "(a LoRA weight, which has no effect without LoRA layers) is accepted")


def check_prompts(o, n: Callable[[str], str]) -> int:
    """o (Options): prompt or prompt_embeds, and the negative prompt or its embeddings to match; returns the prompts."""
    prompt, negative, embeds, negative_embeds = o.prompt, o.negative_prompt, o.prompt_embeds, o.negative_prompt_embeds
    if prompt is not None and embeds is not None:
        raise ValueError("give either prompt or prompt_embeds, not both")
    if prompt is None and embeds is None:
        raise ValueError("give prompt (a string or a list of strings) or prompt_embeds")
    prompts = check_prompt(prompt) if prompt is not None else check_embeds("prompt_embeds", embeds)
    if negative is not None and negative_embeds is not None:
        raise ValueError("give either negative_prompt or negative_prompt_embeds, not both")
    if negative is not None:
        name = n("negative_prompt")
        if prompt is not None and type(prompt) is not type(negative):
            raise TypeError(f"{name} must have the same type as prompt ({type(prompt).__name__}), "
                            f"got {type(negative).__name__}")
        if not isinstance(negative, (str, list)) or not all(isinstance(p, str) for p in negative):
            raise ValueError(f"{name} must be a string or a list of strings, got {type(negative).__name__}")
        if isinstance(negative, list) and len(negative) != prompts:
            raise ValueError(f"{name} has {len(negative)} entries but prompt has {prompts}")
        for i, p in enumerate([negative] if isinstance(negative, str) else negative):
            check_text(name if isinstance(negative, str) else f"{name}[{i}]", p)
    if negative_embeds is not None:
        check_embeds("negative_prompt_embeds", negative_embeds)
        if embeds is not None and embeds.shape != negative_embeds.shape:
            raise ValueError(f"prompt_embeds {tuple(embeds.shape)} and negative_prompt_embeds "
                             f"{tuple(negative_embeds.shape)} must have the same shape")
        if negative_embeds.shape[0] != prompts:
            raise ValueError(f"negative_prompt_embeds has {negative_embeds.shape[0]} rows but there are "
                             f"{prompts} prompts")
    return prompts


def check_noise(o, prompts: int) -> None:
    """o (Options): generator: one, or a list of one per take or one per prompt; latents: finite floats."""
    generator, latents, takes = o.generator, o.latents, prompts * o.num_waveforms_per_prompt
    if isinstance(generator, list):
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("generator must be a torch.Generator or a list of them")
        if len(generator) not in (1, prompts, takes):
            raise ValueError(f"generator: a list of {len(generator)} generators for {takes} takes "
                             f"({prompts} prompts x {o.num_waveforms_per_prompt}); give one, one per prompt "
                             "or one per take")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    if latents is not None:
        if not torch.is_tensor(latents):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if not latents.is_floating_point():
            raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contains NaN or infinite values")


def check_edit(o, n: Callable[[str], str]) -> None:
    """o (Options): long form, loops and audio-to-audio: the values and how they combine (the input is read later)."""
    if o.loop and o.window == "whole":
        raise ValueError(f"{n('loop')} needs the windowed path (circular windows); not window='whole'")
    edits = [name for name in ("strength", "inpaint", "extend") if getattr(o, name) is not None]
    if o.audio is None:
        if edits:
            raise ValueError(f"{n(edits[0])} needs an input: give {n('audio')}")
        return
    if len(edits) > 1:
        raise ValueError(f"give one of {n('strength')}, {n('inpaint')} or {n('extend')}, not several")
    if o.loop or o.audio_length_in_s is not None:
        other = n("loop") if o.loop else n("audio_length_in_s")
        raise ValueError(f"{other} cannot be used with {n('audio')}: the input sets the length")
    if o.strength is not None:
        check_number(n("strength"), o.strength, minimum=0, maximum=1)
    if o.extend is not None:
        check_number(n("extend"), o.extend, minimum=0, strict=True)
    span = o.inpaint
    if span is not None and not (isinstance(span, (tuple, list)) and len(span) == 2 and all(
            not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) for v in span)):
        raise ValueError(f"{n('inpaint')} must be a span (start, end) in seconds, got {span!r}")
