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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .outputs import (MANIFEST, PARTS, append_record, is_done, merge_manifest, read_records, remove_temporaries,
                      write_wavs)
from .request import Request

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# JSON field -> its type (all but prompt and id override the command's option of the same name)
FIELDS = {"prompt": str, "id": str, "negative": str, "seconds": float, "seed": int, "steps": int, "guidance": float,
          "takes": int, "sampler": str}
# the pipeline's argument names -> the fields, for messages
NAMES = {"audio_length_in_s": "seconds", "num_inference_steps": "steps", "guidance_scale": "guidance",
         "num_waveforms_per_prompt": "takes", "negative_prompt": "negative"}


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


def derived_seed(base: int, item_id: str) -> int:
    """A seed for an item that gives none: from --seed and the item's id, the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{base}\n{item_id}".encode()).digest()[:8], "little") >> 1


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:40].rstrip("-") or "item"


def read_items(path: Path, defaults: Dict[str, object], base_seed: int) -> Tuple[List[Item], List[str]]:
    """(the good items, one problem per bad line); reads and checks, loads no model.

    defaults: the command's values for the FIELDS other than prompt and id.
    """
    from .samplers import SAMPLERS

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
            if values.get("sampler") is not None and values["sampler"] not in SAMPLERS:
                raise ValueError(f"sampler {values['sampler']!r} is unknown; choose one of {', '.join(SAMPLERS)}")
            item = Item(number, item_id, values["prompt"], values.get("negative"), values.get("seconds"), seed,
                        values["steps"], values["guidance"], values["takes"], values.get("sampler"))
            Request(prompt=item.prompt, negative_prompt=item.negative, audio_length_in_s=item.seconds,
                    num_inference_steps=item.steps, guidance_scale=item.guidance, num_waveforms_per_prompt=item.takes,
                    names=NAMES).check()
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


def generate(pipe, items: List[Item], scheduler, progress=None, **options) -> Tuple[List, List[Optional[List[float]]]]:
    """One call for items of one group: (each item's waveforms (takes, samples) best first, its scores).

    Each item's noise is drawn from its own seed exactly as a single run draws it. The command line
    runs a single prompt through here too, so a batch and a single run are the same computation;
    `options` are the pipeline's long-form and audio-to-audio arguments (loop, window, audio, ...)."""
    import torch

    from .noise import randn

    first = items[0]
    pipe.scheduler = scheduler
    if len(items) == 1:  # the pipeline draws the noise from the generator, as below, and any noise a step adds
        noise = dict(generator=torch.Generator().manual_seed(first.seed))
    else:
        frames = Request(prompt=[item.prompt for item in items], audio_length_in_s=first.seconds,
                         num_inference_steps=first.steps, guidance_scale=first.guidance,
                         num_waveforms_per_prompt=first.takes, **options).plan(pipe).frames
        shape = pipe.latent_shape(first.takes, frames)
        noise = dict(latents=torch.cat([randn(shape, torch.Generator().manual_seed(item.seed), pipe.device, pipe.dtype)
                                        for item in items]))
    negatives = [item.negative or "" for item in items]
    out = pipe([item.prompt for item in items], audio_length_in_s=first.seconds, num_inference_steps=first.steps,
               guidance_scale=first.guidance, num_waveforms_per_prompt=first.takes,
               negative_prompt=negatives if any(negatives) else None, rank_within_prompt=True, crop="start",
               progress=progress, **noise, **options)
    takes = first.takes
    audios = [out.audios[i * takes:(i + 1) * takes] for i in range(len(items))]
    scores = [None if out.scores is None else out.scores[i * takes:(i + 1) * takes].tolist()
              for i in range(len(items))]
    return audios, scores


def checked_against(pipe, schedulers, items: List[Item], skip_bad: bool) -> List[Item]:
    """What only the checkpoint can tell (the sampler's step counts, the shortest length), checked for
    every item before any is generated; bad items named by line, or skipped with skip_bad."""
    good, problems = [], []
    for item in items:
        pipe.scheduler = schedulers[item.sampler]
        try:
            Request(prompt=item.prompt, audio_length_in_s=item.seconds, num_inference_steps=item.steps,
                    guidance_scale=item.guidance, num_waveforms_per_prompt=item.takes,
                    names=NAMES).plan(pipe)
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


def run(args, defaults: Dict[str, object]) -> int:
    """The batch command; returns the number of items generated by this process."""
    import torch

    from .cli import check_outputs, default_device
    from .hub import resolve
    from .pipeline import MusicLDMPipeline
    from .placement import parse_device
    from .samplers import Scheduler

    items, problems = read_items(Path(args.prompts), defaults, args.seed if args.seed is not None else 0)
    report(problems, "bad line(s) in --prompts", args.skip_bad and bool(items))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_outputs([out_dir / "probe.wav"], "--out-dir")

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world > 1:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))  # rendezvous through torchrun's store
    if rank == 0:
        remove_temporaries(out_dir)
    if world > 1:
        dist.barrier()  # no rank writes before the stale temporary files are gone
    records = read_records(out_dir)
    mine = [item for item in items[rank::world] if not is_done(item, records, out_dir)]

    device = args.device or default_device()
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    device = parse_device(device)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // local_world) if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 4)  # CPU: 4 measured 1.22x of 1
    generated = 0
    if mine:
        dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
        folder = resolve(args.weights, args.revision)
        pipe = MusicLDMPipeline.from_pretrained(folder, device=device, dtype=dtype)
        pipe.enable_batch_invariance()
        if args.compile:
            pipe.compile()
        schedulers = {name: Scheduler.from_pretrained(folder / "scheduler", name) for name in {i.sampler for i in mine}}
        mine = checked_against(pipe, schedulers, mine, args.skip_bad)
        manifest = out_dir / MANIFEST if world == 1 else out_dir / PARTS / f"rank-{rank:05d}.jsonl"
        from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

        start = time.monotonic()
        with tqdm(total=len(mine), desc=f"items (rank {rank}/{world})" if world > 1 else "items", unit="item") as bar:
            for batch in batches(mine, batch_size):
                began = time.monotonic()
                audios, scores = generate(pipe, batch, schedulers[batch[0].sampler])
                took = (time.monotonic() - began) / len(batch)
                for item, audio, score in zip(batch, audios, scores):
                    paths = item.files(out_dir)
                    write_wavs(paths, audio, pipe.sampling_rate, flag="--out-dir")
                    record = {**asdict(item), "sampler": item.sampler or pipe.scheduler.name,
                              "files": [p.name for p in paths], "duration": audio.shape[-1] / pipe.sampling_rate,
                              "scores": score, "time": round(took, 3)}
                    append_record(manifest, record)
                generated += len(batch)
                bar.update(len(batch))
                bar.set_postfix_str(f"{generated / (time.monotonic() - start) * 60:.1f} items/min")
    if world > 1:
        dist.barrier()
    if rank == 0:  # one record per item, in the file's order, whatever the ranks and reruns
        merge_manifest(out_dir, [item.id for item in items])
    if world > 1:
        dist.destroy_process_group()
    return generated
