"""Batch mode: a prompt file -> a folder of WAV files and a manifest, resumable, on one process or many.

    musicldm --prompts prompts.jsonl --out-dir out/ [the usual options, as defaults]
    torchrun --nproc-per-node 8 -m musicldm_core --prompts prompts.jsonl --out-dir out/

The prompt file is JSON Lines (`{"prompt": ..., "id": ..., "seed": ..., ...}`, see FIELDS) or plain
text, one prompt a line. Every item is checked before any model loads, each problem named by line.
Missing ids and seeds are derived from the line and --seed, so a rerun makes the same audio.

What a run guarantees:
* Whole files only: WAVs go to temporary names and are renamed into place; an item's manifest
  record is appended (one write, flushed and synced) only after its files are there. A killed run
  loses at most the items in flight; the next run removes their temporary files.
* A rerun skips every item recorded with its files present, and leaves those files untouched.
* Items of the same length, steps, sampler, guidance and takes go through the models together, up
  to --batch-size; the pipeline runs batch-invariant, so each item's audio equals its single run
  (`musicldm PROMPT --seed S ...`), to the bit on the same device, dtype and thread count.
* Under torchrun each rank takes every WORLD_SIZE-th item (by position in the file), runs on its
  own GPU (LOCAL_RANK) or its share of the CPU cores, and appends to its own part of the manifest;
  at the end rank 0 merges the parts into DIR/manifest.jsonl: one record per item, in file order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .options import Options
from .outputs import (MANIFEST, PARTS, append_record, check_outputs, is_done, merge_manifest, read_records,
                      file_line, remove_temporaries, write_audio)
from .placement import default_device, parse_device

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# JSON field -> its type (all but prompt and id override the command's option of the same name)
FIELDS = {"prompt": str, "id": str, "negative": str, "seconds": float, "seed": int, "steps": int, "guidance": float,
          "takes": int, "sampler": str}
# the pipeline's argument names -> the fields, for messages
NAMES = {"audio_length_in_s": "seconds", "num_inference_steps": "steps", "guidance_scale": "guidance",
         "num_waveforms_per_prompt": "takes", "negative_prompt": "negative", "sampler": "sampler"}


@dataclass(frozen=True)
class Item:
    """One line of the prompt file, with every value decided."""

    line: int
    id: str
    prompt: str
    negative: Optional[str]
    seconds: Optional[float]  # None: the checkpoint's default length
    seed: int
    steps: int
    guidance: float
    takes: int
    sampler: Optional[str]  # None: the checkpoint's own

    def files(self, out_dir: Path) -> List[Path]:
        """DIR/<id>.wav, or DIR/<id>-1.wav ... DIR/<id>-N.wav (best first) for several takes."""
        if self.takes == 1:
            return [out_dir / f"{self.id}.wav"]
        return [out_dir / f"{self.id}-{k}.wav" for k in range(1, self.takes + 1)]

    @property
    def group(self) -> tuple:
        """Items with the same group run through the models together."""
        return self.seconds, self.steps, self.sampler, self.guidance, self.takes


# What the items of a prompt file do not set, as the command line has it: windows past the trained length.
COMMAND_LINE = Options(window="auto")


def item_options(items: List[Item], template: Options = COMMAND_LINE) -> Options:
    """The pipeline options of items of one group, generated in one call: their prompts, each drawing its
    noise from its own seed exactly as a single run draws it, ranked per prompt with a deterministic crop.
    template: the options the items do not set (the command line's long-form and audio-to-audio ones)."""
    first, one = items[0], len(items) == 1
    prompts, negatives = [item.prompt for item in items], [item.negative or "" for item in items]
    generators = [torch.Generator().manual_seed(item.seed) for item in items]
    negative = (negatives[0] if one else negatives) if any(negatives) else None
    return replace(template, prompt=prompts[0] if one else prompts, audio_length_in_s=first.seconds,
                   num_inference_steps=first.steps, guidance_scale=first.guidance, num_waveforms_per_prompt=first.takes,
                   sampler=first.sampler, negative_prompt=negative, generator=generators[0] if one else generators,
                   rank_within_prompt=True, crop="start")


def derived_seed(base: int, item_id: str) -> int:
    """A seed for an item that gives none: from --seed and the item's id, the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{base}\n{item_id}".encode()).digest()[:8], "little") >> 1


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:40].rstrip("-") or "item"


def read_items(path: Path, defaults: Dict[str, object], base_seed: int) -> Tuple[List[Item], List[str]]:
    """(the good items, one problem per bad line); reads and checks, loads no model.

    defaults: the command's values for the FIELDS other than prompt and id.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--prompts: cannot read {str(path)!r} ({getattr(e, 'strerror', None) or e})") from None
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    as_json = Path(path).suffix.lower() in (".jsonl", ".json") or first.startswith("{")
    items: List[Item] = []
    problems: List[str] = []
    seen: Dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or (not as_json and line.lstrip().startswith("#")):
            continue
        try:
            data = _parse(line, as_json)
            values = {**defaults, **{k: v for k, v in data.items() if k != "id"}}
            item_id = data.get("id", f"{number:05d}-{_slug(values['prompt'])}")
            if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
                raise ValueError(f"id {item_id!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                                 "letter or digit (it names the output files)")
            if item_id in seen:
                raise ValueError(f"id {item_id!r} is also on line {seen[item_id]}")
            seed = values["seed"] if values.get("seed") is not None else derived_seed(base_seed, item_id)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
                raise ValueError(f"seed must be an integer between 0 and {2**64 - 1}, got {seed!r}")
            item = Item(number, item_id, values["prompt"], values.get("negative"), values.get("seconds"), seed,
                        values["steps"], values["guidance"], values["takes"], values.get("sampler"))
            item_options([item]).check(NAMES)
        except ValueError as e:
            problems.append(f"{path} line {number}: {e}")
            continue
        seen[item_id] = number
        items.append(item)
    if not items and not problems:
        problems.append(f"{path}: no prompts in the file")
    return items, problems


def _parse(line: str, as_json: bool) -> dict:
    if not as_json:
        return {"prompt": line.strip()}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a line must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    if "prompt" not in data:
        raise ValueError("the field 'prompt' is missing")
    for key, value in data.items():
        kind = FIELDS[key]
        ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int)
                                                                          and not isinstance(value, bool))
        if not ok and not (value is None and key in ("negative", "seconds", "seed", "sampler")):
            raise ValueError(f"{key} must be {'a number' if kind is float else 'an integer' if kind is int else 'text'}"
                             f", got {value!r}")
    return data


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def batches(items: List[Item], batch_size: int) -> List[List[Item]]:
    """Items grouped by what must be equal within one call, in the order the groups first appear,
    cut into batches. A sampler that draws noise while stepping (Euler ancestral) and unguided items
    (a UNet batch of one computes its first conv differently) run one at a time."""
    groups: Dict[tuple, List[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    out = []
    for members in groups.values():
        size = 1 if members[0].sampler == "euler_ancestral" or members[0].guidance <= 1.0 else batch_size
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def generate(pipe, items: List[Item], template: Options = COMMAND_LINE) -> Tuple[List, List[Optional[List[float]]]]:
    """One call for items of one group: (each item's waveforms (takes, samples) best first, its scores).

    The command line runs a single prompt through here too, so a batch and a single run are the same
    computation. template: the options the items do not set (long form, audio-to-audio, progress)."""
    out = pipe.generate(item_options(items, template))
    takes = items[0].takes
    audios = [out.audios[i * takes:(i + 1) * takes] for i in range(len(items))]
    scores = [None if out.scores is None else out.scores[i * takes:(i + 1) * takes].tolist()
              for i in range(len(items))]
    return audios, scores


def checked_against(pipe, items: List[Item], skip_bad: bool) -> List[Item]:
    """What only the checkpoint can tell (the sampler's step counts, the shortest length), checked for
    every item before any is generated; bad items named by line, or skipped with skip_bad."""
    good, problems = [], []
    for item in items:
        try:
            pipe.plan(item_options([item]), NAMES)
            good.append(item)
        except ValueError as e:
            problems.append(f"line {item.line} ({item.id}): {e}")
    report(problems, "item(s) this checkpoint cannot run", skip_bad)
    return good


def report(problems: List[str], what: str, skip: bool) -> None:
    """Bad lines or items: one error naming the first few, or with --skip-bad each on its own line."""
    if problems and not skip:
        raise ValueError(f"{len(problems)} {what} (--skip-bad skips them): " + "; ".join(problems[:3])
                         + ("" if len(problems) <= 3 else f"; and {len(problems) - 3} more"))
    for problem in problems:
        print(f"musicldm: skipped {problem}", file=sys.stderr)


class Ranks:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or a
    world of one; a process group (gloo, through torchrun's store) when there are several."""

    def __init__(self):
        env = os.environ
        self.rank, self.world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        self.local_rank, self.local_world = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


def run(args, defaults: Dict[str, object]) -> int:
    """The batch command; returns the number of items generated by this process."""
    items, problems = read_items(Path(args.prompts), defaults, args.seed if args.seed is not None else 0)
    report(problems, "bad line(s) in --prompts", args.skip_bad and bool(items))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_outputs([out_dir / "probe.wav"], "--out-dir")

    ranks = Ranks()
    if ranks.rank == 0:
        remove_temporaries(out_dir)
    ranks.barrier()  # no rank writes before the stale temporary files are gone
    records = read_records(out_dir)
    mine = [item for item in items[ranks.rank::ranks.world] if not is_done(item, records, out_dir)]
    generated = generate_items(args, mine, out_dir, ranks) if mine else 0
    ranks.barrier()
    if ranks.rank == 0:  # one record per item, in the file's order, whatever the ranks and reruns
        merge_manifest(out_dir, [item.id for item in items])
    ranks.close()
    return generated


def generate_items(args, items: List[Item], out_dir: Path, ranks: Ranks) -> int:
    """This rank's items: load the model on its device, check them against it, generate them batch by
    batch, each item's files and manifest record written as soon as it is done (and a line said)."""
    from .pipeline import MusicLDMPipeline
    from .progress import StageProgress

    device = args.device or default_device()
    device = parse_device(f"cuda:{ranks.local_rank}" if device == "cuda" and ranks.world > 1 else device)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // ranks.local_world) if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 4)  # CPU: 4 measured 1.22x of 1
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    pipe = MusicLDMPipeline.from_pretrained(args.weights, revision=args.revision, device=device, dtype=dtype)
    pipe.enable_batch_invariance()
    if args.compile:
        pipe.compile()
    items = checked_against(pipe, items, args.skip_bad)
    manifest = out_dir / MANIFEST if ranks.world == 1 else out_dir / PARTS / f"rank-{ranks.rank:05d}.jsonl"
    generated, rank = 0, f"rank {ranks.rank}/{ranks.world}: " if ranks.world > 1 else ""
    for batch in batches(items, batch_size):
        began, progress = time.monotonic(), StageProgress(f"{rank}{', '.join(item.id for item in batch)}: ")
        audios, scores = generate(pipe, batch, replace(COMMAND_LINE, progress=progress))
        progress.close()
        took = (time.monotonic() - began) / len(batch)
        for item, audio, score in zip(batch, audios, scores):
            paths, sampler = item.files(out_dir), item.sampler or pipe.scheduler.name
            duration = audio.shape[-1] / pipe.sampling_rate
            write_audio(paths, audio, pipe.sampling_rate, flag="--out-dir")
            record = {**asdict(item), "sampler": sampler, "files": [p.name for p in paths], "duration": duration,
                      "scores": score, "time": round(took, 3)}
            append_record(manifest, record)
            for path in paths:
                print(file_line(path, duration, item.seed, sampler, item.steps, item.guidance), flush=True)
        generated += len(batch)
    return generated
