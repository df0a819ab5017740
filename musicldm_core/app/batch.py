"""Batch mode: a prompt file -> a folder of WAV files and a manifest, resumable, on one process or many.

    musicldm --prompts prompts.jsonl --out-dir out/ [the usual options, as defaults]
    torchrun --nproc-per-node 8 -m musicldm_core --prompts prompts.jsonl --out-dir out/

The prompt file is JSON Lines (`{"prompt": ..., "id": ..., "seed": ..., ...}`, see FIELDS) or plain
text, one prompt a line (decided by the extension, else by the first line that is not a # comment).
Every item is checked before any model loads, each problem named by line: its values, its file names
against every other item's, and its request against the checkpoint's configs. Missing ids and seeds
are derived from the line and --seed, so a rerun makes the same audio.

What a run guarantees:
* One run per folder: it holds DIR/.musicldm.lock (outputs.lock_folder); a second run is refused.
* Whole files only: WAVs go to temporary names and are renamed into place; an item's manifest
  record is appended (one write, flushed and synced) only after its files are there. A killed run
  loses at most the items in flight; the next run removes their temporary files.
* A rerun skips every item recorded with its files present and made from what is asked now
  (Item.asked), and leaves those files untouched; an item whose line or options changed is made again.
* Items of the same length, steps, sampler, guidance, takes, loop, window and exact_batches go through
  the models together, up to --batch-size; an item with a like, blend or schedule runs alone. The batches are cut from the whole file, before done items
  are left out, so a rerun computes every item in the batch it had: it equals the first run to the
  bit, and a resumed run differs from an uninterrupted one only in the items that were in flight, by
  the batch-composition error (about 1e-6 relative: docs/exactness.md). With --exact-batches (or a line's
  "exact_batches": true) the UNet runs one row at a time and each item's audio equals its single run
  (`musicldm PROMPT --seed S --exact-batches ...`) to the bit on the same device, dtype and threads.
* Under torchrun each rank takes every WORLD_SIZE-th item (by position in the file), runs on its
  own GPU (LOCAL_RANK) or its share of the CPU cores, and appends to its own part of the manifest;
  at the end rank 0 merges the parts into DIR/manifest.jsonl: one record per item, in file order.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import torch

from ..hub import DEFAULT_REPO
from ..options import Options
from .files import audio_crops, audio_hashes, check_folder, file_line, remove_temporaries, write_audio
from .manifest import MANIFEST, PARTS, append_record, is_done, lock_folder, merge_manifest, read_records
from .prepare import open_pipeline, options_of, prepare, run_dtype
from .prompt_file import NAMES, Item, read_items
from .ranks import Ranks, SameOnEveryRank, rank_device
from .request import audio_files, remake_command, renamed, span_text

# the command's options that batch mode does not take, each with the reason
NOT_IN_BATCH = {"output": ("-o/--output", "files are named <id>.wav in --out-dir"),
                "input": ("--input", "audio-to-audio runs one input at a time: leave out --prompts"),
                "strength": ("--strength", "it goes with --input"), "inpaint": ("--inpaint", "it goes with --input"),
                "extend": ("--extend", "it goes with --input")}


def item_options(items: List[Item], template: Options = Options(), **run) -> Options:
    """The pipeline options of items of one group, generated in one call (prepare.options_of).
    template: what the items do not say (progress); run: the run's settings they share (eta)."""
    return options_of([item.request(**run) for item in items], template)


