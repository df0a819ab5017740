"""`musicldm "techno with a fast beat" -o techno.wav`: text to music (WAV, FLAC or OGG); with
`--prompts FILE --out-dir DIR`, a whole prompt file (batch.py), also under torchrun; `musicldm serve`, a
local page (serve.py).

Errors print as one line and exit non-zero (with --debug: the traceback); everything that can be
checked without the model (arguments, every output path) is checked before loading it. Files are
written to temporary names in the target folder and renamed, all takes or none, so a failure never
leaves a partial file or a partial set. Every file carries the command that remakes it (its comment
tag), and `musicldm --from FILE` runs that command again. --help and --version import no torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

from .files import RATES, audio_crops, audio_hashes, check_hashes, check_outputs, output_paths, read_tag
from .request import (FIELDS, Request, add_arguments, audio_files, check_bounds, fields_of, names, remake_command,
                      renamed, short_names, with_like_paths)
from ..presets import PRESETS, pipeline_kwargs

RANK_WAIT_SECONDS = 60.0  # how long a rank > 0 waits for rank 0 to report a failed check (see main)

FLAGS = names("flag")  # the pipeline's argument names -> the flags, for error messages


def build_parser() -> argparse.ArgumentParser:
    """The request's fields as flags (request.py), then the command's own: where to write, batch mode, --from."""
    p = argparse.ArgumentParser(prog="musicldm", description="Generate music from text with MusicLDM.",
                                epilog="Also: `musicldm serve` opens a local page to make music in the browser "
                                "(`musicldm serve --help`); `musicldm score PROMPT FILE...` scores audio files "
                                "against a prompt with CLAP.")
    add_arguments(p)
    p.add_argument("-o", "--output", default=None, help="the file to write, its extension the format: .wav "
                   "(float32), .flac (24-bit) or .ogg (default: music.wav; with --from: FILE-remade); with --takes "
                   "N > 1: NAME-1.wav ... NAME-N.wav, best first")
    p.add_argument("--version", action="store_true", help="print the versions of musicldm_core, torch and Python")
    p.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="remake FILE: run again the command its comment tag records (bit for bit on the same "
                   "machine and device); -o names the new file, and other flags beside it override the file's")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="authors: the authors' own settings (DDIM, 200 steps, guidance 2, eta 1, the best of 5 "
                   "takes ranked by CLAP); flags given beside it win")
    p.add_argument("--prompts", default=None, help="batch mode: a JSON Lines file (one {\"prompt\": ...} a line; "
                   f"optional id, {', '.join(k for k in fields_of('line') if k != 'prompt')}) or a text file, one "
                   "prompt a line; the options above are the defaults")
    p.add_argument("--out-dir", default=None, help="batch mode: the folder for <id>.wav files and manifest.jsonl")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch mode: items per model call (default: 8 on cuda, else 4)")
    p.add_argument("--skip-bad", action="store_true", help="batch mode: report bad lines and go on without them")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def check_args(args: argparse.Namespace) -> None:
    """What the command line itself can check; the generation's values are checked by Options."""
    conditioned = args.like is not None or bool(args.blend) or bool(args.schedule)  # a prompt may be left out
    if args.prompts is not None and args.prompt is not None or args.prompts is None and args.prompt is None \
            and not conditioned:
        raise ValueError("give a PROMPT (or --like, --blend, --at), or --prompts FILE with --out-dir DIR (not both)")
    if args.prompts is not None and args.out_dir is None:
        raise ValueError("--prompts needs --out-dir DIR, the folder the files and manifest.jsonl go to")
    check_bounds("seed", args.seed, "--seed")
    check_bounds("threads", args.threads, "--threads")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0 <= args.eta <= 1:  # DDIM's variance goes negative past 1
        raise ValueError(f"--eta must be between 0 and 1, got {args.eta}")
    if args.eta and args.sampler not in (None, "ddim"):  # the other samplers have no eta: it would do nothing
        raise ValueError(f"--eta is DDIM's share of fresh noise; --sampler {args.sampler} has none: leave --eta out "
                         "or use --sampler ddim")
    if args.sample_rate is not None and not RATES[0] <= args.sample_rate <= RATES[1]:
        raise ValueError(f"--sample-rate must be between {RATES[0]} and {RATES[1]} Hz, got {args.sample_rate}")
    if args.take is not None and not 1 <= args.take <= args.takes:
        raise ValueError(f"--take must be between 1 and --takes ({args.takes}), got {args.take}")


