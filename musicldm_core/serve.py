"""`musicldm serve`: a local page to try prompts, listen, compare takes and keep the good ones.

    musicldm serve [--host 127.0.0.1] [--port 7860] [--out-dir ./musicldm-out] [--weights ...] [--device ...]
                   [--dtype ...] [--compile] [--max-queue 16] [--token T] [--open]

The standard library's HTTP server and one static page (static/index.html: no framework, no external URL),
so it keeps working when UI frameworks move on. The model loads once; one worker thread runs the jobs one
at a time while the HTTP side keeps answering. A job is a batch line (batch.FIELDS, the same checks and
messages) plus audio-to-audio's fields, and it is made as batch mode makes an item: DIR/<id>.wav (takes:
<id>-1.wav ..., best first) and its record in DIR/manifest.jsonl, each written whole or not at all, plus
DIR/<id>.png, the mel spectrogram the VAE decoded. `--prompts` runs and the page share one history.

The HTTP API (the page uses it):
    POST   /api/jobs        JSON {"prompt": ..., "negative", "seconds", "seed", "steps", "guidance", "takes",
                            "sampler", "loop", "exact_batches", "strength", "inpaint": [start, end], "extend"},
                            or multipart with the same fields and an `audio` file part -> 202 {"id"}; a bad field -> 400
                            {"error", "field"}; the queue full -> 503; too large -> 413
    GET    /api/jobs        every job, newest first; GET /api/jobs/ID: one ({"state": queued | running | done
                            | failed | cancelled, "progress": 0-1, "error", "seed", "files", "pictures", ...})
    DELETE /api/jobs/ID     cancel: a queued job leaves the queue, a running one stops at its next step
    GET    /files/NAME      a file this server (or a batch run into DIR) recorded; nothing else
    GET    /api/openapi.json  this API as an OpenAPI 3.0 document (serve_api.py)

Safe by default: it binds 127.0.0.1; a Host header other than the served address is refused (DNS
rebinding); a POST or DELETE from another origin is refused (a page elsewhere cannot start jobs); binding
beyond loopback needs --token, and then every call and file carries it (`Authorization: Bearer T`, or
`?token=T` for the page and its players); bodies are bounded (JSON 64 KB, uploads 50 MB, input audio as
long as a job may ask); only recorded files inside DIR are served, never through a symlink.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hmac
import itertools
import http.server
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import MISSING, dataclass, field, fields as dataclass_fields, replace
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

JSON_LIMIT = 64 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).parent / "static" / "index.html"
STATES = ("queued", "running", "done", "failed", "cancelled")


def upload_name(name: str) -> str:
    """The name an upload is read under: "input" and its extension when that is a plain one (".wav",
    ".flac"), whatever the client sent (a name may be "..", a path, or longer than a file system allows)."""
    suffix = os.path.splitext(name or "")[1]
    return "input" + (suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else "")


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
    item: object  # batch.Item
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
    wave: object = None  # the input audio as read (16 kHz), until the job runs

    def view(self) -> dict:
        item = self.item
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 4), "error": self.error,
                "seed": item.seed, "files": self.files, "pictures": self.pictures, "scores": self.scores,
                "command": self.command, "created": self.created,
                "settings": {"prompt": item.prompt, "negative": item.negative, "seconds": item.seconds,
                             "seed": item.seed, "steps": item.steps, "guidance": item.guidance, "takes": item.takes,
                             "sampler": item.sampler, "loop": item.loop, "exact_batches": item.exact_batches,
                             **{k: v for k, v in self.edit.items()
                                                                           if k != "input"}}}


class Service:
    """The model, the jobs and the worker that runs them one at a time; what the HTTP side calls."""

    def __init__(self, pipe, out_dir: Path, weights: str, max_queue: int = 16, device=None, dtype: str = "float32",
                 exact_batches: bool = False):
        from . import batch
        from .outputs import read_records

        self.pipe, self.out_dir, self.weights, self.max_queue = pipe, Path(out_dir), weights, max_queue
        self.device, self.dtype = device or pipe.device, dtype
        self.exact_batches = exact_batches  # a job's default (its field exact_batches overrides it)
        # a batch line's fields (less id, which the server gives, and window), plus audio-to-audio's
        self.fields = {k: v for k, v in batch.FIELDS.items() if k not in ("id", "window")}
        self.fields.update(strength=float, inpaint=list, extend=float)
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

    def _from_record(self, record: dict) -> Optional[Job]:
        """A record of the folder's manifest as a finished job; None, said on stderr, when it lacks what the
        page shows (batch mode accepts a record with only id and files: it makes that item again)."""
        from .batch import Item
        from .outputs import MANIFEST

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

    def submit(self, data: dict, audio: Optional[bytes] = None, audio_name: str = "input") -> Job:
        """Check a request as a batch line is checked (and its input audio read), then queue it."""
        from .batch import Item, NAMES, check_fields, item_options
        from .errors import InputTooLong
        from .options import AUDIO_RATE, Options, read_input
        from .pipeline import plan_call

        try:
            check_fields(data, self.fields, optional=("strength", "inpaint", "extend"))
        except ValueError as e:
            raise Refused(400, str(e), _field_of(str(e), self.fields)) from None
        edit = {k: data[k] for k in ("strength", "inpaint", "extend") if data.get(k) is not None}
        if "inpaint" in edit:
            span = edit["inpaint"]
            if not (isinstance(span, list) and len(span) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in span)):
                raise Refused(400, f"inpaint must be [start, end] in seconds, got {span!r}", "inpaint")
            edit["inpaint"] = tuple(float(v) for v in span)
        if edit and audio is None:
            raise Refused(400, f"{next(iter(edit))} needs an input audio file (the audio part)", "audio")
        if audio is not None and not edit:
            edit["strength"] = 0.6  # as the command line: an input alone moves 60% of the way
        seed = data.get("seed")
        seed = seed if seed is not None else random.SystemRandom().randrange(2**63)
        if not 0 <= seed < 2**64:
            raise Refused(400, f"seed must be an integer between 0 and {2**64 - 1}, got {seed!r}", "seed")
        with self.lock:
            number = next(self.numbers)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{number:04d}-{_slug(data['prompt'])}"
        item = Item(number, job_id, data["prompt"], data.get("negative"), data.get("seconds"), seed,
                    data.get("steps", 200), data.get("guidance", 2.0), data.get("takes", 1), data.get("sampler"),
                    data.get("loop", False), "auto", data.get("exact_batches", self.exact_batches))
        names = {**NAMES, "strength": "strength", "inpaint": "inpaint", "extend": "extend", "audio": "audio"}
        wave, folder = None, tempfile.mkdtemp(prefix="musicldm-upload-")
        try:
            template = Options(**edit)
            if audio is not None:  # the upload lives in `folder` only while it is read
                path = Path(folder) / upload_name(audio_name)
                path.write_bytes(audio)
                template = replace(template, audio=str(path))
            options = item_options([item], template)
            options.check(names)
            wave = read_input(options, names)
            if wave is not None:
                template = replace(template, audio=wave, audio_sampling_rate=AUDIO_RATE)
            plan_call(item_options([item], template), (self.pipe.unet.config, self.pipe.vae.config,
                      self.pipe.vocoder.config), self.pipe.scheduler, self.device, False, names)
        except ValueError as e:
            message = str(e).splitlines()[0].replace(folder + os.sep, "")
            status = 413 if isinstance(e, InputTooLong) else 400
            field_name = getattr(e, "argument", None) or _field_of(message, {**self.fields, "audio": None})
            raise Refused(status, message, field_name) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        job = Job(job_id, item, edit, wave=wave)
        with self.lock:
            if self.stopping:
                raise Refused(503, "the server is stopping")
            if len(self.queue) >= self.max_queue:
                raise Refused(503, f"the queue is full ({self.max_queue} jobs waiting); try again when one is done")
            self.jobs[job_id] = job
            self.queue.append(job)
            self.lock.notify_all()
        return job

    def cancel(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise Refused(404, f"no job {job_id!r}")
            if job.state == "queued":
                self.queue.remove(job)
                job.state, job.wave = "cancelled", None
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
                job.state, job.error, job.wave = state, error, None
                if state == "done":
                    job.progress = 1.0

    def _run(self, job: Job) -> None:
        from .batch import item_options
        from .options import AUDIO_RATE, Options
        from .outputs import write_audio

        def progress(stage: str, done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            share = {"encoding the prompt": (0.0, 0.02), "denoising": (0.02, 0.88), "decoding": (0.9, 0.04),
                     "vocoding": (0.94, 0.04), "ranking takes": (0.98, 0.02)}.get(stage)
            if share is not None and total:
                job.progress = max(job.progress, share[0] + share[1] * done / total)

        item, edit, began = job.item, job.edit, time.monotonic()
        template = Options(progress=progress, return_mels=True,
                           **{k: v for k, v in edit.items() if k in ("strength", "inpaint", "extend")})
        if job.wave is not None:
            template = replace(template, audio=job.wave, audio_sampling_rate=AUDIO_RATE)
        self.pipe.enable_batch_invariance(item.exact_batches)  # one job at a time: this job's choice
        out = self.pipe.generate(item_options([item], template))
        progress("vocoding", 1, 1)
        input_path = None
        if job.wave is not None:  # the input as read, kept beside the takes: the command remakes them from it
            input_path = self.out_dir / f"{job.id}-input.wav"
            write_audio([input_path], [job.wave.numpy()], AUDIO_RATE, flag="--out-dir")
        try:
            self._keep(job, out, began, input_path)
        except BaseException:  # the job failed while keeping its files: none of them stays, its input neither
            for path in [input_path] * (input_path is not None) + [
                    p for take in job.item.files(self.out_dir) for p in (take, take.with_suffix(".png"))]:
                path.unlink(missing_ok=True)
            raise

    def _keep(self, job: Job, out, began: float, input_path: Optional[Path]) -> None:
        """A finished job's takes (with their remake commands), pictures and manifest record."""
        import torch

        from .batch import RUN_DEFAULTS, item_record, item_recipe, run_values
        from .outputs import MANIFEST, append_record, mel_png, write_audio, write_bytes

        item, edit = job.item, job.edit
        paths = item.files(self.out_dir)
        pictures = [p.with_suffix(".png") for p in paths]
        sampler = item.sampler or self.pipe.scheduler.name
        command_edit = {**edit, "input": str(input_path) if input_path else None}
        run = argparse.Namespace(**{**RUN_DEFAULTS, "weights": self.weights})
        commands = [item_recipe(run, item, sampler, self.device, self.dtype, torch.get_num_threads(), k, command_edit)
                    for k in range(1, item.takes + 1)]
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
            self.served.update(job.files + job.pictures + ([input_path.name] if input_path else []))

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


