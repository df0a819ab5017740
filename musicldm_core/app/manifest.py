"""A batch folder's manifest (DIR/manifest.jsonl, one record per item) and its lock.

Records are appended one line at a time, flushed and synced, so that a kill leaves each line whole or
absent; a distributed run appends to per-rank parts that the end of the run merges. A folder holds one
batch job at a time (lock_folder)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from . import files

MANIFEST = "manifest.jsonl"
PARTS = ".manifest-parts"  # per-rank manifests of a distributed run, merged at its end
REJECTED = "manifest-rejected.jsonl"  # manifest lines that are not valid records, set aside by the merge


def _scan(out_dir: Path) -> Tuple[Dict[str, dict], List[Tuple[str, str]]]:
    """(id -> its latest record, [(where, the line)] of lines that are not valid records) from the
    manifest and any parts a distributed run left. A last line cut short by a kill (no newline, not
    JSON) is neither: its item is simply not done."""
    records: Dict[str, dict] = {}
    rejected: List[Tuple[str, str]] = []
    sources = [out_dir / MANIFEST] + sorted((out_dir / PARTS).glob("*.jsonl"))
    for source in sources:
        if not source.is_file():
            continue
        data = source.read_bytes()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            cut = number == len(lines)  # the file does not end with a newline after it
            problem, record = _record(raw)
            if problem is None:
                records[record["id"]] = record
            elif not (cut and problem.startswith("not JSON")):
                rejected.append((f"{source} line {number}: {problem}", raw.decode("utf-8", "replace")))
    return records, rejected


def _record(raw: bytes) -> Tuple[Optional[str], Optional[dict]]:
    """(what is wrong with a manifest line, or None; the record)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8", None
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})", None
    if not isinstance(record, dict):
        return "not a JSON object", None
    if not isinstance(record.get("id"), str):
        return f"its id must be text, got {record.get('id')!r}", None
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(name, str) and name == Path(name).name for name in files):
        return f"its files must be a list of file names, got {files!r}", None
    return None, record


def read_records(out_dir: Path, say: bool = False) -> Dict[str, dict]:
    """id -> its latest record; with `say`, each line that is not a valid record is named (the merge
    sets it aside in REJECTED)."""
    records, rejected = _scan(out_dir)
    for where, _ in rejected if say else ():
        print(f"musicldm: {where}; skipped (the merge moves it to {REJECTED})", file=sys.stderr)
    return records


def is_done(item, records: Dict[str, dict], out_dir: Path, extra: Dict[str, object]) -> bool:
    """Recorded with its own files (the names it writes, not another item's: a hand edit may list any),
    present, and made from what is asked now (Item.asked); else it is made again."""
    record = records.get(item.id)
    return (record is not None and record.get("asked") == item.asked(extra)
            and record["files"] == [p.name for p in item.files(out_dir)]
            and all((out_dir / name).is_file() for name in record["files"]))


def append_record(path: Path, record: dict) -> None:
    """One line, one write, flushed and synced: a kill leaves the line whole or absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            prefix = b""
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                prefix = b"" if f.read(1) == b"\n" else b"\n"  # end a line a kill cut short
            f.write(prefix + (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a failed append leaves at most a cut line, which the next run skips
        raise ValueError(f"--out-dir: cannot write {str(path)!r} ({files.write_problem(e, path.parent)})") from None


def merge_manifest(out_dir: Path, order: Iterable[str]) -> None:
    """Write DIR/manifest.jsonl with one record per item (the latest), in the file's order, whole
    (temporary file + rename); lines that are not valid records are appended to REJECTED; then remove
    the parts it took them from. Run under the out-dir's lock (lock_folder)."""
    records, rejected = _scan(out_dir)
    rank = {item_id: i for i, item_id in enumerate(order)}
    lines = [json.dumps(r, ensure_ascii=False) + "\n"
             for r in sorted(records.values(), key=lambda r: (rank.get(r["id"], math.inf), r["id"]))]
    if rejected:
        with open(out_dir / REJECTED, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for _, line in rejected)  # each as read, without its newline
    tmp = files.temp_file(out_dir)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600: the manifest gets the audio files' permissions
        os.replace(tmp, out_dir / MANIFEST)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        problem = files.write_problem(e, out_dir)
        raise ValueError(f"--out-dir: cannot write {str(out_dir / MANIFEST)!r} ({problem})") from None
    for part in (out_dir / PARTS).glob("*.jsonl"):
        part.unlink()
    if (out_dir / PARTS).is_dir():
        (out_dir / PARTS).rmdir()


class FolderLock:
    """An exclusive lock on a folder for one batch job (see lock_folder); `release()` ends it."""

    def __init__(self, path: Path, handle):
        self.path, self.handle = path, handle

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # while still held: the next run makes a fresh file
        self.handle.close()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


LOCK = ".musicldm.lock"  # in the out-dir while a batch job runs there


def lock_folder(folder: Path) -> FolderLock:
    """Take the folder's lock without waiting (flock on DIR/.musicldm.lock, which names its holder),
    or raise naming the run that holds it. A lock file left by a killed run is not held: it is taken."""
    import fcntl

    path = folder / LOCK
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"--out-dir: {str(folder)!r} is in use by another batch run ({holder}); wait for it "
                             "to finish, or use another folder") from None
        try:  # the file we locked may have been released and removed meanwhile: then lock the new one
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    import socket
    import time

    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return FolderLock(path, handle)