class TagError(ValueError):
    """A file's remake command that does not parse: the fault is the file's, not the user's flags."""


def _without(words: List[str], flags: Tuple[str, ...]) -> List[str]:
    """The words less each of `flags` with its value (`-o X`, `--output=X`, `-oX`)."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        elif not any(word.startswith(f + "=") or (len(f) == 2 and word.startswith(f) and word != f) for f in flags):
            out.append(word)
    return out


def parse_tag(command: str, source: str, overrides: List[str] = []) -> argparse.Namespace:
    """A file's remake command (its tag) as the arguments it records, with `overrides` (flags typed beside
    --from) after them, so that they win. A tag that does not parse is a TagError naming the file."""
    def fault(problem: str):
        raise TagError(f"--from: the tag of {str(source)!r} does not parse ({problem}): {command[:60]!r}...")

    try:
        words = shlex.split(command) if command.startswith("musicldm ") else []
    except ValueError as e:  # unbalanced quotes
        fault(str(e))
    if not words:
        raise ValueError(f"--from: {str(source)!r} records no musicldm command (no comment tag starting 'musicldm ')")
    tag_parser = build_parser()
    tag_parser.error = fault  # the file's own words: a fault is the tag's, not the user's
    try:
        tag_parser.parse_args(words[1:])
    except SystemExit:  # -h (or --he, ...) in a tag: argparse printed its help
        fault("it asks for --help")
    cut = words.index("--") if "--" in words else len(words)  # (a prompt that begins with '-' comes after --)
    return build_parser().parse_args(words[1:cut] + overrides + words[cut:])  # the user's flags: argparse's own


def remake_args(args: argparse.Namespace) -> argparse.Namespace:
    """--from FILE: the command FILE's comment tag records, writing to -o (default FILE-remade.EXT). Flags
    typed beside --from override the file's: then the remake is not the file bit for bit, and a line says
    which were overridden."""
    if args.prompt is not None or args.prompts is not None:
        raise ValueError("--from remakes the file's own prompt: give no PROMPT or --prompts beside it")
    if not Path(args.source).is_file():
        raise ValueError(f"--from: no such file {args.source!r}")
    try:
        command = read_tag(args.source)
    except Exception as e:  # soundfile raises its own LibsndfileError, or RuntimeError / OSError
        raise ValueError(f"--from: cannot read {args.source!r} ({str(e).splitlines()[0]})") from None
    overrides = _without(args.argv, ("--from", "-o", "--output", "--debug"))
    remade = parse_tag(command, args.source, overrides)
    source = Path(args.source)
    remade.output = args.output or str(source.with_name(f"{source.stem}-remade{source.suffix}"))
    remade.debug, remade.argv = args.debug, []
    flags = [word.split("=")[0] for word in overrides if word.startswith("-")]
    if flags:
        print(f"musicldm: remaking {source.name} with {', '.join(flags)} overridden (not the file bit for bit)",
              file=sys.stderr)
    else:
        remade.recipe = command  # the remade file carries the same tag: the same bytes
    return remade


def request_of(args: argparse.Namespace, **decided) -> Request:
    """The command line's request: its flags by name (request.py), with the values decided since (`decided`)."""
    return Request(**{**{f.name: getattr(args, f.name) for f in FIELDS}, **decided})


