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
from pathlib import Path
from typing import List, Optional, Tuple

from .hub import DEFAULT_REPO
from .outputs import RATES, check_outputs, output_paths, read_tag, recipe
from .presets import ATTENTION_HEADS, PRESETS

RANK_WAIT_SECONDS = 60.0  # how long a rank > 0 waits for rank 0 to report a failed check (see main)

# the pipeline's argument names -> the flags a user of the command typed, for error messages
FLAGS = {"audio_length_in_s": "--seconds", "num_inference_steps": "--steps", "guidance_scale": "--guidance",
         "num_waveforms_per_prompt": "--takes", "negative_prompt": "--negative", "loop": "--loop",
         "window": "--window", "audio": "--input", "strength": "--strength", "inpaint": "--inpaint",
         "extend": "--extend", "sampler": "--sampler", "eta": "--eta"}


def parse_span(text: Optional[str]) -> Optional[tuple]:
    """--inpaint START:END in seconds."""
    if text is None:
        return None
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--inpaint must be START:END in seconds (e.g. 2.0:4.5), got {text!r}") from None
    return start, end


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musicldm", description="Generate music from text with MusicLDM.",
                                epilog="Also: `musicldm serve` opens a local page to make music in the browser "
                                "(`musicldm serve --help`).")
    p.add_argument("prompt", nargs="?", default=None, help="what the music should sound like")
    p.add_argument("-o", "--output", default=None, help="the file to write, its extension the format: .wav "
                   "(float32), .flac (24-bit) or .ogg (default: music.wav; with --from: FILE-remade); with --takes "
                   "N > 1: NAME-1.wav ... NAME-N.wav, best first")
    p.add_argument("--version", action="store_true", help="print the versions of musicldm_core, torch and Python")
    p.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="remake FILE: run again the command its comment tag records (bit for bit on the same "
                   "machine and device); -o names the new file, and other flags beside it override the file's")
    p.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                   help=f"resample the 16 kHz output to HZ ({RATES[0]} to {RATES[1]}), e.g. 44100 or 48000")
    p.add_argument("--take", type=int, default=None, help=argparse.SUPPRESS)  # write only take K (--from)
    p.add_argument("--negative", default=None, help="what the music should not sound like")
    p.add_argument("--seconds", type=float, default=None, help="length in seconds (default: 10.24)")
    p.add_argument("--steps", type=int, default=200, help="denoising steps (default: 200)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default: 2.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible output")
    p.add_argument("--takes", type=int, default=1, help="takes to generate and rank with CLAP (default: 1)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's share of fresh noise per step, 0 (default, "
                   "deterministic) to 1 (the authors')")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="authors: the authors' own settings (DDIM, 200 steps, guidance 2, eta 1, the best of 5 "
                   "takes ranked by CLAP); flags given beside it win")
    p.add_argument("--attention-heads", choices=list(ATTENTION_HEADS), default="checkpoint",
                   help="checkpoint (default): the config's heads, exact to diffusers; authors: 32 channels a head, "
                   "the layout MusicLDM was trained with (diffusers' conversion of the published weights left its "
                   "default of 8)")
    p.add_argument("--sampler", default=None, help="ddim, pndm, lms, euler, euler_ancestral, heun or dpmsolver++ "
                   "(default: the checkpoint's own, DDIM)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="precision (default: float16 on cuda, else float32)")
    p.add_argument("--weights", default=DEFAULT_REPO, help=f"checkpoint folder or Hub repo id (default: {DEFAULT_REPO})")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --weights")
    p.add_argument("--loop", action="store_true", help="a seamless loop: the end flows into the start")
    p.add_argument("--window", choices=["auto", "whole", "windowed"], default="auto",
                   help="auto (default): the reference's whole-clip path up to 10.24 s, overlapping windows beyond")
    p.add_argument("--input", default=None, help="audio-to-audio: an audio file (any format soundfile reads); the "
                   "output is as long (plus --extend)")
    p.add_argument("--strength", type=float, default=None,
                   help="with --input: how far to move from it, 0 (a round trip) to 1 (default 0.6)")
    p.add_argument("--inpaint", default=None, metavar="START:END",
                   help="with --input: regenerate this span (seconds), keep the rest")
    p.add_argument("--extend", type=float, default=None, metavar="SECONDS", help="with --input: continue it")
    p.add_argument("--prompts", default=None, help="batch mode: a JSON Lines file (one {\"prompt\": ...} a line; "
                   "optional id, negative, seconds, seed, steps, guidance, takes, sampler, loop, window, "
                   "exact_batches) or a text file, one prompt a line; the options above are the defaults")
    p.add_argument("--out-dir", default=None, help="batch mode: the folder for <id>.wav files and manifest.jsonl")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch mode: items per model call (default: 8 on cuda, else 4)")
    p.add_argument("--skip-bad", action="store_true", help="batch mode: report bad lines and go on without them")
    p.add_argument("--exact-batches", action="store_true",
                   help="run the UNet one row at a time so that an item made in a batch equals its single run to the "
                   "last bit (slower: for regression tests and reproducibility studies; without it, items of one "
                   "batch differ from their single runs by about 1e-6 relative)")
    p.add_argument("--compile", action="store_true", help="compile the models first (torch.compile; pays off "
                   "for long runs: compiling takes a minute or more on a CPU, once per length and batch)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: all; under torchrun, each process its share)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def check_args(args: argparse.Namespace) -> None:
    """What the command line itself can check; the generation's values are checked by Options."""
    if (args.prompt is None) == (args.prompts is None):
        raise ValueError("give a PROMPT, or --prompts FILE with --out-dir DIR (not both)")
    if args.prompts is not None and args.out_dir is None:
        raise ValueError("--prompts needs --out-dir DIR, the folder the files and manifest.jsonl go to")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed must be between 0 and {2**64 - 1}, got {args.seed}")
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
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


def edit_options(args: argparse.Namespace) -> dict:
    """The audio-to-audio options of the command line (--strength defaults to 0.6 with --input alone)."""
    options = {}
    if args.input is not None:
        edited = any(value is not None for value in (args.strength, args.inpaint, args.extend))
        strength = args.strength if edited else 0.6
        options.update(audio=args.input, strength=strength, inpaint=parse_span(args.inpaint), extend=args.extend)
    elif args.strength is not None or args.inpaint is not None or args.extend is not None:
        raise ValueError("--strength, --inpaint and --extend need --input FILE")
    return options


def run(args: argparse.Namespace) -> List[str]:
    """One prompt: the same computation as one item of a batch (batch.generate). Returns a line per file."""
    import random
    from dataclasses import replace

    import torch

    from .audio_frontend import resample
    from .batch import Item, generate, item_options
    from .geometry import Geometry
    from .load import open_checkpoint
    from .options import AUDIO_RATE, Options, read_input
    from .outputs import file_line, output_paths, write_audio
    from .pipeline import MusicLDMPipeline, plan_call
    from .placement import default_device, parse_device
    from .progress import StageProgress

    # Everything is checked before the weights load: the arguments, the input audio (read once), the request
    # against the checkpoint's configs (lengths, sampler, memory), then the output paths.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**63)
    item = Item(0, "cli", args.prompt, args.negative, args.seconds, seed, args.steps, args.guidance, args.takes,
                args.sampler, args.loop, args.window, args.exact_batches)
    template = Options(**edit_options(args), eta=args.eta)
    options = item_options([item], template)
    options.check(FLAGS)
    progress = StageProgress()
    wave = read_input(replace(options, progress=progress), FLAGS)
    if wave is not None:  # the input as read and resampled once: not read a second time
        template = replace(template, audio=wave, audio_sampling_rate=AUDIO_RATE)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device or default_device())
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    checkpoint = open_checkpoint(args.weights, args.revision)
    planned = plan_call(item_options([item], template), checkpoint.configs, checkpoint.scheduler, device, False, FLAGS)
    if args.loop and args.seconds is not None and abs(planned.seconds - args.seconds) > 0.5 / AUDIO_RATE:
        frame = Geometry.from_configs(*checkpoint.configs).frame_seconds
        print(f"musicldm: --loop rounds --seconds {args.seconds:g} to {planned.seconds:g} s (a loop is a whole "
              f"number of {1000 * frame:g} ms latent frames)", file=sys.stderr)
    paths = output_paths(args.output, 1 if args.take else args.takes)  # checked by command(), before torch
    pipe = MusicLDMPipeline.from_pretrained(checkpoint.folder, device=device, dtype=dtype,
                                            attention_heads=args.attention_heads)
    pipe.enable_batch_invariance(args.exact_batches)  # off: the same kernels as pipe() with these arguments
    if args.compile:
        pipe.compile()
    audios, _ = generate(pipe, [item], replace(template, progress=progress))
    progress.close()
    audio, rate = audios[0][args.take - 1:args.take] if args.take else audios[0], pipe.sampling_rate
    if args.sample_rate is not None and args.sample_rate != rate:
        audio = resample(torch.from_numpy(audio).double(), rate, args.sample_rate).float().numpy()
        rate = args.sample_rate
    sampler = args.sampler or pipe.scheduler.name
    tags = [getattr(args, "recipe", None) or recipe(args, seed, sampler, device, dtype, torch.get_num_threads(), k)
            for k in ([args.take] if args.take else range(1, args.takes + 1))]
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

    from . import __version__

    print(f"musicldm_core {__version__}, torch {version('torch')}, Python {platform.python_version()}")


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The arguments; a --preset's settings become the defaults, so flags given beside it win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset is not None:
        p = PRESETS[args.preset]
        parser.set_defaults(sampler=p["sampler"], steps=p["steps"], guidance=p["guidance"], eta=p["eta"],
                            takes=p["candidates"])
        args = parser.parse_args(argv)
        typed_eta = any(word == "--eta" or word.startswith("--eta=") for word in argv or [])
        if args.sampler != p["sampler"] and not typed_eta:  # the preset's eta is its DDIM's: not another sampler's
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
                    "window": args.window, "exact_batches": args.exact_batches}
        run_batch(args, defaults)
        return 0
    args.output = args.output or "music.wav"
    check_outputs(output_paths(args.output, 1 if args.take else max(1, args.takes)))  # before torch is imported
    for line in run(args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
