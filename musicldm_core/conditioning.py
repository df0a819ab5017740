"""What the UNet is conditioned on, beyond one text prompt: blends of parts, and a schedule over time.

MusicLDM's UNet reads one CLAP vector (512-d, unit length) per take, as its class embedding; the reference
computes it from a text prompt. A request may instead name it as

* a blend: text prompts (`prompt` with `prompt_weights`) and an audio prompt (`audio_prompt`, weighted
  `audio_prompt_weight`: audio_prompt.py), each weight >= 0, not all 0, relative to their sum.
  blend="linear" (the default): the weighted mean of the parts' unit vectors, made unit length again. For
  two parts it walks the same great-circle arc as "slerp", only at another pace, and it takes any number of
  parts; that is why it is the default. blend="slerp": spherical interpolation between exactly two parts
  at alpha = w2 / (w1 + w2) (Riffusion's alpha), constant pace along the arc. A blend of one part is that
  part's vector itself, untouched: the plain run, bit for bit;
* a schedule: (seconds, entry) pairs in increasing time, each entry a text, or a mapping with the blend's
  fields ({"prompt": ..., "prompt_weights": ..., "audio_prompt": ..., "audio_prompt_weight": ...}). Every
  denoising window of the windowed path (longform.py) is conditioned on the schedule at its centre
  (`schedule_weights`): the entry in force alone, except around each entry's time, where a transition of
  `travel` seconds (centred on that time, cut to half the gap to either neighbour) moves from the previous
  entry to it, its weight rising linearly from 0 to 1, mixed by the blend rule. Before the first entry the
  first holds, after the last the last; a loop wraps: the last entry travels into the first across the seam.

Where none of this is asked, nothing here runs: the text path is the reference's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from .audio_prompt import read_audio_prompt
from .checks import check_number, check_prompt
from .errors import RequestError, arg
from .longform import window_starts

BLENDS = ("linear", "slerp")
ENTRY_KEYS = ("prompt", "prompt_weights", "audio_prompt", "audio_prompt_weight", "audio_sampling_rate")


@dataclass(frozen=True)
class Blend:
    """One condition: its text parts with their weights, and an audio prompt with its weight."""

    texts: Tuple[str, ...] = ()
    weights: Tuple[float, ...] = ()  # one per text
    audio: Any = None  # a path or an array as given; after `read`, the clip as 16 kHz samples
    audio_weight: float = 1.0
    audio_rate: Optional[int] = None  # the rate of an array `audio`

    @property
    def parts(self) -> int:
        return len(self.texts) + (self.audio is not None)

    def part_weights(self) -> List[float]:
        return list(self.weights) + ([self.audio_weight] if self.audio is not None else [])


class Conditioning(NamedTuple):
    """A request's conditions, checked and with its audio read: one blend per prompt row, or a schedule."""

    rows: Optional[List[Blend]]  # one per prompt (None with a schedule)
    schedule: Optional[List[Tuple[float, Blend]]]  # (seconds, entry), increasing
    blend: str  # "linear" or "slerp"
    travel: Optional[float]  # seconds of each transition; None: one denoising window


def asks(o) -> bool:
    """Whether options `o` (Options) ask for anything here: otherwise the text path runs as the reference's."""
    return o.prompt_weights is not None or o.audio_prompt is not None or o.schedule is not None


def check(o) -> None:
    """The model-free checks of these fields (Options.check runs them): types, weights, the schedule's order."""
    if not isinstance(o.blend, str) or o.blend not in BLENDS:
        raise RequestError(f"{arg('blend')} must be 'linear' or 'slerp', got {o.blend!r}")
    if o.travel is not None:
        check_number(arg("travel"), o.travel, minimum=0)
        if o.schedule is None:
            raise RequestError(f"{arg('travel')} applies to a schedule; give {arg('schedule')} too")
    if not asks(o):
        return
    if o.prompt_embeds is not None:
        raise RequestError(f"prompt_embeds cannot be blended or scheduled: give texts as prompt (or mix the vectors "
                           f"yourself), not with {arg('prompt_weights')}, {arg('audio_prompt')} or {arg('schedule')}")
    if o.schedule is not None:
        for name in ("prompt", "prompt_weights", "audio_prompt"):
            if getattr(o, name) is not None:
                raise RequestError(f"give either {arg('schedule')} or {arg(name)}: a schedule's entries carry their own "
                                   "texts and audio prompts")
        _check_schedule(o.schedule, o.blend)
    else:
        for blend in _row_blends(o):
            _check_blend(blend, o.blend, arg("prompt_weights"), arg("audio_prompt_weight"))


def _weights(name: str, weights) -> Tuple[float, ...]:
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) and not torch.is_tensor(weights):
        raise RequestError(f"{name} must be a list of numbers, got {type(weights).__name__}")
    return tuple(check_number(f"{name}[{i}]", w, minimum=0) for i, w in enumerate(list(weights)))