def _slug(text: str) -> str:
    """A short name from the prompt for the job id (batch's rule, cut shorter: the id has a time stamp)."""
    from .batch import _slug as slug

    return slug(text)[:24].rstrip("-") or "job"


def _field_of(message: str, fields) -> Optional[str]:
    """The field a message is about: its first word, when that is a field ('seconds must be ...')."""
    word = message.split(" ", 1)[0].strip("'\":")
    if word in fields:
        return word
    for name in fields:
        if f"'{name}'" in message:
            return name
    return None


# --- HTTP --------------------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "musicldm"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # (not 0.9, whose answers have no status line): a bad request line too
    timeout = 60  # a client that stalls mid-request is let go

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # every request passes here first
    def _checked(self) -> Tuple[str, Dict[str, List[str]]]:
        app = self.server
        host = self.headers.get("Host", "")
        if app.allowed_hosts is not None and host.lower() not in app.allowed_hosts:
            raise Refused(403, f"Host {host!r} is not the address this server answers ({app.address}): refused "
                               "(a page on another site pointing its name here)")
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if self.command in ("POST", "DELETE"):
            origin = self.headers.get("Origin")
            if origin is not None and origin.lower() != f"http://{host.lower()}":
                raise Refused(403, f"a request from another site ({origin}) is refused")
            if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                raise Refused(403, "a request from another site is refused")
        if app.token is not None:
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
                (query.get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), app.token.encode()):
                raise Refused(401, "this server needs its token (Authorization: Bearer T, or ?token=T)")
        return url.path, query

    def _send(self, status: int, body: bytes, kind: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _handle(self, work) -> None:
        """Every request ends here with an HTTP status and, for an error, a JSON body: a refusal as itself,
        anything else as 500 with the exception's type only (no traceback reaches the client or the log)."""
        try:
            if self.command != "POST" and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a body no route reads: not to be taken for the next request
            path = urlsplit(self.path).path
            methods = allowed_methods(path)
            if methods and self.command not in methods:
                allow = ", ".join(sorted(methods))
                return self._refuse(405, f"{self.command} is not allowed on {path}: {allow}", allow=allow)
            work(*self._checked())
        except Refused as e:
            self._refuse(e.status, str(e), e.field)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: answered, named by type, and the server goes on
            self._refuse(500, f"internal error ({type(e).__name__}); the server goes on")

    def _refuse(self, status: int, message: str, field_name: Optional[str] = None, allow: Optional[str] = None) -> None:
        # a body may be left unread (any method may send one): this connection ends here
        self.close_connection, extra = True, {"Connection": "close", **({"Allow": allow} if allow else {})}
        try:
            self._send(status, json.dumps({"error": message, **({"field": field_name} if field_name else {})}
                                          ).encode(), "application/json", extra)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The base class's own refusals (a malformed request line or header, a line too long) in the API's
        form: a JSON error, and the connection closed. A method no route takes is 405 with the route's
        methods (Allow), or 404 where no route is."""
        self.close_connection, extra = True, {"Connection": "close"}
        if code == 501 and hasattr(self, "path"):  # no do_<METHOD>
            methods = allowed_methods(urlsplit(self.path).path)
            code, message = (405, f"{self.command} is not allowed here") if methods else (404, "not found")
            extra["Allow"] = ", ".join(sorted(methods)) if methods else "GET"
        try:
            self._send(code, json.dumps({"error": message or http.server.BaseHTTPRequestHandler.responses.get(
                code, ("error",))[0]}).encode(), "application/json", extra)
        except (BrokenPipeError, ConnectionResetError, AttributeError):
            pass  # (AttributeError: no request line was parsed, so there is nothing to answer)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle(self._delete)

    def _get(self, path: str, query) -> None:
        app = self.server
        if path in ("/", "/index.html"):
            page = PAGE.read_bytes()
            self._send(200, page, "text/html; charset=utf-8", {
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                                           f"style-src 'self' 'unsafe-inline'; script-src {script_hashes(page)}; "
                                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY"})
        elif path == "/api/jobs":
            self._json(200, {"jobs": app.service.views(), "samplers": app.samplers, "limits": app.limits})
        elif path == "/api/openapi.json":
            from .serve_api import document

            self._json(200, document(app.samplers, app.limits))
        elif path.startswith("/api/jobs/"):
            self._json(200, app.service.view(path[len("/api/jobs/"):]))
        elif path.startswith("/files/"):
            file = app.service.file(path[len("/files/"):])
            kinds = {".wav": "audio/wav", ".png": "image/png"}
            self._send(200, file.read_bytes(), kinds.get(file.suffix, "application/octet-stream"),
                       {"Content-Disposition": f'inline; filename="{file.name}"'})
        else:
            raise Refused(404, "not found")

    def _post(self, path: str, query) -> None:
        if path != "/api/jobs":
            raise Refused(404, "not found")
        kind = self.headers.get("Content-Type", "")
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):  # ("²".isdigit() is true)
            raise Refused(411, "a POST needs its Content-Length, a whole number of bytes")
        limit = UPLOAD_LIMIT if kind.startswith("multipart/form-data") else JSON_LIMIT
        if int(length) > limit:
            raise Refused(413, f"the request is {int(length)} bytes; at most {limit} are read")
        body = self.rfile.read(int(length))
        audio, name = None, "input"
        if kind.startswith("multipart/form-data"):
            data, audio, name = _multipart(kind, body)
        elif kind.split(";")[0].strip() == "application/json":
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise Refused(400, f"the body is not valid JSON ({e})") from None
            except RecursionError:
                raise Refused(400, "the body is not valid JSON (nested too deep)") from None
            if not isinstance(data, dict):
                raise Refused(400, f"the body must be a JSON object, got {type(data).__name__}")
        else:
            raise Refused(415, "send application/json or multipart/form-data")
        job = self.server.service.submit(data, audio, name)
        self._json(202, {"id": job.id})

    def _delete(self, path: str, query) -> None:
        if not path.startswith("/api/jobs/"):
            raise Refused(404, "not found")
        self._json(200, self.server.service.cancel(path[len("/api/jobs/"):]).view())


def script_hashes(page: bytes) -> str:
    """The CSP source list that lets exactly the page's own inline scripts run: their SHA-256 hashes. No
    other inline script, event-handler attribute or javascript: URL can (no 'unsafe-inline')."""
    import base64
    import hashlib

    scripts = re.findall(rb"<script>(.*?)</script>", page, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in scripts) \
        or "'none'"


def allowed_methods(path: str) -> set:
    """The methods a route answers (empty: no such route)."""
    exact = {"/": {"GET"}, "/index.html": {"GET"}, "/api/openapi.json": {"GET"}, "/api/jobs": {"GET", "POST"}}
    if path in exact:
        return exact[path]
    if path.startswith("/api/jobs/"):
        return {"GET", "DELETE"}
    return {"GET"} if path.startswith("/files/") else set()


def _multipart(kind: str, body: bytes) -> Tuple[dict, Optional[bytes], str]:
    """A form: its text fields as a batch line's JSON values, and the `audio` file part."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {kind}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise Refused(400, "a multipart body without parts")
    data, audio, name = {}, None, "input"
    for part in message.iter_parts():
        key = part.get_param("name", header="content-disposition")
        if key is None:
            continue
        payload = part.get_payload(decode=True) or b""
        if key == "audio":
            if part.get_filename() is not None:
                if not payload:
                    raise Refused(400, f"the audio file {part.get_filename()!r} is empty", "audio")
                audio, name = payload, part.get_filename()
            continue
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise Refused(400, f"{key} is not valid UTF-8 (byte 0x{payload[e.start]:02x} at {e.start}); send the "
                               "form as UTF-8", key) from None
        if text == "":
            continue  # a blank field: its default (a blank seed: a random one)
        try:
            data[key] = json.loads(text) if key not in ("prompt", "negative", "sampler") else text
        except (json.JSONDecodeError, RecursionError):
            data[key] = text  # the type check names it
    return data, audio, name


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 7860, token: Optional[str] = None,
                 verbose: bool = False):
        if host not in LOOPBACK and not token:
            raise ValueError(f"--host {host} reaches beyond this machine: give --token T (every call must carry it)")
        super().__init__((host, port), Handler)
        from .audio_frontend import MAX_INPUT_SECONDS
        from .samplers import SAMPLERS

        self.service, self.token, self.verbose = service, token, verbose
        self.port = self.server_address[1]
        shown = "localhost" if host in ("127.0.0.1", "localhost") else host
        self.address = f"http://{shown if ':' not in shown else f'[{shown}]'}:{self.port}"
        names = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost")} if host in ("127.0.0.1", "localhost") \
            else {f"[::1]:{self.port}", f"localhost:{self.port}"} if host == "::1" else None
        self.allowed_hosts = names  # beyond loopback the token is the guard
        self.samplers = list(SAMPLERS)
        self.limits = {"json": JSON_LIMIT, "upload": UPLOAD_LIMIT, "input_seconds": MAX_INPUT_SECONDS}


