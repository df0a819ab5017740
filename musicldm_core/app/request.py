"""The one vocabulary of a request: every field a person can set, defined once.

`Request` is the typed request of the command line, a batch line and the page. Each of its fields
carries, beside its type and default, what the surfaces derive from it (FIELDS):

* its short name: the batch line's and the page's field, and the flag (`--exact-batches` for
  exact_batches);
* `api`: the `pipe(...)` argument it feeds (diffusers' name), whose checks it gets: the translation
  between short names and diffusers' is `pipeline_options` and `names`, nowhere else;
* `where`: the surfaces beyond the command line that take it ("line": a batch line, "page": a job);
* `recorded`: how the remake command keeps it ("always", "changed": when not the default);
* `help`, and for fields that feed no pipeline argument, `bounds`.

The command line's parser (cli.build_parser), a batch line's fields (prompt_file.FIELDS), the page's fields and
its OpenAPI schema, and the remake command a file carries (remake_command) are all derived from here.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..errors import RequestError
from ..hub import DEFAULT_REPO
from ..presets import ATTENTION_HEADS

SEED_BOUNDS = (0, 2**64 - 1)


def _field(kind: type, default=None, *, help: str, api: Optional[str] = None, where: str = "",  # noqa: A002
           recorded: str = "changed", bounds: Optional[Tuple] = None, choices: Tuple = (),
           metavar: Optional[str] = None) -> dataclasses.Field:
    """A Request field and what the surfaces derive from it (the module's docstring names each)."""
    return field(default=default, metadata={"kind": kind, "help": help, "api": api, "where": where.split(),
                                            "recorded": recorded, "bounds": bounds, "choices": choices,
                                            "metavar": metavar})


@dataclass(frozen=True)
class Request:
    """What a person asks for, in short names (diffusers' names in `api`); the order is the remake command's."""

    prompt: Optional[str] = _field(str, help="what the music should sound like", api="prompt", where="line page")
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


FIELDS: Tuple[dataclasses.Field, ...] = dataclasses.fields(Request)
BY_NAME: Dict[str, dataclasses.Field] = {f.name: f for f in FIELDS}


def flag(name: str) -> str:
    """A field's command-line flag: exact_batches -> --exact-batches."""
    return "--" + name.replace("_", "-")


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
    words = ["musicldm", request.prompt, "-o", output]
    for f in FIELDS[1:]:
        value = getattr(request, f.name)
        if value is None or (f.metadata["recorded"] == "changed" and value == f.default):
            continue
        if f.metadata["kind"] is bool:
            words.append(flag(f.name))
            continue
        text = value if isinstance(value, str) else repr(value)
        words += [f"{flag(f.name)}={text}"] if text.startswith("-") else [flag(f.name), text]
    if request.prompt.startswith("-"):
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
        else:
            parser.add_argument(flag(f.name), type=meta["kind"], default=default, metavar=meta["metavar"],
                                choices=list(meta["choices"]) or None,
                                help=meta["help"] or argparse.SUPPRESS)