def _row_blends(o) -> List[Blend]:
    """The rows' blends of a request without a schedule: all texts weighted into one row, or one row per text,
    each with the audio prompt."""
    weights_name, rate = arg("prompt_weights"), o.audio_sampling_rate
    texts = [] if o.prompt is None else [o.prompt] if isinstance(o.prompt, str) else list(o.prompt)
    audio_weight = check_number(arg("audio_prompt_weight"), o.audio_prompt_weight, minimum=0)
    audio = dict(audio=o.audio_prompt, audio_weight=audio_weight, audio_rate=_rate_of(o.audio_prompt, rate))
    if o.prompt_weights is not None:
        if o.prompt is None:
            raise RequestError(f"{weights_name} weights the texts of prompt: give prompt too")
        weights = _weights(weights_name, o.prompt_weights)
        if len(weights) != len(texts):
            raise RequestError(f"{weights_name} has {len(weights)} weights for {len(texts)} prompts")
        return [Blend(tuple(texts), weights, **audio)]
    return [Blend((t,), (1.0,), **audio) for t in texts] or [Blend(**audio)]


def _rate_of(audio, rate: Optional[int]) -> Optional[int]:
    """An array's rate (a file carries its own)."""
    return None if audio is None or isinstance(audio, (str, os.PathLike)) else rate


def _check_blend(blend: Blend, mode: str, weights_name: str, audio_name: str) -> None:
    weights = blend.part_weights()
    if not any(w > 0 for w in weights):
        raise RequestError(f"the blend's weights are all 0 ({weights_name}: {list(blend.weights)}, {audio_name}: "
                           f"{blend.audio_weight}); give at least one a positive weight")
    if mode == "slerp" and blend.parts != 2:
        raise RequestError(f"{arg('blend')}='slerp' interpolates between two parts; this blend has {blend.parts} "
                           "(use 'linear' for more)")


def _check_schedule(schedule, mode: str) -> None:
    name = arg("schedule")
    if isinstance(schedule, (str, bytes, Mapping)) or not isinstance(schedule, Sequence) or not schedule:
        raise RequestError(f"{name} must be a non-empty list of (seconds, entry) pairs, got {schedule!r:.80}")
    last = None
    for i, pair in enumerate(schedule):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise RequestError(f"{name}[{i}] must be a pair (seconds, entry), got {pair!r:.80}")
        at = check_number(f"{name}[{i}]'s time", pair[0], minimum=0)
        if last is not None and at <= last:
            word = "repeats" if at == last else "comes before"
            raise RequestError(f"{name}[{i}] at {at:g} s {word} the entry before it (at {last:g} s): times must "
                               "increase")
        last = at
        _check_blend(entry_blend(pair[1], f"{name}[{i}]"), mode, f"{name}[{i}]'s prompt_weights",
                     f"{name}[{i}]'s audio_prompt_weight")


def entry_blend(entry, name: str) -> Blend:
    """A schedule's entry as a Blend: a text, or a mapping of the blend's fields (ENTRY_KEYS)."""
    if isinstance(entry, str):
        check_prompt(entry, name)
        return Blend((entry,), (1.0,))
    if not isinstance(entry, Mapping):
        raise RequestError(f"{name} must be a text or a mapping of {', '.join(ENTRY_KEYS)}, got "
                           f"{type(entry).__name__}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise RequestError(f"{name} has unknown key(s) {unknown}; an entry takes {', '.join(ENTRY_KEYS)}")
    prompt, audio = entry.get("prompt"), entry.get("audio_prompt")
    if prompt is None and audio is None:
        raise RequestError(f"{name} needs a prompt or an audio_prompt")
    if prompt is not None:
        check_prompt(prompt, f"{name}'s prompt")
    texts = [] if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
    weights = entry.get("prompt_weights")
    weights = (1.0,) * len(texts) if weights is None else _weights(f"{name}'s prompt_weights", weights)
    if len(weights) != len(texts):
        raise RequestError(f"{name}'s prompt_weights has {len(weights)} weights for {len(texts)} prompts")
    audio_weight = check_number(f"{name}'s audio_prompt_weight", entry.get("audio_prompt_weight", 1.0), minimum=0)
    return Blend(tuple(texts), weights, audio, audio_weight, _rate_of(audio, entry.get("audio_sampling_rate")))


def read(o) -> Optional[Conditioning]:
    """A checked request's conditions with every audio prompt read once (16 kHz, as audio_prompt.py reads it),
    or None when it asks for none of this."""
    if not asks(o):
        return None

    def with_audio(blend: Blend, name: str) -> Blend:
        if blend.audio is None:
            return blend
        wave = read_audio_prompt(blend.audio, blend.audio_rate, name)
        return Blend(blend.texts, blend.weights, wave, blend.audio_weight, None)

    if o.schedule is not None:
        entries = [(float(at), with_audio(entry_blend(entry, f"{arg('schedule')}[{i}]"),
                                          f"{arg('schedule')}[{i}]'s audio_prompt"))
                   for i, (at, entry) in enumerate(o.schedule)]
        return Conditioning(None, entries, o.blend, None if o.travel is None else float(o.travel))
    blends = _row_blends(o)
    read_once = with_audio(blends[0], arg("audio_prompt"))  # every row shares the one audio prompt
    return Conditioning([Blend(b.texts, b.weights, read_once.audio, b.audio_weight) for b in blends], None,
                        o.blend, None)


def check_schedule_length(c: Optional[Conditioning], seconds: float) -> None:
    """Every entry of a schedule within the piece: 0 <= time < its length."""
    if c is None or c.schedule is None:
        return
    for i, (at, _) in enumerate(c.schedule):
        if at >= seconds:
            raise RequestError(f"{arg('schedule')}[{i}] at {at:g} s is past the piece's end ({seconds:g} s): every "
                               "entry must start within it")


def mix(vectors: torch.Tensor, weights: Sequence[float], mode: str) -> torch.Tensor:
    """(P, D) unit vectors and P weights (>= 0, not all 0) -> (D,) the blend, unit length; one part: itself."""
    nonzero = [i for i, w in enumerate(weights) if w > 0]
    if len(nonzero) == 1:
        return vectors[nonzero[0]]
    v = vectors.double()
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64, device=vectors.device)
    w = w / w.sum()
    if mode == "slerp":
        a, b = v[0] / v[0].norm(), v[1] / v[1].norm()
        theta = torch.arccos(torch.clamp(a @ b, -1.0, 1.0))
        if float(theta) < 1e-6:  # (nearly) the same direction: the arc is a point
            out = w[0] * a + w[1] * b
        else:
            out = (torch.sin(w[0] * theta) * a + torch.sin(w[1] * theta) * b) / torch.sin(theta)
    else:
        out = (w[:, None] * v).sum(0)
    norm = out.norm()
    if float(norm) < 1e-6:
        raise RequestError("the blend's parts cancel out (their weighted sum is the zero vector); change a weight")
    return (out / norm).to(vectors.dtype)


