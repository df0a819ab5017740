"""`musicldm score "PROMPT" FILE...`: how well each audio file matches a prompt, as CLAP measures it.

    musicldm score "warm jazz piano" take-1.wav take-2.wav [--json scores.json]
    musicldm score --prompts out/manifest.jsonl [--json scores.json]     # each record's prompt, its files

The score is the text-audio relevance the MusicLDM paper reports: the cosine of CLAP's text and audio
embeddings (ClapModel's `logits_per_text / exp(logit_scale)`), from -1 to 1, computed by the same function
that ranks takes (ranking.clap_logits). Each file is read at its own rate (any format soundfile reads),
made mono and resampled to CLAP's 48 kHz; a file longer than CLAP's 10 s is scored on its first 10 s (a
fixed crop, so a score never changes between runs), a shorter one repeat-padded as CLAP's extractor does.
Everything is checked (the files read) before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..hub import DEFAULT_REPO

CROP = "start"  # the part of a file longer than 10 s that is scored: its first 10 s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musicldm score", description="Score audio files against a prompt with CLAP "
                                "(the cosine of the text and audio embeddings, -1 to 1).")
    p.add_argument("prompt", nargs="?", default=None, help="what the music should sound like")
    p.add_argument("files", nargs="*", help="audio files (any format and rate soundfile reads)")
    p.add_argument("--prompts", default=None, metavar="MANIFEST", help="a batch folder's manifest.jsonl: each "
                   "record's prompt against its own files (instead of PROMPT FILE...)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON to FILE")
    p.add_argument("--weights", default=DEFAULT_REPO,
                   help=f"checkpoint folder or Hub repo id (default: {DEFAULT_REPO})")
    p.add_argument("--revision", default=None, help="Hub revision of --weights")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    return p


def pairs_of(args: argparse.Namespace) -> List[Tuple[str, Path]]:
    """(prompt, file) for every file to score, from PROMPT FILE... or a manifest; each file checked to exist."""
    if (args.prompts is None) == (args.prompt is None):
        raise ValueError("give PROMPT FILE..., or --prompts MANIFEST (not both)")
    if args.prompts is None:
        if not args.files:
            raise ValueError("give at least one FILE to score against the prompt")
        pairs = [(args.prompt, Path(f)) for f in args.files]
    else:
        pairs = _manifest_pairs(Path(args.prompts))
    for _, path in pairs:
        if not path.is_file():
            raise ValueError(f"no such file {str(path)!r}")
    return pairs


def _manifest_pairs(manifest: Path) -> List[Tuple[str, Path]]:
    from .manifest import MANIFEST, read_records

    if not manifest.is_file():
        raise ValueError(f"--prompts: no such file {str(manifest)!r}")
    if manifest.name != MANIFEST:
        raise ValueError(f"--prompts: {str(manifest)!r} is not a batch folder's {MANIFEST}")
    records = read_records(manifest.parent, say=True)
    pairs = [(r["prompt"], manifest.parent / name) for r in records.values() if isinstance(r.get("prompt"), str)
             for name in r["files"]]
    if not pairs:
        raise ValueError(f"--prompts: {str(manifest)!r} records no files with a prompt")
    return pairs


def scores(pipe, pairs: List[Tuple[str, Path]]) -> List[float]:
    """Each (prompt, file)'s CLAP cosine: the file read at its rate, resampled to CLAP's, cropped at CROP."""
    from ..audio_input import load_audio
    from ..ranking import clap_logits

    rate, out = pipe.feature_extractor.config.sampling_rate, []
    clap = pipe.placement.ready("text_encoder")
    scale = clap.logit_scale_text.exp().float().cpu()
    for prompt, path in pairs:
        wave = load_audio(str(path), None, rate, str(path))
        logits = clap_logits([prompt], [wave.numpy()], tokenizer=pipe.tokenizer, clap=clap,
                             logmel=pipe.feature_extractor, dtype=pipe.dtype, crop=CROP)
        out.append(float(logits[0, 0] / scale))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pairs = pairs_of(args)
        if args.json is not None:
            from .files import check_outputs

            check_outputs([Path(args.json)], "--json")
        import torch

        from ..pipeline import MusicLDMPipeline
        from .prepare import run_device

        if args.threads:
            torch.set_num_threads(args.threads)
        device, _ = run_device(args.device, "float32")
        pipe = MusicLDMPipeline.from_pretrained(args.weights, revision=args.revision, device=device)
        values = scores(pipe, pairs)
    except Exception as e:  # one line, as the other commands
        print(f"musicldm score: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    for (prompt, path), value in zip(pairs, values):
        print(f"{value:+.4f}  {path}" + (f"  ({prompt})" if args.prompts else ""))
    if args.json is not None:
        from .files import write_bytes

        records = [{"prompt": prompt, "file": str(path), "score": value}
                   for (prompt, path), value in zip(pairs, values)]
        write_bytes(Path(args.json), (json.dumps(records, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
                    flag="--json")
    return 0
