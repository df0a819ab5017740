"""What the entry points write: WAV files (all takes or none), and in batch mode DIR/manifest.jsonl and
the parts a distributed run appends to; written so that a kill at any moment leaves each whole or absent.
Output paths are checked here too, before any work, for every entry point."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

# output file extension -> (soundfile format, subtype): float32 WAV as the models compute, 24-bit FLAC, Vorbis
FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".ogg": ("OGG", "VORBIS")}
RATES = (8000, 192000)  # the output rates --sample-rate takes (every format above can hold them)
MANIFEST = "manifest.jsonl"
PARTS = ".manifest-parts"  # per-rank manifests of a distributed run, merged at its end
TEMP_PREFIX = ".musicldm-"  # temporary files, renamed into place when whole


def recipe(args, seed: int, sampler: str, device, dtype: str, threads: int, take: int) -> str:
    """The command that remakes take `take` of this run, for the files' comment tags. Every word is quoted as a
    shell needs (shlex); a value that begins with '-' is written --flag=VALUE, and such a prompt comes last,
    after --, so that neither reads as a flag."""
    words = ["musicldm", args.prompt, "-o", Path(args.output).name, "--seed", str(seed), "--steps", str(args.steps),
             "--guidance", repr(args.guidance), "--sampler", sampler, "--weights", str(args.weights),
             "--device", str(device), "--dtype", dtype]
    words += ["--threads", str(threads)] if device.type == "cpu" else []
    for flag, value in (("--negative", args.negative), ("--seconds", args.seconds), ("--revision", args.revision),
                        ("--input", args.input and os.path.abspath(args.input)), ("--strength", args.strength),
                        ("--inpaint", args.inpaint), ("--extend", args.extend), ("--sample-rate", args.sample_rate)):
        text = value if isinstance(value, str) else repr(value)
        words += ([f"{flag}={text}"] if text.startswith("-") else [flag, text]) if value is not None else []
    words += ["--eta", repr(args.eta)] if args.eta else []
    words += ["--attention-heads", args.attention_heads] if args.attention_heads != "checkpoint" else []
    words += ["--loop"] * args.loop + ["--exact-batches"] * args.exact_batches + ["--compile"] * args.compile + (
        ["--window", args.window] if args.window != "auto" else [])
    words += ["--takes", str(args.takes), "--take", str(take)] if args.takes > 1 else []
    if args.prompt.startswith("-"):
        words = [words[0]] + words[2:] + ["--", args.prompt]
    return shlex.join(words)


def output_paths(output: str, takes: int) -> List[Path]:
    """--output NAME.EXT, or NAME-1.EXT ... NAME-N.EXT (best first) for several takes."""
    path = Path(output)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--output: {output!r} must end in {', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]} "
                         "(the extension chooses the format)")
    if takes == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, takes + 1)]


def check_folder(folder: Path, flag: str) -> None:
    """A folder that exists and where files can be written: a probe, made and removed, fails now on a
    read-only folder rather than after generating. Errors name the folder and the flag that gave it."""
    if not folder.is_dir():
        raise ValueError(f"{flag}: folder {str(folder)!r} does not exist")
    try:
        Path(temp_file(folder)).unlink(missing_ok=True)  # (a batch run holding the folder may remove it first)
    except OSError as e:
        raise ValueError(f"{flag}: cannot write in {str(folder)!r} ({e.strerror})") from None


def check_outputs(paths: List[Path], flag: str = "--output") -> None:
    """Every target usable before any work: its folder exists and is writable (check_folder), it is not
    a folder, and its name fits the file system. Errors name the user's path (and the flag that gave it)."""
    folder = paths[0].parent
    check_folder(folder, flag)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for path in paths:
        try:
            size = len(os.fsencode(path.name))
        except UnicodeError:
            raise ValueError(f"{flag}: the file system cannot encode the name {path.name!r}") from None
        if size > limit:
            raise ValueError(f"{flag}: the name {path.name[:40]!r}... is {size} bytes, longer than the "
                             f"{limit} this file system allows")
        if path.is_dir():
            raise ValueError(f"{flag}: {str(path)!r} is a folder; give a file name")


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
        raise ValueError(f"--out-dir: cannot write {str(path)!r} ({write_problem(e, path.parent)})") from None


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
    tmp = temp_file(out_dir)
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
        raise ValueError(f"--out-dir: cannot write {str(out_dir / MANIFEST)!r} ({write_problem(e, out_dir)})") from None
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