def remake_tags(args: argparse.Namespace, seed: int, sampler: str, device, dtype: str, threads: int,
                takes: List[int]) -> List[str]:
    """The commands that remake `takes` of this run (request.remake_command), for the files' comment tags: the
    values decided since parsing (the seed, the sampler, device, dtype, threads on a CPU, the input's and the
    audio prompts' absolute paths, each audio prompt's SHA-256), the take when there are several."""
    recorded = request_of(args, seed=seed, sampler=sampler, device=str(device), dtype=dtype,
                          threads=threads if device.type == "cpu" else None,
                          input=args.input and os.path.abspath(args.input), **absolute_audio_prompts(args))
    hashes = audio_hashes(audio_files(recorded))  # once for every take
    recorded = replace(recorded, sha256=[f"{path}={digest}" for path, digest in hashes.items()])
    return [remake_command(replace(recorded, take=k if args.takes > 1 else None), Path(args.output).name)
            for k in takes]


def absolute_audio_prompts(args: argparse.Namespace) -> dict:
    """--like and the --at entries' like: files by absolute path, as a remake command (and batch mode's
    defaults) record them."""
    return {"like": args.like and os.path.abspath(args.like),
            "schedule": [(at, with_like_paths(entry, os.path.abspath)) for at, entry in args.schedule or ()]}


def run(args: argparse.Namespace) -> List[str]:
    """One prompt: everything is checked before the weights load (the arguments, the input audio read once,
    the request against the checkpoint's configs and the memory, the output paths), then generated as
    `pipe(...)` would with the same arguments. Returns a line per file."""
    import random

    import torch

    from ..resampler import resample
    from ..load import open_checkpoint
    from ..options import AUDIO_RATE, Options
    from .files import file_line, write_audio
    from .prepare import open_pipeline, options_of, prepare, run_device
    from .progress import StageProgress

    if args.input is None and (args.strength is not None or args.inpaint is not None or args.extend is not None):
        raise ValueError("--strength, --inpaint and --extend need --input FILE")
    check_hashes(args.sha256 or ())  # a remake: its audio prompts as they were
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**63)
    request = request_of(args, seed=seed)
    progress = StageProgress()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = run_device(args.device, args.dtype)
    ready = prepare(options_of([request], Options(progress=progress)),
                    lambda: open_checkpoint(args.weights, args.revision), device)
    if args.loop and args.seconds is not None and abs(ready.run.seconds - args.seconds) > 0.5 / AUDIO_RATE:
        frame = ready.run.geometry.frame_seconds
        print(f"musicldm: --loop rounds --seconds {args.seconds:g} to {ready.run.seconds:g} s (a loop is a whole "
              f"number of {1000 * frame:g} ms latent frames)", file=sys.stderr)
    for path, start in audio_crops(audio_files(request)).items():
        print(f"musicldm: {path} is longer than 10 s: its centred 10 s, from {start:.3f} s, conditions the music",
              file=sys.stderr)
    paths = output_paths(args.output, 1 if args.take else args.takes)  # checked by command(), before torch
    pipe = open_pipeline(ready.checkpoint.folder, device, dtype, args.attention_heads, args.compile, args.exact_batches)
    audio = pipe.generate(ready.options, ready.run).audios
    progress.close()
    audio, rate = audio[args.take - 1:args.take] if args.take else audio, pipe.sampling_rate
    if args.sample_rate is not None and args.sample_rate != rate:
        audio = resample(torch.from_numpy(audio).double(), rate, args.sample_rate).float().numpy()
        rate = args.sample_rate
    sampler = args.sampler or pipe.scheduler.name
    threads = torch.get_num_threads()
    takes = [args.take] if args.take else list(range(1, args.takes + 1))
    tags = [args.recipe] * len(takes) if getattr(args, "recipe", None) else remake_tags(
        args, seed=seed, sampler=sampler, device=device, dtype=dtype, threads=threads, takes=takes)
    write_audio(paths, audio, rate, comments=tags)
    if args.compile:
        print("musicldm: compiled " + ", ".join(f"{k} in {v:.1f} s" for k, v in pipe.compile_seconds().items()),
              file=sys.stderr)
    return [file_line(path, audio.shape[-1] / rate, seed, sampler, args.steps, args.guidance) for path in paths]