def build_parser() -> argparse.ArgumentParser:
    from .hub import DEFAULT_REPO

    p = argparse.ArgumentParser(prog="musicldm serve", description="A local page to make music with MusicLDM.")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860; 0 picks a free one")
    p.add_argument("--out-dir", default="musicldm-out", help="where the files and manifest.jsonl go (default "
                   "./musicldm-out)")
    p.add_argument("--weights", default=DEFAULT_REPO, help=f"checkpoint folder or Hub id (default {DEFAULT_REPO})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--compile", action="store_true", help="compile the models first (torch.compile)")
    p.add_argument("--exact-batches", action="store_true", help="jobs run the UNet one row at a time, each take "
                   "equal to its single run to the bit (slower; a job's exact_batches field overrides it)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait (default 16); more get 503")
    p.add_argument("--token", default=None, help="a secret every call must carry; needed beyond loopback")
    p.add_argument("--open", action="store_true", help="open the page in the browser")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        print(f"musicldm serve: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace) -> int:
    """Check everything, load the model once, answer until Ctrl-C."""
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.host not in LOOPBACK and not args.token:
        raise ValueError(f"--host {args.host} reaches beyond this machine: give --token T (every call must carry it)")
    from .batch import check_out_dir
    from .load import open_checkpoint
    from .outputs import lock_folder, remove_temporaries
    from .pipeline import MusicLDMPipeline
    from .placement import default_device, parse_device

    # Ctrl-C and a polite kill stop it cleanly, even where the shell started it with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out_dir = check_out_dir(Path(args.out_dir))
    device = parse_device(args.device or default_device())
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    checkpoint = open_checkpoint(args.weights)
    with lock_folder(out_dir):
        remove_temporaries(out_dir)
        try:  # the port is taken before the model loads: a port in use is said at once
            server = Server(None, args.host, args.port, args.token, args.verbose)
        except OSError as e:
            raise ValueError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                             "choose another --port (0 picks a free one)") from None
        pipe = MusicLDMPipeline.from_pretrained(checkpoint.folder, device=device, dtype=dtype)
        if args.compile:
            pipe.compile()
        server.service = Service(pipe, out_dir, str(args.weights), args.max_queue, device, dtype, args.exact_batches)
        service = server.service
        service.start()
        try:
            url = server.address + (f"/?token={args.token}" if args.token else "/")
            print(f"musicldm serve: {url} (files in {out_dir}; Ctrl-C stops)", flush=True)
            if args.open:
                import webbrowser

                webbrowser.open(url)
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("musicldm serve: stopping", file=sys.stderr)
        finally:
            server.server_close()
            service.stop()
            remove_temporaries(out_dir)
    return 0
