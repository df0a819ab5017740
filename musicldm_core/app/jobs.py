"""The page's jobs: a queue, one worker thread that runs them one at a time on the loaded model, and the
history read back from the folder's manifest. The HTTP side (web.py) calls Service and nothing else.

A job is a batch line (the same checks and messages) plus audio-to-audio's fields, and it is made as batch
mode makes an item: DIR/<id>.wav (takes: <id>-1.wav ..., best first) and its record in DIR/manifest.jsonl,
each written whole or not at all, plus DIR/<id>.png, the mel spectrogram the VAE decoded."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import MISSING, dataclass, field, fields as dataclass_fields, replace
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple

from ..load import Checkpoint
from .prepare import options_of
from .prompt_file import Item, check_fields, slug, title
from .request import BY_NAME, as_tuples, check_bounds, fields_of, like_paths, names, renamed, span_text

STATES = ("queued", "running", "done", "failed", "cancelled")
PAGE_FIELDS = {**fields_of("page"), "inpaint": list}  # a job's fields; the page sends [start, end], not START:END
EDIT = ("strength", "inpaint", "extend")  # a job's audio-to-audio fields (with an audio part)
# a job's values where the request leaves them out (the server draws its seed)
ITEM_DEFAULTS = {k: BY_NAME[k].default for k in fields_of("line") if k != "prompt"}


def upload_name(name: str, stem: str = "input") -> str:
    """The name an upload is read under: `stem` ("input", or "like" for an audio prompt) and its extension when
    that is a plain one (".wav", ".flac"), whatever the client sent (a name may be "..", a path, or longer than
    a file system allows)."""
    suffix = os.path.splitext(name or "")[1]
    return stem + (suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else "")


def _plain_name(name) -> bool:
    """A file name directly inside the folder: text, not '.', '..', and without a separator."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


class Refused(Exception):
    """An HTTP error: status, one line, and the field it is about (for the page to show by it)."""

    def __init__(self, status: int, message: str, field_name: Optional[str] = None):
        super().__init__(message)
        self.status, self.field = status, field_name


class Cancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    item: Item  # the job as a batch line's item (its id and seed decided)
    edit: Dict[str, object] = field(default_factory=dict)  # strength, inpaint, extend, input file
    state: str = "queued"
    progress: float = 0.0
    error: Optional[str] = None
    files: List[str] = field(default_factory=list)
    pictures: List[str] = field(default_factory=list)
    scores: Optional[List[float]] = None
    command: Optional[str] = None
    created: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)
    ready: object = None  # prepare.Ready: its options and plan (the input as read, 16 kHz), until the job runs
    like: Optional[bytes] = None  # the audio prompt's upload, kept as item.like when the job is done

    def view(self) -> dict:
        """The job as the page shows it; its settings are its page fields (request.py)."""
        item = self.item
        settings = {k: getattr(item, k) for k in fields_of("page") if k not in EDIT}
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 4), "error": self.error,
                "seed": item.seed, "files": self.files, "pictures": self.pictures, "scores": self.scores,
                "command": self.command, "created": self.created,
                "settings": {**settings, **{k: v for k, v in self.edit.items() if k != "input"}}}