def keep_freed_memory() -> None:
    """Let this process reuse the memory it frees instead of handing it back to the system (glibc's
    malloc; elsewhere nothing changes). By default glibc serves every large block (the VAE's and the
    vocoder's activations: 32-128 MB at 10.24 s) with a fresh mmap and unmaps it when freed, so each new
    activation is paid again in page faults: 1-1.6 s of kernel time per 10.24 s decoded and vocoded,
    measured (benchmarks/results/stages-cpu-2026-12-06.md). Kept, the peak resident memory stays for the
    rest of the run, which a command that ends anyway does not mind. The arithmetic is untouched: the same
    bytes come out."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl, Windows)
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)  # large blocks from the heap too, not one mmap each
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # and the heap not trimmed back after each free


def print_version() -> None:
    """Versions without importing torch (read from the installed packages' metadata)."""
    import platform
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    from .. import __version__

    print(f"musicldm_core {__version__}, torch {version('torch')}, Python {platform.python_version()}")


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The arguments; a --preset's settings become the defaults, so flags given beside it win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset is not None:
        preset = short_names(pipeline_kwargs(args.preset))
        parser.set_defaults(**preset)
        args = parser.parse_args(argv)
        typed_eta = any(word == "--eta" or word.startswith("--eta=") for word in argv or [])
        if args.sampler != preset["sampler"] and not typed_eta:  # the preset's eta is its DDIM's: not another sampler's
            parser.set_defaults(eta=0.0)
            args = parser.parse_args(argv)
        if args.prompts is None and args.take is None and args.takes > 1:
            args.take = 1  # one prompt: write only the best-ranked take, as the authors keep
    args.argv = list(argv or [])  # as typed: --from lets flags beside it override the file's
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # `musicldm serve ...`: the page (a prompt "serve": `musicldm -- serve`)
        from .serve import main as serve

        return serve(argv[1:])
    if argv[:1] == ["score"]:  # `musicldm score PROMPT FILE...`: CLAP relevance (a prompt "score": `-- score`)
        from .score import main as score

        return score(argv[1:])
    args = parse(argv)
    if args.version:
        print_version()
        return 0
    try:
        with warnings.catch_warnings():  # a warning is one line too
            warnings.showwarning = lambda message, *_, **__: print(f"musicldm: warning: {message}", file=sys.stderr)
            return_code = command(args)
        # done: a Ctrl-C from here on (during shutdown) must not print a traceback over a finished run
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return return_code
    except KeyboardInterrupt:
        print("musicldm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        rank = int(os.environ.get("RANK", 0))
        if rank > 0 and not getattr(args, "checked", False):
            # under torchrun every rank runs the same checks first, and rank 0 alone says what failed. This
            # rank waits for rank 0 to end the job (torchrun then stops it): exiting first would have torchrun
            # stop rank 0 too, perhaps before its line is out.
            time.sleep(RANK_WAIT_SECONDS)
            return 1
        e = renamed(e, FLAGS)  # a core error names pipe()'s arguments: here, the flags that gave them
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"musicldm: error: {f'rank {rank}: ' if rank else ''}{message}", file=sys.stderr)
        return 1


def command(args: argparse.Namespace) -> int:
    """The command's work, once its arguments are parsed: a remake, a batch or a single run."""
    if args.source is not None:
        args = remake_args(args)
    check_args(args)
    keep_freed_memory()  # both paths below: single runs and batch mode
    if args.prompts is not None:
        from .batch import run as run_batch

        defaults = {"negative": args.negative, "seconds": args.seconds, "seed": None, "steps": args.steps,
                    "guidance": args.guidance, "takes": args.takes, "sampler": args.sampler, "loop": args.loop,
                    "window": args.window, "exact_batches": args.exact_batches, "like_weight": args.like_weight,
                    "blend": list(args.blend or ()), "blend_mode": args.blend_mode, "travel": args.travel,
                    **absolute_audio_prompts(args)}
        run_batch(args, defaults)
        return 0
    args.output = args.output or "music.wav"
    check_outputs(output_paths(args.output, 1 if args.take else max(1, args.takes)))  # before torch is imported
    for line in run(args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
