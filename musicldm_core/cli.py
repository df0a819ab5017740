"""`musicldm "techno with a fast beat" -o techno.wav`: text to a 16 kHz WAV file.

Errors print as one line and exit non-zero (with --debug: the traceback). Files are written to a
temporary name in the target folder and renamed, so a failure never leaves a partial file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from .hub import DEFAULT_REPO

SAMPLER_NAMES = ["ddim", "pndm", "lms", "euler", "euler_ancestral", "heun", "dpmsolver++"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musicldm", description="Generate music from text with MusicLDM.")
    p.add_argument("prompt", help="what the music should sound like")
    p.add_argument("-o", "--output", default="music.wav", help="WAV file to write (default: music.wav); "
                   "with --takes N > 1: NAME-1.wav ... NAME-N.wav, best first")
    p.add_argument("--negative", default=None, help="what the music should not sound like")
    p.add_argument("--seconds", type=float, default=None, help="length in seconds (default: 10.24)")
    p.add_argument("--steps", type=int, default=200, help="denoising steps (default: 200)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default: 2.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible output")
    p.add_argument("--takes", type=int, default=1, help="takes to generate and rank with CLAP (default: 1)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=None,
                   help="sampler (default: the checkpoint's own, DDIM)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="precision (default: float16 on cuda, else float32)")
    p.add_argument("--weights", default=DEFAULT_REPO, help=f"checkpoint folder or Hub repo id (default: {DEFAULT_REPO})")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --weights")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def output_paths(output: str, takes: int) -> List[Path]:
    path = Path(output)
    if path.suffix.lower() != ".wav":
        raise ValueError(f"--output: {output!r} must end in .wav")
    if takes == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, takes + 1)]


def write_wav(path: Path, audio, rate: int) -> None:
    """Write atomically: a temporary file in the same folder, renamed over the target."""
    import soundfile as sf

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        sf.write(tmp, audio, rate, subtype="FLOAT", format="WAV")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> List[Path]:
    import torch

    from .pipeline import MusicLDMPipeline, check_int, check_number, check_prompt, parse_device

    # What can be checked without the checkpoint is checked before loading it.
    check_prompt(args.prompt)
    if args.seconds is not None:
        check_number("--seconds", args.seconds, minimum=0, strict=True)
    check_int("--steps", args.steps, minimum=1)
    check_number("--guidance", args.guidance, minimum=0)
    check_int("--takes", args.takes, minimum=1)
    paths = output_paths(args.output, args.takes)
    folder = paths[0].parent
    if not folder.is_dir():
        raise ValueError(f"--output: folder {str(folder)!r} does not exist")
    device = parse_device(args.device or default_device())
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    pipe = MusicLDMPipeline.from_pretrained(args.weights, revision=args.revision, device=device, dtype=dtype,
                                            scheduler=args.sampler)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None

    from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:  # one update per step, any sampler
        out = pipe(args.prompt, audio_length_in_s=args.seconds, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, negative_prompt=args.negative,
                   num_waveforms_per_prompt=args.takes, generator=generator, progress=bar.update)
    for path, audio in zip(paths, out.audios):
        write_wav(path, audio, pipe.sampling_rate)
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for path in run(args):
            print(path)
    except KeyboardInterrupt:
        print("musicldm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"musicldm: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