def vectors(blends: Sequence[Blend], mode: str, texts: Callable[[List[str]], torch.Tensor],
            audio: Callable[[List[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
    """Blends -> (N, D) their condition vectors: each distinct text encoded once (texts: prompts -> (n, D)),
    each distinct clip once (audio: 16 kHz clips -> (n, D))."""
    unique_texts = list(dict.fromkeys(t for b in blends for t in b.texts))
    clips = list({id(b.audio): b.audio for b in blends if b.audio is not None}.values())
    text_vecs = texts(unique_texts) if unique_texts else None
    audio_vecs = audio(clips) if clips else None
    out = []
    for b in blends:
        parts = [text_vecs[unique_texts.index(t)] for t in b.texts]
        if b.audio is not None:
            parts.append(audio_vecs[[id(c) for c in clips].index(id(b.audio))])
        out.append(mix(torch.stack(parts), b.part_weights(), mode))
    return torch.stack(out)


def schedule_weights(times: Sequence[float], t: float, travel: float, length: float,
                     loop: bool) -> List[Tuple[int, float]]:
    """The entries in force at time t and their weights: [(i, 1.0)], or two (previous, next) mid-transition.
    times: the entries' (increasing, within [0, length)); travel: seconds of each transition."""
    n = len(times)
    if n == 1:
        return [(0, 1.0)]
    if loop:  # the ring: the last entry before the first, the first after the last
        t = t % length
        at = [times[-1] - length] + list(times) + [times[0] + length]
        index = [n - 1] + list(range(n)) + [0]
    else:
        at, index = list(times), list(range(n))

    def half(k: int) -> float:  # half the travel into entry k, cut to half the gap to either neighbour
        gaps = [at[k] - at[k - 1]] if k > 0 else []
        gaps += [at[k + 1] - at[k]] if k + 1 < len(at) else []
        return min([travel / 2] + [g / 2 for g in gaps])

    k = max([j for j in range(len(at)) if at[j] <= t], default=-1)
    for into in (k + 1, k):  # the transition into the next entry, then the one into the current
        if 0 < into < len(at) and index[into - 1] != index[into]:
            h = half(into)
            if h > 0 and at[into] - h < t < at[into] + h:
                alpha = (t - (at[into] - h)) / (2 * h)
                return [(index[into - 1], 1.0 - alpha), (index[into], alpha)]
    return [(index[max(k, 0)], 1.0)]


def window_centres(frames: int, window: int, overlap: int, loop: bool, frame_seconds: float) -> List[float]:
    """Seconds at the centre of each denoising window (longform.window_starts), in window order."""
    starts = window_starts(frames, window, window - overlap, loop)
    span = window if loop or frames > window else frames
    return [((s + span / 2) % frames if loop else s + span / 2) * frame_seconds for s in starts]


def window_vectors(c: Conditioning, entries: torch.Tensor, centres: Sequence[float], length: float,
                   loop: bool) -> torch.Tensor:
    """(E, D) the schedule's entry vectors -> (W, D) the vector of each window: the entries in force at its centre
    mixed by their weights (one entry: its vector itself), over transitions of c.travel seconds."""
    times = [at for at, _ in c.schedule]
    out = []
    for t in centres:
        weights = schedule_weights(times, t, c.travel, length, loop)
        out.append(mix(entries[[i for i, _ in weights]], [w for _, w in weights], c.blend))
    return torch.stack(out)
