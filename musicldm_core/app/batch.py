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
  the models together, up to --batch-size. The batches are cut from the whole file, before done items
  are left out, so a rerun computes every item in the batch it had: it equals the first run to the
  bit, and a resumed run differs from an uninterrupted one only in the items that were in flight, by
  the batch-composition error (about 1e-6 relative: README). With --exact-batches (or a line's
  "exact_batches": true) the UNet runs one row at a time and each item's audio equals its single run
  (`musicldm PROMPT --seed S --exact-batches ...`) to the bit on the same device, dtype and threads.
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
from typing import Dict, List, Optional, Set, Tuple

import torch

from ..options import Options
from .prepare import open_pipeline, options_of, prepare, run_dtype
from .request import Request, fields_of, names, remake_command
from ..hub import DEFAULT_REPO
from .manifest import MANIFEST, PARTS, append_record, is_done, lock_folder, merge_manifest, read_records
from .files import check_folder, file_line, remove_temporaries, write_audio
from ..placement import default_device, parse_device

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# JSON field -> its type (all but prompt and id override the command's option of the same name): request.py's
FIELDS = {"prompt": str, "id": str, **fields_of("line")}
# the command's options that batch mode does not take, each with the reason
NOT_IN_BATCH = {"output": ("-o/--output", "files are named <id>.wav in --out-dir"),
                "input": ("--input", "audio-to-audio runs one input at a time: leave out --prompts"),
                "strength": ("--strength", "it goes with --input"), "inpaint": ("--inpaint", "it goes with --input"),
                "extend": ("--extend", "it goes with --input")}
NAMES = names("line")  # the pipeline's argument names -> the fields, for messages


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
    loop: bool = False  # a seamless loop
    window: str = "auto"  # the command line's: windows past the trained length
    exact_batches: bool = False  # the UNet one row at a time: equal to its single run to the bit

    def files(self, out_dir: Path) -> List[Path]:
        """DIR/<id>.wav, or DIR/<id>-1.wav ... DIR/<id>-N.wav (best first) for several takes."""
        if self.takes == 1:
            return [out_dir / f"{self.id}.wav"]
        return [out_dir / f"{self.id}-{k}.wav" for k in range(1, self.takes + 1)]

    @property
    def group(self) -> tuple:
        """Items with the same group run through the models together."""
        return self.seconds, self.steps, self.sampler, self.guidance, self.takes, self.loop, self.window, \
            self.exact_batches

    def request(self, **run) -> Request:
        """This item as the typed request (`run`: the run's own settings, eta, an input, ...)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("line", "id")}
        return Request(**values, **run)

    def asked(self, extra: Dict[str, object]) -> dict:
        """What this item's files were made from, as its manifest record keeps it ("asked"): its values
        and the run's (`extra`: weights, revision, sample rate). A rerun skips the item only when this is
        unchanged; otherwise it is made again. exact_batches is kept only when on, so that the records of
        earlier runs (made exact, without the field) still match."""
        values = {k: v for k, v in asdict(self).items() if k not in ("line", "id")
                  and not (k == "exact_batches" and not v)}
        return json.loads(json.dumps({**values, **extra}))


def item_options(items: List[Item], template: Options = Options(), **run) -> Options:
    """The pipeline options of items of one group, generated in one call (prepare.options_of).
    template: what the items do not say (progress); run: the run's settings they share (eta)."""
    return options_of([item.request(**run) for item in items], template)


def derived_seed(base: int, item_id: str) -> int:
    """A seed for an item that gives none: from --seed and the item's id, the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{base}\n{item_id}".encode()).digest()[:8], "little") >> 1


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:40].rstrip("-") or "item"


def read_text(path: Path, flag: str) -> str:
    """A text file as UTF-8 (a byte-order mark dropped); bytes that are not UTF-8 named by line and column."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{flag}: cannot read {str(path)!r} ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{flag}: {str(path)!r} line {line} is not UTF-8 (byte 0x{data[e.start]:02x} at column "
                         f"{column}); save the file as UTF-8") from None