class Service:
    """The model, the jobs and the worker that runs them one at a time; what the HTTP side calls."""

    def __init__(self, pipe, out_dir: Path, weights: str, max_queue: int = 16, device=None, dtype: str = "float32",
                 exact_batches: bool = False):
        from .manifest import read_records

        self.pipe, self.out_dir, self.weights, self.max_queue = pipe, Path(out_dir), weights, max_queue
        self.device, self.dtype = device or pipe.device, dtype
        self.exact_batches = exact_batches  # a job's default (its field exact_batches overrides it)
        # a batch line's fields (less id, which the server gives, and window), plus audio-to-audio's
        self.fields = PAGE_FIELDS
        self.jobs: Dict[str, Job] = {}
        self.queue: Deque[Job] = deque()
        self.lock = threading.Condition()
        self.stopping = False
        records = read_records(self.out_dir).values()  # the history: earlier runs, batch runs included
        listed = [(record, self._from_record(record)) for record in records]
        self.jobs.update((job.id, job) for _, job in listed if job is not None)
        self.served = {name for job in self.jobs.values() for name in job.files + job.pictures}
        self.served.update(r["input"] for r, job in listed if job is not None and _plain_name(r.get("input"))
                           and (self.out_dir / r["input"]).is_file())
        self.numbers = itertools.count(len(self.jobs) + 1)  # each request its own number, hence its own id
        self.worker = threading.Thread(target=self._work, name="musicldm-worker", daemon=True)

    @property
    def checkpoint(self) -> Checkpoint:
        """The loaded model's configs and sampler, what a job is planned against (prepare.py)."""
        pipe = self.pipe
        return Checkpoint(None, (pipe.unet.config, pipe.vae.config, pipe.vocoder.config), pipe.scheduler)

    def _from_record(self, record: dict) -> Optional[Job]:
        """A record of the folder's manifest as a finished job; None, said on stderr, when it lacks what the
        page shows (batch mode accepts a record with only id and files: it makes that item again)."""
        from .manifest import MANIFEST

        fields = dataclass_fields(Item)
        missing = [f.name for f in fields if f.name not in record and f.default is MISSING and f.name != "line"]
        if missing:
            print(f"musicldm serve: {MANIFEST} record {record['id']!r} has no {', '.join(missing)}: not listed",
                  file=sys.stderr)
            return None
        names = {f.name for f in fields}
        item = Item(**{"line": 0, **{k: v for k, v in record.items() if k in names}})
        present = [n for n in record.get("files", []) if (self.out_dir / n).is_file()]
        pictures = [n for n in record.get("pictures", []) if (self.out_dir / n).is_file()]
        created = (self.out_dir / present[0]).stat().st_mtime if present else 0.0
        return Job(record["id"], item, dict(record.get("edit", {})), "done", 1.0, None, present, pictures,
                   record.get("scores"), record.get("command"), created)

    # --- submitting ------------------------------------------------------------------------------------

    def submit(self, data: dict, audio: Optional[bytes] = None, audio_name: str = "input",
               like: Optional[Tuple[bytes, str]] = None) -> Job:
        """Check a request as a batch line is checked, read its input audio and its audio prompt (`like`:
        bytes and file name) once and plan it against the loaded checkpoint (prepare.py: the command line's
        front door), then queue it. The audio prompt is kept beside the takes (DIR/<id>-like.EXT) when the
        job is done: the remake command names it."""
        from ..errors import InputTooLong
        from ..options import Options
        from .prepare import prepare

        item, edit = self._item(data, audio is not None, like is not None)
        folder = tempfile.mkdtemp(prefix="musicldm-upload-")
        try:
            request = {**edit, "inpaint": span_text(edit.get("inpaint"))}
            if audio is not None:  # the upload lives in `folder` only while it is read
                path = Path(folder) / upload_name(audio_name)
                path.write_bytes(audio)
                request["input"] = str(path)
            if like is not None:
                path = Path(folder) / upload_name(like[1], "like")
                path.write_bytes(like[0])
                request["like"] = str(path)
                item = replace(item, like=str((self.out_dir / f"{item.id}-{path.name}").resolve()))
            ready = prepare(options_of([item.request(**request)], Options()), lambda: self.checkpoint, self.device)
        except ValueError as e:
            e = renamed(e, names("page"))
            message = str(e).splitlines()[0].replace(folder + os.sep, "")
            status = 413 if isinstance(e, InputTooLong) else 400
            field_name = getattr(e, "argument", None) or _field_of(message, {**self.fields, "audio": None})
            raise Refused(status, message, field_name) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        job = Job(item.id, item, edit, ready=ready, like=like[0] if like is not None else None)
        with self.lock:
            if self.stopping:
                raise Refused(503, "the server is stopping")
            if len(self.queue) >= self.max_queue:
                raise Refused(503, f"the queue is full ({self.max_queue} jobs waiting); try again when one is done")
            self.jobs[job.id] = job
            self.queue.append(job)
            self.lock.notify_all()
        return job

    def _item(self, data: dict, has_audio: bool, has_like: bool = False) -> Tuple[object, Dict[str, object]]:
        """A request's fields as a batch item (the server gives its id and, if none is asked, its seed) and
        its audio-to-audio settings; each field's type checked, a fault named by field."""
        if "like" in data:  # never a path on this machine: the clip itself
            raise Refused(400, "like: send the clip as the form's file part 'like' (the page reads no paths)", "like")
        try:
            check_fields(data, self.fields, optional=EDIT, conditioned=has_like)
        except ValueError as e:
            raise Refused(400, str(e), _field_of(str(e), self.fields)) from None
        if any(like_paths(entry) for _, entry in data.get("schedule") or ()):  # (pairs: check_fields saw to it)
            raise Refused(400, "schedule: the page's entries are texts and blends of texts ('TEXT:W | TEXT:W'); "
                          "a clip goes in the like file part", "schedule")
        edit = {k: data[k] for k in EDIT if data.get(k) is not None}
        if "inpaint" in edit:
            span = edit["inpaint"]
            if not (isinstance(span, list) and len(span) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in span)):
                raise Refused(400, f"inpaint must be [start, end] in seconds, got {span!r}", "inpaint")
            edit["inpaint"] = tuple(float(v) for v in span)
        if edit and not has_audio:
            raise Refused(400, f"{next(iter(edit))} needs an input audio file (the audio part)", "audio")
        if has_audio and not edit:
            edit["strength"] = 0.6  # as the command line: an input alone moves 60% of the way
        seed = data.get("seed")
        seed = seed if seed is not None else random.SystemRandom().randrange(2**63)
        try:
            check_bounds("seed", seed, "seed")
        except ValueError as e:
            raise Refused(400, str(e), "seed") from None
        with self.lock:
            number = next(self.numbers)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{number:04d}-{slug(title(data), 24, 'job')}"
        values = {k: as_tuples(data[k]) for k in self.fields if k in data and k not in EDIT}
        item = Item(number, job_id, **{"prompt": None, **ITEM_DEFAULTS, **values, "seed": seed,
                                       "exact_batches": data.get("exact_batches", self.exact_batches)})
        return item, edit

    def cancel(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise Refused(404, f"no job {job_id!r}")
            if job.state == "queued":
                self.queue.remove(job)
                job.state, job.ready = "cancelled", None
            elif job.state == "running":
                job.cancel.set()  # the worker stops at the next step
            return job

    def views(self) -> List[dict]:
        with self.lock:
            return [job.view() for job in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]

    def view(self, job_id: str) -> dict:
        with self.lock:
            if job_id not in self.jobs:
                raise Refused(404, f"no job {job_id!r}")
            return self.jobs[job_id].view()

    # --- the worker ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for job in self.queue:
                job.state = "cancelled"
            self.queue.clear()
            for job in self.jobs.values():
                job.cancel.set()
            self.lock.notify_all()
        if self.worker.is_alive():
            self.worker.join()

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stopping:
                    self.lock.wait()
                if self.stopping:
                    return
                job = self.queue.popleft()
                job.state = "running"
            try:
                self._run(job)
                state, error = "done", None
            except Cancelled:
                state, error = "cancelled", None
            except Exception as e:  # NaN, out of memory, a full disk: the job fails, the server goes on
                state, error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
            with self.lock:
                job.state, job.error, job.ready = state, error, None
                if state == "done":
                    job.progress = 1.0

    def _run(self, job: Job) -> None:
        from ..options import AUDIO_RATE
        from .files import write_audio

        def progress(stage: str, done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            share = {"encoding the prompt": (0.0, 0.02), "encoding the input": (0.02, 0.08), "denoising": (0.1, 0.8),
                     "decoding": (0.9, 0.04), "vocoding": (0.94, 0.04), "ranking takes": (0.98, 0.02)}.get(stage)
            if share is not None and total:
                job.progress = max(job.progress, share[0] + share[1] * done / total)

        began, (options, run) = time.monotonic(), job.ready[:2]
        self.pipe.enable_batch_invariance(job.item.exact_batches)  # one job at a time: this job's choice
        out = self.pipe.generate(replace(options, progress=progress, return_mels=True), run)
        progress("vocoding", 1, 1)
        input_path = None
        if run.wave is not None:  # the input as read, kept beside the takes: the command remakes them from it
            input_path = self.out_dir / f"{job.id}-input.wav"
            write_audio([input_path], [run.wave.numpy()], AUDIO_RATE, flag="--out-dir")
        try:
            self._keep(job, out, began, input_path)
        except BaseException:  # the job failed while keeping its files: none of them stays, its input neither
            kept_like = [Path(job.item.like)] if job.like is not None else []
            for path in [input_path] * (input_path is not None) + kept_like + [
                    p for take in job.item.files(self.out_dir) for p in (take, take.with_suffix(".png"))]:
                path.unlink(missing_ok=True)
            raise

    def _keep(self, job: Job, out, began: float, input_path: Optional[Path]) -> None:
        """A finished job's takes (with their remake commands), pictures and manifest record."""
        import torch

        from .batch import RUN_DEFAULTS, item_record, item_recipes, run_values
        from .manifest import MANIFEST, append_record
        from .png import mel_png
        from .files import write_audio, write_bytes

        item, edit = job.item, job.edit
        if job.like is not None:  # the audio prompt, kept: the remake command reads it
            write_bytes(Path(item.like), job.like)
        paths = item.files(self.out_dir)
        pictures = [p.with_suffix(".png") for p in paths]
        sampler = item.sampler or self.pipe.scheduler.name
        command_edit = {**edit, "input": str(input_path) if input_path else None}
        run = {**RUN_DEFAULTS, "weights": self.weights}
        threads = torch.get_num_threads()
        commands = item_recipes(run, item, sampler=sampler, device=self.device, dtype=self.dtype, threads=threads,
                                edit=command_edit)
        write_audio(paths, out.audios, self.pipe.sampling_rate, flag="--out-dir", comments=commands)
        for path, mel in zip(pictures, out.mels):
            write_bytes(path, mel_png(mel))
        scores = None if out.scores is None else [float(s) for s in out.scores]
        record = {**item_record(item, sampler, paths, out.audios.shape[-1] / self.pipe.sampling_rate, scores,
                                time.monotonic() - began, run_values(run)),
                  "pictures": [p.name for p in pictures],
                  "edit": {k: list(v) if isinstance(v, tuple) else v for k, v in edit.items()},
                  "command": commands[0], "commands": commands, "input": input_path.name if input_path else None}
        append_record(self.out_dir / MANIFEST, record)
        with self.lock:
            job.files, job.pictures = record["files"], record["pictures"]
            job.scores, job.command = scores, commands[0]
            self.served.update(job.files + job.pictures + ([input_path.name] if input_path else [])
                               + ([Path(item.like).name] if job.like is not None else []))

    # --- files -----------------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """A file this server may give: recorded, directly inside DIR, not a symlink."""
        with self.lock:
            known = name in self.served
        path = self.out_dir / name
        if not known or "/" in name or "\\" in name or name in (".", "..") or path.is_symlink() \
                or not path.is_file() or path.resolve().parent != self.out_dir.resolve():
            raise Refused(404, "no such file")
        return path


def _field_of(message: str, fields) -> Optional[str]:
    """The field a message is about: its first word, when that is a field ('seconds must be ...')."""
    word = message.split(" ", 1)[0].strip("'\":").split("[")[0]  # (schedule[2] ...: the schedule field)
    if word in fields:
        return word
    for name in fields:
        if f"'{name}'" in message:
            return name
    return None