def batches(items: List[Item], batch_size: int) -> List[List[Item]]:
    """Items grouped by what must be equal within one call, in the order the groups first appear,
    cut into batches. A sampler that draws noise while stepping (Euler ancestral) runs one item at a
    time, and so do exact unguided items (a UNet batch of one computes its first conv differently)."""
    groups: Dict[tuple, List[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    out = []
    for members in groups.values():
        first = members[0]
        size = 1 if first.sampler == "euler_ancestral" or (first.exact_batches and first.guidance <= 1.0) \
            else batch_size
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def generate(pipe, items: List[Item], template: Options = Options(), **run) -> Tuple[List, List[Optional[List[float]]]]:
    """One call for items of one group: (each item's waveforms (takes, samples) best first, its scores).

    template: the options the items do not set (progress); run: the run's settings they share (eta)."""
    out = pipe.generate(item_options(items, template, **run))
    takes = items[0].takes
    audios = [out.audios[i * takes:(i + 1) * takes] for i in range(len(items))]
    scores = [None if out.scores is None else out.scores[i * takes:(i + 1) * takes].tolist()
              for i in range(len(items))]
    return audios, scores


def checked_against(checkpoint, device, items: List[Item], skip_bad: bool) -> List[Item]:
    """What only the checkpoint can tell (the sampler's step counts, the shortest length, the memory on
    `device`), from its configs, for every item before any model loads; bad items named by line, or
    skipped with skip_bad. Every rank of a torchrun job checks every item, so all decide alike."""
    good, problems = [], []
    for item in items:
        try:
            prepare(item_options([item]), lambda: checkpoint, device)
            good.append(item)
        except ValueError as e:
            problems.append(f"line {item.line} ({item.id}): {renamed(e, NAMES)}")
    report(problems, "item(s) this checkpoint cannot run", skip_bad)
    return good


def report(problems: List[str], what: str, skip: bool) -> None:
    """Bad lines or items: one error naming the first few, or with --skip-bad each on its own line."""
    if problems and not skip:
        raise ValueError(f"{len(problems)} {what} (--skip-bad skips them): " + "; ".join(problems[:3])
                         + ("" if len(problems) <= 3 else f"; and {len(problems) - 3} more"))
    for problem in problems:
        print(f"musicldm: skipped {problem}", file=sys.stderr)


def check_out_dir(out_dir: Path) -> Path:
    """--out-dir: a folder (made if missing) where files can be written, its manifest a file if present."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir: {str(out_dir)!r} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out-dir: cannot make the folder {str(out_dir)!r} ({e.strerror})") from None
    for name in (MANIFEST, PARTS):
        path = out_dir / name
        if path.exists() and path.is_dir() != (name == PARTS):
            raise ValueError(f"--out-dir: {str(path)!r} is a {'folder' if path.is_dir() else 'file'}; move it away "
                             f"(batch mode keeps its {'manifest' if name == MANIFEST else 'manifest parts'} there)")
    check_folder(out_dir, "--out-dir")
    return out_dir


def run(args, defaults: Dict[str, object]) -> None:
    """The batch command.

    Every check runs on every rank before any rank generates: the lines, the out-dir, each item against
    the checkpoint's configs; then rank 0 takes the out-dir's lock for the job (a second job on the
    same folder is refused, naming the holder)."""
    from ..load import open_checkpoint

    for name, (flag, why) in NOT_IN_BATCH.items():
        if getattr(args, name) is not None:
            raise ValueError(f"{flag} cannot be used with --prompts: {why}")
    items, problems = read_items(Path(args.prompts), defaults, args.seed if args.seed is not None else 0)
    report(problems, "bad line(s) in --prompts", args.skip_bad and bool(items))
    out_dir = check_out_dir(Path(args.out_dir))
    ranks = Ranks()
    device = rank_device(args, ranks)
    checkpoint = open_checkpoint(args.weights, args.revision)
    items = checked_against(checkpoint, device, items, args.skip_bad)
    ranks.join()
    lock, refusal = None, None
    try:
        if ranks.rank == 0:
            try:
                lock = lock_folder(out_dir)
            except ValueError as e:
                refusal = e
        if not ranks.all_true(refusal is None):  # every rank stops with rank 0, which says why
            raise refusal if refusal is not None else SameOnEveryRank("rank 0 could not lock --out-dir")
        args.checked = True  # from here on an error is this rank's own
        if ranks.rank == 0:
            remove_temporaries(out_dir)
        ranks.barrier()  # no rank writes before the stale temporary files are gone
        records = read_records(out_dir, say=ranks.rank == 0)
        extra = run_values(run_settings(args))
        mine = items[ranks.rank::ranks.world]
        done = {item.id for item in mine if is_done(item, records, out_dir, extra)}
        if done:
            rank = f"rank {ranks.rank}: " if ranks.world > 1 else ""
            print(f"musicldm: {rank}{len(done)} of {len(mine)} items already done in {str(out_dir)!r} (made from "
                  "what is asked now, their files present): skipped", file=sys.stderr)
        if len(done) < len(mine):
            generate_items(args, mine, done, out_dir, ranks, device, checkpoint.folder, extra)
        ranks.barrier()
        if ranks.rank == 0:  # one record per item, in the file's order, whatever the ranks and reruns
            merge_manifest(out_dir, [item.id for item in items])
    finally:
        if lock is not None:
            lock.release()
        ranks.close()


def item_record(item: Item, sampler: str, paths: List[Path], duration: float, scores, took: float,
                extra: Dict[str, object]) -> dict:
    """An item's manifest record: what a rerun checks (Item.asked) and what the page lists as history (the
    condition's fields only when set, and where each audio prompt longer than 10 s was cropped, in seconds)."""
    crops = audio_crops(audio_files(item.request()))  # where each clip longer than 10 s was cropped
    return {**item.recorded(), "sampler": sampler, "files": [p.name for p in paths], "duration": duration,
            "scores": scores, "time": round(took, 3), "asked": item.asked(extra),
            **({"audio_prompt_crops": crops} if crops else {})}


# the run's settings a remake command carries, with the command line's defaults (for callers that lack one)
RUN_DEFAULTS = {"weights": DEFAULT_REPO, "revision": None, "sample_rate": None, "eta": 0.0,
                "attention_heads": "checkpoint", "compile": False}


def run_settings(args) -> Dict[str, object]:
    """The command's run settings (RUN_DEFAULTS' names), as its arguments give them."""
    return {name: getattr(args, name, default) for name, default in RUN_DEFAULTS.items()}


def run_values(run: Dict[str, object]) -> Dict[str, object]:
    """The run's values an item's files depend on, beside its own (Item.asked)."""
    values = {"weights": str(run["weights"]), "revision": run["revision"], "sample_rate": run["sample_rate"]}
    # recorded only when not the default, so that the records of earlier runs still match
    values.update({"eta": run["eta"]} if run["eta"] else {})
    values.update({"attention_heads": run["attention_heads"]} if run["attention_heads"] != "checkpoint" else {})
    return values


def item_recipes(run: Dict[str, object], item: Item, sampler: str, device, dtype: str, threads: int,
                 edit: Optional[Dict[str, object]] = None) -> List[str]:
    """The commands that remake each take of an item as a single run, for its files' comment tags: bit for
    bit when the item was exact (exact_batches) or made alone, else within the batch-composition error.
    run: the run's settings (RUN_DEFAULTS' names); edit: a page job's audio-to-audio settings (input, strength,
    inpaint, extend)."""
    edit = edit or {}
    path = edit.get("input") and os.path.abspath(edit["input"])
    request = item.request(**run, **{**edit, "inpaint": span_text(edit.get("inpaint")), "input": path},
                           device=str(device), dtype=dtype, threads=threads if device.type == "cpu" else None,
                           sampler=sampler)
    hashes = audio_hashes(audio_files(request))  # each audio prompt as it was (once for every take): a remake checks
    request = replace(request, sha256=[f"{p}={h}" for p, h in hashes.items()])
    return [remake_command(replace(request, take=k if item.takes > 1 else None), f"{item.id}.wav")
            for k in range(1, item.takes + 1)]


def generate_items(args, items: List[Item], done: Set[str], out_dir: Path, ranks: Ranks, device: torch.device,
                   folder: Path, extra: Dict[str, object]) -> None:
    """This rank's items: load the model on its device, generate them batch by batch, each item's files
    and manifest record written as soon as it is done (and a line said). The batches are cut from all
    of `items` and the `done` ids then left out of them, so that every other item runs in the same batch
    as in an uninterrupted run."""
    from ..resampler import resample
    from .progress import StageProgress

    threads = args.threads or (max(1, (os.cpu_count() or 1) // ranks.local_world) if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 4)  # CPU: 4 measured 1.22x of 1
    dtype = run_dtype(device, args.dtype)
    pipe = open_pipeline(folder, device, dtype, getattr(args, "attention_heads", "checkpoint"), args.compile)
    manifest = out_dir / MANIFEST if ranks.world == 1 else out_dir / PARTS / f"rank-{ranks.rank:05d}.jsonl"
    rank = f"rank {ranks.rank}/{ranks.world}: " if ranks.world > 1 else ""
    rate = args.sample_rate or pipe.sampling_rate
    for batch in batches(items, batch_size):
        batch = [item for item in batch if item.id not in done]
        if not batch:
            continue
        pipe.enable_batch_invariance(batch[0].exact_batches)  # the same for the whole batch (Item.group)
        began, progress = time.monotonic(), StageProgress(f"{rank}{', '.join(item.id for item in batch)}: ")
        audios, scores = generate(pipe, batch, Options(progress=progress), eta=getattr(args, "eta", 0.0))
        progress.close()
        took = (time.monotonic() - began) / len(batch)
        for item, audio, score in zip(batch, audios, scores):
            paths, sampler = item.files(out_dir), item.sampler or pipe.scheduler.name
            if rate != pipe.sampling_rate:
                audio = resample(torch.from_numpy(audio).double(), pipe.sampling_rate, rate).float().numpy()
            duration = audio.shape[-1] / rate
            tags = item_recipes(run_settings(args), item, sampler=sampler, device=device, dtype=dtype,
                                threads=torch.get_num_threads())
            write_audio(paths, audio, rate, flag="--out-dir", comments=tags)
            append_record(manifest, item_record(item, sampler, paths, duration, score, took, extra))
            for path in paths:
                print(file_line(path, duration, item.seed, sampler, item.steps, item.guidance), flush=True)