def write_problem(e: OSError, folder: Path) -> str:
    """Why a write failed, in words that name the folder (and, when it is full, its disk)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free(folder)
        return f"the disk holding {str(folder)!r} is full: {free / 2**20:.1f} MiB free"
    return f"{e.strerror or e} in {str(folder)!r}"


def _free(folder: Path) -> float:
    """Bytes free on the disk holding `folder` (infinite where it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return math.inf


def file_line(path: Path, seconds: float, seed: int, sampler: str, steps: int, guidance: float) -> str:
    """The line said after a file is written: what it is and how it was made."""
    return f"{path}: {seconds:.2f} s, seed {seed}, {sampler}, {steps} steps, guidance {guidance:g}"


def remove_temporaries(out_dir: Path) -> None:
    """Temporary files of runs that were killed."""
    for path in out_dir.glob(f"{TEMP_PREFIX}*"):
        path.unlink(missing_ok=True)


def temp_file(folder: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def write_audio(paths: List[Path], audios, rate: int, flag: str = "--output",
                comments: Optional[List[str]] = None) -> None:
    """Write all files or none, each in the format its extension names (FORMATS), with its comment tag
    (RIFF INFO in a WAV, a Vorbis comment in FLAC and OGG): each to a temporary file in its folder, then
    all renamed into place. If anything fails, the temporary files and any target already renamed are
    removed. A WAV has no PEAK chunk (it holds a time stamp): the same audio gives the same bytes."""
    import numpy as np
    import soundfile as sf

    umask = os.umask(0)
    os.umask(umask)
    temps: List[str] = []
    done: List[Path] = []
    path = paths[0]
    try:
        for k, (path, audio) in enumerate(zip(paths, audios)):
            temps.append(temp_file(path.parent))
            fmt, subtype = FORMATS[path.suffix.lower()]
            audio = audio if fmt == "WAV" else np.clip(audio, -1.0, 1.0)  # integer and Vorbis formats clip
            with sf.SoundFile(temps[-1], "w", samplerate=rate, channels=1, format=fmt, subtype=subtype) as f:
                if fmt == "WAV":  # SFC_SET_ADD_PEAK_CHUNK off
                    sf._snd.sf_command(f._file, 0x1050, sf._ffi.NULL, sf._snd.SF_FALSE)
                if comments:
                    f.comment = comments[k]
                f.write(audio)
            if comments:
                keep_tag(temps[-1], fmt, comments[k])
            os.chmod(temps[-1], 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
            done.append(path)
    except BaseException as e:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        for written in done:
            written.unlink(missing_ok=True)
        if isinstance(e, OSError):  # `path` is the file that failed
            raise ValueError(f"{flag}: cannot write {str(path)!r} ({write_problem(e, path.parent)})") from None
        if isinstance(e, sf.SoundFileRuntimeError):  # libsndfile says only "System error." when the disk is full
            need = sum(np.asarray(a).size * 4 for a in audios) + 2**20
            problem = write_problem(OSError(errno.ENOSPC, "disk full"), path.parent) if _free(path.parent) < need \
                else f"{str(e).splitlines()[0]}"
            raise ValueError(f"{flag}: cannot write {str(path)!r} ({problem})") from None
        raise


TAG_CHUNK = b"mldm"  # a RIFF chunk of our own: a WAV's remake command when RIFF INFO cannot hold it


def keep_tag(path: str, fmt: str, command: str) -> None:
    """Make sure the file just written carries `command` whole: read it back; libsndfile silently drops a
    RIFF INFO comment past 2045 characters, so such a WAV gets the command in a chunk of its own (TAG_CHUNK,
    which readers of WAV skip) instead. A Vorbis comment (FLAC, OGG) holds any length: read back, it must
    be equal."""
    if read_tag(path) == command:
        return
    if fmt != "WAV":
        raise ValueError(f"{path}: the {fmt} comment tag did not keep the remake command")
    import struct

    with open(path, "r+b") as f:
        riff = f.read(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF WAVE file")
        data = command.encode("utf-8")
        chunk = TAG_CHUNK + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.write(chunk)
        f.seek(4)
        f.write(struct.pack("<I", size + len(chunk) - 8))
    if read_tag(path) != command:
        raise ValueError(f"{path}: the remake command could not be stored")


def read_tag(path) -> str:
    """The remake command a file carries ("" when none): a WAV's own TAG_CHUNK if it has one, else the
    comment tag (RIFF INFO, Vorbis comment)."""
    import soundfile as sf

    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            while True:
                header = f.read(8)
                if len(header) < 8:
                    break
                size = int.from_bytes(header[4:], "little")
                if header[:4] == TAG_CHUNK:
                    return f.read(size).decode("utf-8", "replace")
                f.seek(size + size % 2, os.SEEK_CUR)
    with sf.SoundFile(path) as f:
        return f.comment or ""


def mel_png(mel) -> bytes:
    """A log-mel spectrogram (frames, bins) as an 8-bit RGB PNG, time left to right, low frequencies at the
    bottom, its own range mapped onto a dark-to-bright ramp. numpy and zlib only: PNG is a signature and
    three chunks (IHDR, IDAT: zlib of each row after a 0 filter byte, IEND), each with its CRC-32."""
    import struct
    import zlib

    import numpy as np

    m = np.asarray(mel, dtype=np.float64).T[::-1]  # (bins, frames), low bins at the bottom
    low, high = float(m.min()), float(m.max())
    level = (m - low) / (high - low) if high > low else np.zeros_like(m)
    ramp = np.array([[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64)
    at = level * (len(ramp) - 1)
    i = np.minimum(at.astype(int), len(ramp) - 2)
    rgb = ramp[i] + (ramp[i + 1] - ramp[i]) * (at - i)[..., None]
    pixels = np.round(rgb).astype(np.uint8)  # (height, width, 3)
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_bytes(path: Path, data: bytes) -> None:
    """A file written whole or not at all: a temporary file in its folder, renamed into place."""
    tmp = temp_file(path.parent)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(f"--out-dir: cannot write {str(path)!r} ({write_problem(e, path.parent)})") from None
