"""The one vocabulary of a request: every field a person can set, defined once.

`Request` is the typed request of the command line, a batch line and the page. Each of its fields
carries, beside its type and default, what the surfaces derive from it (FIELDS):

* its short name: the batch line's and the page's field, and the flag (`--exact-batches` for
  exact_batches);
* `api`: the `pipe(...)` argument it feeds (diffusers' name), whose checks it gets: the translation
  between short names and diffusers' is `pipeline_options` and `names`, nowhere else (blend and schedule
  are written in words, "TEXT:W | like:FILE:W": `condition_options` reads them);
* `where`: the surfaces beyond the command line that take it ("line": a batch line, "page": a job);
* `recorded`: how the remake command keeps it ("always", "changed": when not the default);
* `help`, and for fields that feed no pipeline argument, `bounds`.

The command line's parser (cli.build_parser), a batch line's fields (prompt_file.FIELDS), the page's fields and
its OpenAPI schema, and the remake command a file carries (remake_command) are all derived from here.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import RequestError
from ..hub import DEFAULT_REPO
from ..presets import ATTENTION_HEADS

SEED_BOUNDS = (0, 2**64 - 1)


def _field(kind: type, default=None, *, help: str, api: Optional[str] = None, where: str = "",  # noqa: A002
           recorded: str = "changed", bounds: Optional[Tuple] = None, choices: Tuple = (),
           metavar=None, flag: Optional[str] = None) -> dataclasses.Field:
    """A Request field and what the surfaces derive from it (the module's docstring names each). A `list`
    field is a flag that may repeat (a tuple of its values; metavar a pair: each value a pair)."""
    return field(default=default, metadata={"kind": kind, "help": help, "api": api, "where": where.split(),
                                            "recorded": recorded, "bounds": bounds, "choices": choices,
                                            "metavar": metavar, "flag": flag})


@dataclass(frozen=True)
class Request:
    """What a person asks for, in short names (diffusers' names in `api`); the order is the remake command's."""

    prompt: Optional[str] = _field(str, help="what the music should sound like (may be left out with --like, --blend "
                                   "or --at)", api="prompt", where="line page")
    seed: Optional[int] = _field(int, help="random seed, for reproducible output", where="line page",
                                 recorded="always", bounds=SEED_BOUNDS)
    steps: int = _field(int, 200, help="denoising steps (default: 200)", api="num_inference_steps", where="line page",
                        recorded="always")
    guidance: float = _field(float, 2.0, help="classifier-free guidance scale (default: 2.0)", api="guidance_scale",
                             where="line page", recorded="always")
    sampler: Optional[str] = _field(str, help="ddim, pndm, lms, euler, euler_ancestral, heun or dpmsolver++ "
                                    "(default: the checkpoint's own, DDIM)", api="sampler", where="line page",
                                    recorded="always")
    weights: str = _field(str, DEFAULT_REPO, help=f"checkpoint folder or Hub repo id (default: {DEFAULT_REPO})",
                          recorded="always")
    device: Optional[str] = _field(str, help="cpu, cuda, cuda:N or mps (default: the best available)",
                                   recorded="always")
    dtype: Optional[str] = _field(str, help="precision (default: float16 on cuda, else float32)", recorded="always",
                                  choices=("float32", "float16", "bfloat16"))
    threads: Optional[int] = _field(int, help="CPU threads (default: all; under torchrun, each process its share)",
                                    recorded="always", bounds=(1, None))
    negative: Optional[str] = _field(str, help="what the music should not sound like", api="negative_prompt",
                                     where="line page")
    seconds: Optional[float] = _field(float, help="length in seconds (default: 10.24)", api="audio_length_in_s",
                                      where="line page")
    like: Optional[str] = _field(str, help="an audio file: music like it (its CLAP audio vector, the condition MusicLDM "
                                 "was trained on); with a PROMPT, a blend of the two", api="audio_prompt",
                                 where="line page", metavar="FILE")
    like_weight: float = _field(float, 1.0, help="--like's weight beside the texts' (each 1 unless --blend says; "
                                "relative: 0.4 beside one prompt gives the clip 0.4/1.4 of the blend)",
                                api="audio_prompt_weight", where="line page", metavar="W")
    blend: Tuple[str, ...] = _field(list, (), api="prompt_weights", where="line page", metavar="TEXT:W", help=(
        "a text in the blend with its weight (may repeat; a PROMPT beside them weighs 1): the prompts' CLAP "
        "vectors mixed into one condition"))
    blend_mode: str = _field(str, "linear", api="blend", where="line page", choices=("linear", "slerp"), help=(
        "linear (default: the weighted mean, made unit length; any number of parts) or slerp (spherical "
        "interpolation between two parts)"))
    schedule: Tuple[Tuple[str, str], ...] = _field(list, (), api="schedule", where="line page", flag="--at",
                                                   metavar=("SECONDS", "ENTRY"), help=(
        "from SECONDS on, condition on ENTRY: a text, or parts 'TEXT:W | like:FILE:W' (may repeat, in time "
        "order; each window of the piece takes the schedule at its centre)"))
    travel: Optional[float] = _field(float, api="travel", where="line page", metavar="SECONDS",
                                     help="with --at: the seconds each change takes (default: one window, 10.24 s)")
    revision: Optional[str] = _field(str, help="Hub revision (branch, tag or commit) of --weights")
    input: Optional[str] = _field(str, help="audio-to-audio: an audio file (any format soundfile reads); the output "
                                  "is as long (plus --extend)", api="audio")
    strength: Optional[float] = _field(float, help="with --input: how far to move from it, 0 (a round trip) to 1 "
                                       "(default 0.6)", api="strength", where="page")
    inpaint: Optional[str] = _field(str, help="with --input: regenerate this span (seconds), keep the rest",
                                    api="inpaint", where="page", metavar="START:END")
    extend: Optional[float] = _field(float, help="with --input: continue it", api="extend", where="page",
                                     metavar="SECONDS")
    sample_rate: Optional[int] = _field(int, help="resample the 16 kHz output to HZ (8000 to 192000), e.g. 44100 or "
                                        "48000", metavar="HZ")
    eta: float = _field(float, 0.0, help="DDIM's share of fresh noise per step, 0 (default, deterministic) to 1 (the "
                        "authors')", api="eta")
    attention_heads: str = _field(str, "checkpoint", choices=ATTENTION_HEADS,
                                  help="checkpoint (default): the config's heads, exact to diffusers; authors: 32 "
                                  "channels a head, the layout MusicLDM was trained with (diffusers' conversion of the "
                                  "published weights left its default of 8)")
    loop: bool = _field(bool, False, help="a seamless loop: the end flows into the start", api="loop",
                        where="line page")
    exact_batches: bool = _field(bool, False, where="line page", help=(
        "run the UNet one row at a time so that an item made in a batch equals its single run to the last bit "
        "(slower: for regression tests and reproducibility studies; without it, items of one batch differ from "
        "their single runs by about 1e-6 relative)"))
    compile: bool = _field(bool, False, help="compile the models first (torch.compile; pays off for long runs: "
                           "compiling takes a minute or more on a CPU, once per length and batch)")
    window: str = _field(str, "auto", api="window", where="line", choices=("auto", "whole", "windowed"),
                         help="auto (default): the reference's whole-clip path up to 10.24 s, overlapping windows "
                         "beyond")
    takes: int = _field(int, 1, help="takes to generate and rank with CLAP (default: 1)",
                        api="num_waveforms_per_prompt", where="line page")
    take: Optional[int] = _field(int, help="", recorded="always")  # write only take K (a remake of one take)
    # FILE=SHA256 of each audio prompt as it was (a remake checks that it still is)
    sha256: Tuple[str, ...] = _field(list, (), help="", recorded="always")

    def __post_init__(self) -> None:  # a repeated flag not given is None to argparse; a JSON value is a list
        for f in FIELDS_OF_LISTS:
            object.__setattr__(self, f, as_tuples(getattr(self, f) or ()))


FIELDS: Tuple[dataclasses.Field, ...] = dataclasses.fields(Request)
BY_NAME: Dict[str, dataclasses.Field] = {f.name: f for f in FIELDS}
FIELDS_OF_LISTS = tuple(f.name for f in FIELDS if f.metadata["kind"] is list)  # flags that may repeat
# the condition beyond the prompt: a request that sets one runs alone (batch mode's Item.group)
CONDITION_FIELDS = ("like", "like_weight", "blend", "blend_mode", "schedule", "travel")


def as_tuples(value):
    """A JSON list (or a repeated flag's list of values, each a list for a pair) as a request holds it: a tuple of
    tuples; anything else as it is."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(value, (list, tuple)) \
        else value


def flag(name: str) -> str:
    """A field's command-line flag: exact_batches -> --exact-batches (schedule: --at)."""
    return BY_NAME[name].metadata["flag"] or "--" + name.replace("_", "-")


def fields_of(surface: str) -> Dict[str, type]:
    """The fields a surface takes ("line": a batch line, "page": a page job), name -> type."""
    return {f.name: f.metadata["kind"] for f in FIELDS if surface in f.metadata["where"]}


def names(style: str) -> Dict[str, str]:
    """diffusers' argument -> the name a surface shows for it: "flag" (the command line), "line", "page".
    The edge that took a value renames a core error's arguments with this (`renamed`)."""
    return {f.metadata["api"]: flag(f.name) if style == "flag" else f.name for f in FIELDS if f.metadata["api"]
            and (style == "flag" and f.name != "prompt" or style in f.metadata["where"])}  # (PROMPT: positional)


def renamed(error: Exception, surface_names: Dict[str, str]) -> Exception:
    """A core error as a surface shows it: a RequestError's arguments by the surface's names (`names(...)`);
    any other error as it is. Called once, by the edge that took the values."""
    return error.renamed(surface_names) if isinstance(error, RequestError) else error


def pipeline_options(values: Dict[str, object]) -> Dict[str, object]:
    """Short names -> diffusers' (`pipe(...)` keywords), for the fields that feed one."""
    return {BY_NAME[k].metadata["api"]: v for k, v in values.items() if BY_NAME[k].metadata["api"]}


def short_names(kwargs: Dict[str, object]) -> Dict[str, object]:
    """diffusers' names -> the short ones (the inverse of pipeline_options)."""
    back = {f.metadata["api"]: f.name for f in FIELDS if f.metadata["api"]}
    return {back[k]: v for k, v in kwargs.items()}


def check_bounds(name: str, value, shown: str) -> None:
    """A field's own bounds (the seed's range, the threads' minimum), named as `shown`."""
    bounds = BY_NAME[name].metadata["bounds"]
    if value is None or bounds is None:
        return
    low, high = bounds
    if value < low or (high is not None and value > high):
        words = f"between {low} and {high}" if high is not None else f"at least {low}"
        words = f"an integer {words}" if BY_NAME[name].metadata["kind"] is int and high is not None else words
        raise ValueError(f"{shown} must be {words}, got {value}")


def remake_command(request: Request, output: str) -> str:
    """The command that remakes `request` into `output` (a file name), for the file's comment tag: each
    field as its `recorded` says, in FIELDS' order. Every word is quoted as a shell needs (shlex); a value
    that begins with '-' is written --flag=VALUE, and such a prompt comes last, after --, so that neither
    reads as a flag."""
    words = ["musicldm"] + [request.prompt] * (request.prompt is not None) + ["-o", output]
    for f in FIELDS[1:]:
        value = getattr(request, f.name)
        if value is None or (f.metadata["recorded"] == "changed" and value == f.default):
            continue
        if f.metadata["kind"] is bool:
            words.append(flag(f.name))
            continue
        if f.metadata["kind"] is list:  # the flag once per value
            words += [w for v in value for w in (
                [flag(f.name), *map(str, v)] if isinstance(v, tuple) else [f"{flag(f.name)}={v}"] if v.startswith("-")
                else [flag(f.name), v])]
            continue
        text = value if isinstance(value, str) else repr(value)
        words += [f"{flag(f.name)}={text}"] if text.startswith("-") else [flag(f.name), text]
    if request.prompt is not None and request.prompt.startswith("-"):
        words = [words[0]] + words[2:] + ["--", request.prompt]
    return shlex.join(words)


def parse_span(text: Optional[str]) -> Optional[tuple]:
    """inpaint's START:END in seconds -> (start, end)."""
    if text is None:
        return None
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--inpaint must be START:END in seconds (e.g. 2.0:4.5), got {text!r}") from None
    return start, end


def span_text(span: Optional[tuple]) -> Optional[str]:
    """(start, end) -> inpaint's START:END, each number as repr writes it (parse_span reads it back exactly)."""
    return None if span is None else ":".join(repr(v) for v in span)


def add_arguments(parser) -> None:
    """Each field as the command line's flag (the prompt as the positional argument), in FIELDS' order."""
    import argparse

    for f in FIELDS:
        meta, default = f.metadata, f.default
        if f.name == "prompt":
            parser.add_argument("prompt", nargs="?", default=None, help=meta["help"])
        elif meta["kind"] is bool:
            parser.add_argument(flag(f.name), action="store_true", help=meta["help"])
        elif meta["kind"] is list:
            pair = isinstance(meta["metavar"], tuple)
            parser.add_argument(flag(f.name), dest=f.name, action="append", nargs=2 if pair else None,
                                metavar=meta["metavar"], help=meta["help"] or argparse.SUPPRESS)
        else:
            parser.add_argument(flag(f.name), type=meta["kind"], default=default, metavar=meta["metavar"],
                                choices=list(meta["choices"]) or None,
                                help=meta["help"] or argparse.SUPPRESS)


# --- the condition's words: a blend part "TEXT:W", a schedule entry "TEXT:W | like:FILE:W" -------------------

_WEIGHTED = re.compile(r"(?P<text>.*\S)\s*:(?P<weight>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)")
LIKE = "like:"  # an entry's audio part: like:FILE or like:FILE:W


def parse_part(text: str, name: str) -> Tuple[str, float]:
    """A part "TEXT:W" -> (TEXT, W); without a trailing ":NUMBER" the weight is 1 (write "3:4:1" for the text "3:4")."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: a part must be a text, optionally TEXT:W, got {text!r}")
    m = _WEIGHTED.fullmatch(text.strip())
    return (m["text"], float(m["weight"])) if m else (text.strip(), 1.0)


def parse_entry(text: str, name: str):
    """A schedule entry -> what pipe(schedule=...) takes: the text itself, or a blend's mapping of its parts
    ("TEXT:W | TEXT:W | like:FILE:W", at most one like: part)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: an entry must be a text or parts 'TEXT:W | like:FILE:W', got {text!r}")
    parts = [p.strip() for p in text.split("|")]
    if len(parts) == 1 and not parts[0].startswith(LIKE) and not _WEIGHTED.fullmatch(parts[0]):
        return text
    entry: Dict[str, object] = {}
    texts, weights = [], []
    for part in parts:
        if part.startswith(LIKE):
            if "audio_prompt" in entry:
                raise ValueError(f"{name}: an entry takes one like: part, got {text!r}")
            entry["audio_prompt"], entry["audio_prompt_weight"] = parse_part(part[len(LIKE):], name)
        else:
            t, w = parse_part(part, name)
            texts.append(t)
            weights.append(w)
    if texts:
        entry.update(prompt=texts, prompt_weights=weights)
    return entry


def _like(part: str) -> Optional[Tuple[str, Optional[float]]]:
    """A like: part's (file, weight or None when it gives none); None for a text part or an empty like: (which
    parse_entry refuses by name)."""
    rest = part.strip()[len(LIKE):].strip() if part.strip().startswith(LIKE) else ""
    if not rest:
        return None
    m = _WEIGHTED.fullmatch(rest)
    return (m["text"], float(m["weight"])) if m else (rest, None)


def like_paths(text: str) -> List[str]:
    """The files an entry's like: parts name."""
    return [like[0] for like in map(_like, text.split("|")) if like]


def with_like_paths(text: str, where: Callable[[str], str]) -> str:
    """The entry with each like: file's path replaced by where(path) (a batch line's, relative to its file)."""
    def one(part: str) -> str:
        like = _like(part)
        if like is None:
            return part
        path, weight = like
        return f" {LIKE}{where(path)}" + (f":{weight!r}" if weight is not None else "") + " "
    return "|".join(one(p) for p in text.split("|")).strip() if LIKE in text else text


def condition_options(r: Request) -> Dict[str, object]:
    """A request's blend parts and schedule as pipe() keywords: --blend's parts (after the PROMPT, which weighs
    1) as prompt + prompt_weights; --at's entries as schedule [(seconds, entry), ...]. (--like, --like-weight,
    --blend-mode and --travel feed their pipe() arguments as any field does.)"""
    out: Dict[str, object] = {}
    if r.blend:
        parts = [(r.prompt, 1.0)] * (r.prompt is not None) + [parse_part(p, "--blend") for p in r.blend]
        out.update(prompt=[t for t, _ in parts], prompt_weights=[w for _, w in parts])
    if r.schedule:
        schedule = []
        for at, entry in r.schedule:
            try:
                seconds = float(at)
            except (TypeError, ValueError):
                raise ValueError(f"--at: SECONDS must be a number, got {at!r}") from None
            schedule.append((seconds, parse_entry(entry, f"--at {at}")))
        out["schedule"] = schedule
    return out


def audio_files(r: Request) -> List[str]:
    """Every audio prompt a request names (--like, and each --at entry's like: parts), in order."""
    return [r.like] * (r.like is not None) + [p for _, entry in r.schedule for p in like_paths(entry)]
