"""Audio files written whole or not at all, checked before any work, each carrying its remake command.

Every target is checked first (check_outputs: its folder writable, its name one the file system takes);
then write_audio writes all takes to temporary names in the target folder and renames them into place,
so that a kill at any moment leaves each file whole or absent. The remake command is the file's comment
tag (RIFF INFO, a Vorbis comment), or a chunk of our own (TAG_CHUNK) where RIFF INFO cannot hold it."""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

# output file extension -> (soundfile format, subtype): float32 WAV as the models compute, 24-bit FLAC, Vorbis
FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".ogg": ("OGG", "VORBIS")}
RATES = (8000, 192000)  # the output rates --sample-rate takes (every format above can hold them)
TEMP_PREFIX = ".musicldm-"  # temporary files, renamed into place when whole


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


def write_bytes(path: Path, data: bytes, flag: str = "--out-dir") -> None:
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
        raise ValueError(f"{flag}: cannot write {str(path)!r} ({write_problem(e, path.parent)})") from None


def audio_hashes(paths: List[str]) -> dict:
    """{path: the SHA-256 of its bytes} of the audio prompts a take was made from (its records keep them, so
    that a remake can tell a changed file, and a rerun makes such an item again); a missing file: None."""
    import hashlib

    out = {}
    for path in paths:
        try:
            out[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            out[path] = None
    return out


def audio_crops(paths: List[str]) -> dict:
    """{path: the second its centred 10 s crop starts at (audio_prompt.crop_start)} for the audio prompts longer
    than 10 s (read from their headers; the others are left out): what a take's record states of each clip."""
    import soundfile as sf

    from ..audio_prompt import READ_RATE, crop_start

    out = {}
    for path in paths:
        try:
            info = sf.info(path)
        except Exception:  # gone or unreadable since: the hash says so
            continue
        start = crop_start(math.ceil(info.frames * READ_RATE / info.samplerate))
        if start is not None:
            out[path] = start
    return out


def check_hashes(recorded, flag: str = "--from") -> None:
    """Each FILE=SHA256 a remake command records: the file as it was, else one line naming it."""
    for entry in recorded:
        path, _, digest = entry.rpartition("=")
        now = audio_hashes([path])[path]
        if now != digest:
            state = "is missing" if now is None else f"has changed since the take was made (SHA-256 {now[:12]}..., " \
                f"the take's {digest[:12]}...)"
            raise ValueError(f"{flag}: the audio prompt {path!r} {state}: the remake would be another take; restore "
                             "the file, or leave --sha256 out to accept the difference")