def is_json_lines(path: Path, lines: List[str]) -> bool:
    """The prompt file's format: by the extension (.jsonl, .json: JSON Lines; .txt: one prompt a line),
    else by the first line that is neither blank nor a `# comment`."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".txt"):
        return suffix != ".txt"
    first = next((line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    return first.startswith("{")


def read_items(path: Path, defaults: Dict[str, object], base_seed: int) -> Tuple[List[Item], List[str]]:
    """(the good items, one problem per bad line); reads and checks, loads no model.

    defaults: the command's values for the FIELDS other than prompt and id. Blank lines and lines
    starting with # are skipped in both formats. Two items whose files would share a name (also when
    only letter case differs, as on macOS and Windows) are refused by line.
    """
    lines = read_text(path, "--prompts").splitlines()
    as_json = is_json_lines(path, lines)
    items: List[Item] = []
    problems: List[str] = []
    owners: Dict[str, Item] = {}  # file name, case folded -> the item that writes it
    ids: Dict[str, Item] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = _parse(line, as_json)
            values = {**defaults, **{k: v for k, v in data.items() if k != "id"}}
            item_id = data.get("id", f"{number:05d}-{_slug(values['prompt'])}")
            if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
                raise ValueError(f"id {item_id!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                                 "letter or digit (it names the output files)")
            seed = values["seed"] if values.get("seed") is not None else derived_seed(base_seed, item_id)
            if not 0 <= seed < 2**64:  # an integer: check_fields refused any other JSON value
                raise ValueError(f"seed must be an integer between 0 and {2**64 - 1}, got {seed!r}")
            item = Item(number, item_id, values["prompt"], values.get("negative"), values.get("seconds"), seed,
                        values["steps"], values["guidance"], values["takes"], values.get("sampler"),
                        values.get("loop", False), values.get("window", "auto"), values.get("exact_batches", False))
            item_options([item]).check(NAMES)
            if item_id in ids:  # the manifest keeps one record per id, whatever files the items write
                raise ValueError(f"id {item_id!r} is also on line {ids[item_id].line}")
            for name in (p.name.casefold() for p in item.files(Path())):
                other = owners.get(name)
                if other is not None:
                    case = other.id.casefold() == item_id.casefold()
                    raise ValueError(f"id {item_id!r} and {other.id!r} on line {other.line} both write {name!r}"
                                     + (" (letter case does not tell files apart on macOS and Windows)" if case else ""))
        except ValueError as e:
            problems.append(f"{path} line {number}: {e}")
            continue
        owners.update((p.name.casefold(), item) for p in item.files(Path()))
        ids[item_id] = item
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
    check_fields(data)
    return data


def check_fields(data: dict, fields: Dict[str, type] = FIELDS, optional: Tuple[str, ...] = ()) -> None:
    """A batch line's (or a web request's) fields: known names, the prompt given, each value of its type.
    `optional`: fields beyond FIELDS' that may be null."""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(fields)}")
    if "prompt" not in data:
        raise ValueError("the field 'prompt' is missing")
    words = {float: "a number", int: "an integer", str: "text", bool: "true or false"}
    for key, value in data.items():
        kind = fields[key]
        ok = isinstance(value, bool) if kind is bool else (
            not isinstance(value, bool) and (isinstance(value, kind) or kind is float and isinstance(value, int)))
        if not ok and not (value is None and key in ("negative", "seconds", "seed", "sampler") + optional):
            raise ValueError(f"{key} must be {words.get(kind, kind.__name__)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


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
            prepare(item_options([item]), lambda: checkpoint, device, NAMES)
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
    world of one; `join()` forms the process group (gloo, through torchrun's store) when there are several."""

    def __init__(self):
        env = os.environ
        self.rank, self.world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        self.local_rank, self.local_world = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))

    def join(self) -> None:
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (each rank learns the same answer)."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


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


class SameOnEveryRank(Exception):
    """Raised on ranks > 0 when rank 0 stops on a check that concerns the whole job: rank 0 says why."""


def item_record(item: Item, sampler: str, paths: List[Path], duration: float, scores, took: float,
                extra: Dict[str, object]) -> dict:
    """An item's manifest record: what a rerun checks (Item.asked) and what the page lists as history."""
    return {**asdict(item), "sampler": sampler, "files": [p.name for p in paths], "duration": duration,
            "scores": scores, "time": round(took, 3), "asked": item.asked(extra)}


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


def item_recipe(run: Dict[str, object], item: Item, sampler: str, device, dtype: str, threads: int, take: int,
                edit: Optional[Dict[str, object]] = None) -> str:
    """The command that remakes take `take` of an item as a single run, for its file's comment tag: bit for
    bit when the item was exact (exact_batches) or made alone, else within the batch-composition error.
    run: the run's settings (RUN_DEFAULTS' names); edit: a page job's audio-to-audio settings (input, strength,
    inpaint, extend)."""
    edit = edit or {}
    inpaint = ":".join(repr(v) for v in edit["inpaint"]) if edit.get("inpaint") else None
    path = edit.get("input") and os.path.abspath(edit["input"])
    request = item.request(**run, **{**edit, "inpaint": inpaint, "input": path}, device=str(device), dtype=dtype,
                           threads=threads if device.type == "cpu" else None, take=take if item.takes > 1 else None)
    return remake_command(replace(request, sampler=sampler), f"{item.id}.wav")


def rank_device(args, ranks: Ranks) -> torch.device:
    device = args.device or default_device()
    return parse_device(f"cuda:{ranks.local_rank}" if device == "cuda" and ranks.world > 1 else device)


def generate_items(args, items: List[Item], done: Set[str], out_dir: Path, ranks: Ranks, device: torch.device,
                   folder: Path, extra: Dict[str, object]) -> None:
    """This rank's items: load the model on its device, generate them batch by batch, each item's files
    and manifest record written as soon as it is done (and a line said). The batches are cut from all
    of `items` and the `done` ids then left out of them, so that every other item runs in the same batch
    as in an uninterrupted run."""
    from ..audio_frontend import resample
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
            tags = [item_recipe(run_settings(args), item, sampler, device, dtype, torch.get_num_threads(), k)
                    for k in range(1, item.takes + 1)]
            write_audio(paths, audio, rate, flag="--out-dir", comments=tags)
            append_record(manifest, item_record(item, sampler, paths, duration, score, took, extra))
            for path in paths:
                print(file_line(path, duration, item.seed, sampler, item.steps, item.guidance), flush=True)

