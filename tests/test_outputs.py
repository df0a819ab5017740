"""What the entry points write, on its own (app/files.py, manifest.py, png.py): the remake tag, output names
and their checks, the manifest (scan, append, merge), the folder lock, whole-or-nothing writes and the mel
PNG, each called directly.

The command line's and batch mode's tests (test_cli, test_batch, test_refusals) reach the same code
through whole runs; here every branch is reached in milliseconds, with the property it must keep:
a recipe parses back to the run it records, a kill leaves each file whole or absent, a merge keeps
one record per item in the file's order.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import socket
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import refused
from musicldm_core.app import cli, files, manifest, png
from musicldm_core.app.cli import build_parser
from musicldm_core.app.files import TEMP_PREFIX
from musicldm_core.app.manifest import MANIFEST, PARTS, REJECTED


def names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def temporaries(monkeypatch) -> list:
    """The folders files.temp_file is asked for: each temporary file must sit beside its target (a rename
    across file systems is not atomic, and a probe elsewhere proves nothing)."""
    folders, real = [], files.temp_file

    def spy(folder):
        folders.append(Path(folder))
        return real(folder)

    monkeypatch.setattr(files, "temp_file", spy)
    return folders


def test_a_temporary_file_is_ours_and_beside_its_target(tmp_path):
    tmp = Path(files.temp_file(tmp_path))
    assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX) and tmp.suffix == ".tmp" and tmp.is_file()
    files.remove_temporaries(tmp_path)
    assert not tmp.exists()


# ---------------------------------------------------------------------------------------------
# The recipe: the command that remakes a file, in its comment tag
# ---------------------------------------------------------------------------------------------

RECIPE_KEYS = ("prompt", "seed", "steps", "guidance", "sampler", "weights", "device", "dtype", "threads", "negative",
               "seconds", "revision", "strength", "inpaint", "extend", "sample_rate", "eta", "attention_heads",
               "loop", "exact_batches", "compile", "window", "takes", "take")


@pytest.mark.parametrize("argv", [
    ["calm piano"],
    ["it's 'quoted' & $odd", "--negative", "noise; rm -rf", "--seconds", "2.5", "--revision", "v1", "--eta", "0.5",
     "--attention-heads", "authors", "--loop", "--exact-batches", "--compile", "--window", "windowed", "--takes", "3",
     "--sample-rate", "44100", "--guidance", "1.0000000001", "--steps", "7"],
    ["x", "--input", "in.wav", "--inpaint", "1.5:2", "--strength", "0.25", "--extend", "3", "--window", "whole"],
    ["two takes", "--takes", "2"],
])
def test_the_recipe_parses_back_to_the_run_it_records(argv, tmp_path):
    parser = build_parser()
    args = parser.parse_args(argv + ["-o", str(tmp_path / "song.wav")])
    take = 2 if args.takes > 1 else 1
    line, = cli.remake_tags(args, 123, "heun", torch.device("cpu"), "float32", 3, [take])
    words = shlex.split(line)
    assert words[0] == "musicldm"
    back = parser.parse_args(words[1:])
    expected = {**vars(args), "seed": 123, "sampler": "heun", "device": "cpu", "dtype": "float32", "threads": 3,
                "take": take if args.takes > 1 else None,
                "input": args.input and os.path.abspath(args.input)}
    assert {k: getattr(back, k) for k in RECIPE_KEYS} == {k: expected[k] for k in RECIPE_KEYS}
    assert back.output == "song.wav"  # the name only: the file may have moved


def test_the_recipe_leaves_out_what_is_default_and_threads_off_the_cpu():
    args = build_parser().parse_args(["a", "-o", "out/music.wav"])
    line, = cli.remake_tags(args, 0, "ddim", torch.device("cuda", 1), "float16", 8, [1])
    assert line == ("musicldm a -o music.wav --seed 0 --steps 200 --guidance 2.0 --sampler ddim --weights "
                    "ucsd-reach/musicldm --device cuda:1 --dtype float16")
    for flag in ("--threads", "--eta", "--attention-heads", "--loop", "--compile", "--window", "--takes", "--take",
                 "--negative", "--seconds", "--input"):
        assert flag not in shlex.split(line)


# ---------------------------------------------------------------------------------------------
# Output names and their checks
# ---------------------------------------------------------------------------------------------


def test_output_paths():
    assert files.output_paths("a/song.WAV", 1) == [Path("a/song.WAV")]
    assert files.output_paths("song.flac", 3) == [Path("song-1.flac"), Path("song-2.flac"), Path("song-3.flac")]
    refused("--output: 'song.mp3' must end in .wav, .flac or .ogg (the extension chooses the format)",
            files.output_paths, "song.mp3", 1)


def test_check_outputs_names_the_path_and_the_flag(tmp_path, monkeypatch, temporaries):
    files.check_outputs([tmp_path / "a.wav", tmp_path / "b.wav"])
    assert names(tmp_path) == [] and temporaries == [tmp_path]  # probed where the files go; the probe is gone
    refused(f"--out-dir: folder {str(tmp_path / 'no')!r} does not exist", files.check_outputs,
            [tmp_path / "no" / "a.wav"], "--out-dir")
    (tmp_path / "dir.wav").mkdir()
    refused(f"--output: {str(tmp_path / 'dir.wav')!r} is a folder; give a file name", files.check_outputs,
            [tmp_path / "a.wav", tmp_path / "dir.wav"])
    long = "x" * 252 + ".wav"
    refused(f"--output: the name {long[:40]!r}... is 256 bytes, longer than the 255 this file system allows",
            files.check_outputs, [tmp_path / long])
    files.check_outputs([tmp_path / ("x" * 251 + ".wav")])  # 255 bytes: allowed
    refused("--output: the file system cannot encode the name", files.check_outputs, [tmp_path / "a\ud800.wav"])

    def read_only(folder):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files, "temp_file", read_only)
    refused(f"--output: cannot write in {str(tmp_path)!r} (Permission denied)", files.check_outputs,
            [tmp_path / "a.wav"])


def test_a_name_limit_the_system_cannot_tell_is_255(tmp_path, monkeypatch):
    def unknown(folder, name):
        raise OSError(errno.EINVAL, "no limit")

    monkeypatch.setattr(files.os, "pathconf", unknown)
    refused("is 256 bytes, longer than the 255", files.check_outputs, [tmp_path / ("x" * 252 + ".wav")])


def test_the_file_systems_own_name_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "pathconf", lambda folder, name: {"PC_NAME_MAX": 100}[name])
    files.check_outputs([tmp_path / ("x" * 96 + ".wav")])
    refused("is 101 bytes, longer than the 100 this file system allows", files.check_outputs,
            [tmp_path / ("x" * 97 + ".wav")])


def test_a_probe_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    """A batch run holding the folder removes stale temporary files, perhaps this probe before we do."""
    monkeypatch.setattr(files, "temp_file", lambda folder: str(Path(folder) / f"{TEMP_PREFIX}gone.tmp"))
    files.check_outputs([tmp_path / "a.wav"])


# ---------------------------------------------------------------------------------------------
# The manifest: records read, appended, merged
# ---------------------------------------------------------------------------------------------


def record(item_id: str, **extra) -> dict:
    return {"id": item_id, "files": [f"{item_id}.wav"], **extra}


def lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_scan_keeps_the_latest_record_and_rejects_bad_lines(tmp_path, capsys):
    (tmp_path / MANIFEST).write_bytes(
        lines(record("a", n=1), record("b")) + b"not json\n" + b"\xff\xfe\n" + b"[1]\n" + b'{"id": 3}\n'
        + b'{"id": "c", "files": ["../c.wav"]}\n' + b'{"id": "c", "files": "c.wav"}\n' + b"\n"
        + lines(record("a", n=2)) + b'{"id": "cut", "fi')
    (tmp_path / PARTS).mkdir()
    (tmp_path / PARTS / "rank-00001.jsonl").write_bytes(lines(record("d")) + b'{"id": "e"')
    records, rejected = manifest._scan(tmp_path)
    assert sorted(records) == ["a", "b", "d"] and records["a"]["n"] == 2  # the later line wins
    path = tmp_path / MANIFEST
    assert [where for where, _ in rejected] == [
        f"{path} line 3: not JSON (Expecting value)", f"{path} line 4: not UTF-8",
        f"{path} line 5: not a JSON object", f"{path} line 6: its id must be text, got 3",
        f"{path} line 7: its files must be a list of file names, got ['../c.wav']",
        f"{path} line 8: its files must be a list of file names, got 'c.wav'"]
    assert rejected[0][1] == "not json" and rejected[1][1] == "\ufffd\ufffd"
    assert manifest.read_records(tmp_path) == records and capsys.readouterr().err == ""
    manifest.read_records(tmp_path, say=True)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 6 and said[0] == (f"musicldm: {path} line 3: not JSON (Expecting value); skipped "
                                          f"(the merge moves it to {REJECTED})")


def test_a_cut_line_that_is_not_last_is_rejected(tmp_path):
    (tmp_path / MANIFEST).write_bytes(b'{"id": "cut", "fi\n' + lines(record("a")))
    records, rejected = manifest._scan(tmp_path)
    assert list(records) == ["a"] and len(rejected) == 1 and "line 1: not JSON" in rejected[0][0]
    assert manifest._scan(tmp_path / "nothing") == ({}, [])
    parts_only = tmp_path / "parts-only"
    (parts_only / PARTS).mkdir(parents=True)
    (parts_only / PARTS / "rank-00000.jsonl").write_bytes(lines(record("p")))
    assert list(manifest._scan(parts_only)[0]) == ["p"]  # no manifest yet: the parts are still read


def test_is_done_needs_the_record_what_was_asked_and_the_files(tmp_path):
    item = SimpleNamespace(id="a", asked=lambda extra: {"prompt": "x", **extra},
                           files=lambda folder: [folder / "a.wav"])
    extra = {"weights": "w"}
    done = {"a": {"id": "a", "files": ["a.wav"], "asked": {"prompt": "x", "weights": "w"}}}
    assert not manifest.is_done(item, done, tmp_path, extra)  # its file is missing
    (tmp_path / "a.wav").write_bytes(b"")
    assert manifest.is_done(item, done, tmp_path, extra)
    assert not manifest.is_done(item, done, tmp_path, {"weights": "other"})
    assert not manifest.is_done(item, {}, tmp_path, extra)
    # a hand-edited record listing another item's file (present) does not make this item done
    (tmp_path / "b.wav").write_bytes(b"")
    for names in (["b.wav"], [], ["a.wav", "b.wav"]):
        assert not manifest.is_done(item, {"a": {**done["a"], "files": names}}, tmp_path, extra), names


def test_append_record_ends_a_cut_line_first(tmp_path):
    path = tmp_path / "out" / "parts" / "rank-0.jsonl"
    manifest.append_record(path, record("a"))  # the folders are made
    manifest.append_record(path, record("b"))
    assert path.read_bytes() == lines(record("a"), record("b"))  # a whole line before: nothing added between
    path.write_bytes(b"{")
    manifest.append_record(path, record("a"))
    assert path.read_bytes() == b"{\n" + lines(record("a"))  # one byte cut short is a line too
    path.write_bytes(lines(record("a")))
    with open(path, "ab") as f:
        f.write(b'{"id": "cu')  # a kill mid-line
    manifest.append_record(path, record("ü"))
    assert path.read_bytes() == lines(record("a")) + b'{"id": "cu\n' + json.dumps(record("ü"), ensure_ascii=False
                                                                                   ).encode() + b"\n"
    folder = tmp_path / "x.jsonl"
    folder.mkdir()
    refused(f"--out-dir: cannot write {str(folder)!r} (Is a directory in {str(tmp_path)!r})", manifest.append_record,
            folder, record("a"))


def test_merge_keeps_one_record_per_item_in_the_files_order(tmp_path):
    (tmp_path / MANIFEST).write_bytes(lines(record("c"), record("zz"), record("a", n=1)) + b"junk X \r\n")
    (tmp_path / PARTS).mkdir()
    (tmp_path / PARTS / "rank-00000.jsonl").write_bytes(lines(record("a", n=2), record("b", prompt="café")))
    (tmp_path / PARTS / "rank-00001.jsonl").write_bytes(lines(record("yy")) + b"[2]\n")
    manifest.merge_manifest(tmp_path, ["c", "a", "b"])
    text = (tmp_path / MANIFEST).read_text(encoding="utf-8")
    merged = [json.loads(line) for line in text.splitlines()]
    assert [(r["id"], r.get("n")) for r in merged] == [("c", None), ("a", 2), ("b", None), ("yy", None), ("zz", None)]
    assert '"prompt": "café"' in text  # as written: not escaped
    assert (tmp_path / REJECTED).read_bytes() == b"junk X \r\n[2]\n"  # each line as it was
    assert names(tmp_path) == sorted([MANIFEST, REJECTED])  # the parts and their folder are gone, no temporary left
    manifest.merge_manifest(tmp_path, ["a"])  # again, with nothing to set aside: the same records, nothing added
    assert (tmp_path / REJECTED).read_bytes() == b"junk X \r\n[2]\n"
    assert len((tmp_path / MANIFEST).read_text().splitlines()) == 5


def test_the_merged_manifest_is_written_beside_itself(tmp_path, temporaries):
    (tmp_path / MANIFEST).write_bytes(lines(record("a")))
    manifest.merge_manifest(tmp_path, ["a"])
    assert temporaries == [tmp_path]


def test_a_failed_merge_names_the_manifest_and_leaves_no_temporary(tmp_path, monkeypatch):
    (tmp_path / MANIFEST).write_bytes(lines(record("a")))

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    refused(f"--out-dir: cannot write {str(tmp_path / MANIFEST)!r} (the disk holding {str(tmp_path)!r} is full",
            manifest.merge_manifest, tmp_path, ["a"])
    assert names(tmp_path) == [MANIFEST]


# ---------------------------------------------------------------------------------------------
# The folder lock
# ---------------------------------------------------------------------------------------------


def test_the_lock_names_its_holder_and_is_free_again_when_released(tmp_path):
    with manifest.lock_folder(tmp_path) as lock:
        holder = (tmp_path / manifest.LOCK).read_text()
        assert holder.startswith(f"pid {os.getpid()} on {socket.gethostname()}, since ") and holder.endswith("\n")
        message = refused(f"--out-dir: {str(tmp_path)!r} is in use by another batch run (pid {os.getpid()}",
                          manifest.lock_folder, tmp_path)
        assert message.endswith("; wait for it to finish, or use another folder")
        assert lock.path == tmp_path / manifest.LOCK
    assert not (tmp_path / manifest.LOCK).exists()
    manifest.lock_folder(tmp_path).release()  # taken again
    (tmp_path / manifest.LOCK).write_text("pid 1 on a machine that was killed\n")  # a stale file is not held
    lock = manifest.lock_folder(tmp_path)
    assert re.fullmatch(rf"pid {os.getpid()} on .+, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\n",
                        (tmp_path / manifest.LOCK).read_text())
    lock.release()


def test_a_holder_that_wrote_nothing_is_another_process(tmp_path):
    import fcntl

    with open(tmp_path / manifest.LOCK, "a+") as held:  # locked, not yet named
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(f"--out-dir: {str(tmp_path)!r} is in use by another batch run (another process); wait",
                manifest.lock_folder, tmp_path)


def test_a_lock_file_removed_while_being_taken_is_taken_anew(tmp_path, monkeypatch):
    """Between our flock and our check, the holder released (removed) the file: we hold a lock on a file no
    one can see; the lock is taken again on the file now at the path."""
    real, calls = os.stat, []

    def released_meanwhile(path, *args, **kwargs):
        if Path(path) == tmp_path / manifest.LOCK and not calls:
            calls.append(path)
            os.unlink(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "stat", released_meanwhile)
    lock = manifest.lock_folder(tmp_path)
    assert calls and (tmp_path / manifest.LOCK).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()


# ---------------------------------------------------------------------------------------------
# Writing: whole or not at all
# ---------------------------------------------------------------------------------------------


def test_write_problem_says_how_full_the_disk_is(tmp_path, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=3 * 2**20 + 2**19))
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert files.write_problem(OSError(code, "x"), tmp_path) == \
            f"the disk holding {str(tmp_path)!r} is full: 3.5 MiB free"
    assert files.write_problem(OSError(errno.EACCES, "Permission denied"), tmp_path) == \
        f"Permission denied in {str(tmp_path)!r}"
    assert files.write_problem(OSError("odd"), tmp_path) == f"odd in {str(tmp_path)!r}"

    def gone(folder):
        raise OSError(errno.ENOENT, "gone")

    monkeypatch.setattr(files.shutil, "disk_usage", gone)
    assert files._free(tmp_path) == float("inf")


def test_file_line():
    assert files.file_line(Path("o/a.wav"), 10.235, 7, "ddim", 50, 2.0) == \
        "o/a.wav: 10.23 s, seed 7, ddim, 50 steps, guidance 2"


def test_remove_temporaries_removes_only_ours(tmp_path):
    keep = ["a.wav", ".other", MANIFEST]
    for name in keep + [f"{TEMP_PREFIX}x.tmp", f"{TEMP_PREFIX}y.tmp"]:
        (tmp_path / name).write_bytes(b"")
    files.remove_temporaries(tmp_path)
    assert names(tmp_path) == sorted(keep)


def tone(n: int = 1600, peak: float = 0.5) -> np.ndarray:
    return (peak * np.sin(np.arange(n) / 5.0)).astype(np.float32)


def test_write_audio_in_each_format_with_its_tag_and_the_usual_permissions(tmp_path):
    loud = tone(peak=1.5)
    paths = [tmp_path / "a.wav", tmp_path / "b.FLAC", tmp_path / "c.ogg"]
    umask = os.umask(0o022)
    try:
        files.write_audio(paths, [loud] * 3, 16000, comments=["musicldm a", "musicldm b", "musicldm c"])
    finally:
        os.umask(umask)
    assert os.umask(umask) == umask  # the process's umask is left as it was
    assert names(tmp_path) == ["a.wav", "b.FLAC", "c.ogg"]
    for path, (fmt, subtype), comment in zip(paths, files.FORMATS.values(), "abc"):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == (fmt, subtype, 16000, 1)
        with sf.SoundFile(path) as f:
            assert f.comment == f"musicldm {comment}"
        assert os.stat(path).st_mode & 0o777 == 0o644
    np.testing.assert_array_equal(sf.read(paths[0], dtype="float32")[0], loud)  # float WAV: as computed, unclipped
    flac = sf.read(paths[1], dtype="float32")[0]
    assert flac.max() <= 1.0 and flac.min() >= -1.0 and np.abs(flac - np.clip(loud, -1, 1)).max() < 2**-22
    ogg = sf.read(paths[2], dtype="float32")[0]  # Vorbis keeps values past 1 (1.54 unclipped), clipped it rings a bit
    assert ogg.max() < 1.1 and ogg.min() > -1.1


def test_the_same_audio_gives_the_same_bytes(tmp_path):
    files.write_audio([tmp_path / "a.wav"], [tone()], 16000)
    files.write_audio([tmp_path / "b.wav"], [tone()], 16000)
    data = (tmp_path / "a.wav").read_bytes()
    assert data == (tmp_path / "b.wav").read_bytes() and b"PEAK" not in data


def test_audio_is_written_beside_its_target(tmp_path, temporaries):
    (tmp_path / "sub").mkdir()
    files.write_audio([tmp_path / "a.wav", tmp_path / "sub" / "b.wav"], [tone(), tone()], 16000)
    files.write_bytes(tmp_path / "sub" / "c.png", b"png")
    assert temporaries == [tmp_path, tmp_path / "sub", tmp_path / "sub"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "b.wav").mkdir()  # the second target cannot be replaced: the first, renamed already, is removed
    refused(f"--out-dir: cannot write {str(tmp_path / 'b.wav')!r} (Is a directory in {str(tmp_path)!r})",
            files.write_audio, [tmp_path / "a.wav", tmp_path / "b.wav"], [tone(), tone()], 16000, "--out-dir")
    assert names(tmp_path) == ["b.wav"]
    real = sf.SoundFile

    class Full(real):
        def write(self, data):
            raise sf.SoundFileRuntimeError("System error.")

    monkeypatch.setattr(sf, "SoundFile", Full)
    need = 2 * 1600 * 4 + 2**20  # two takes of 1600 float32 samples, and a MiB for the headers
    for free, problem in ((need - 1, f"the disk holding {str(tmp_path)!r} is full: 1.0 MiB free"),
                          (need, "System error.")):
        monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=free) if Path(folder)
                            == tmp_path else pytest.fail(f"disk usage of {folder!r}"))
        refused(f"--output: cannot write {str(tmp_path / 'c.wav')!r} ({problem})", files.write_audio,
                [tmp_path / "c.wav", tmp_path / "d.wav"], [tone(), tone()], 16000)
    assert names(tmp_path) == ["b.wav"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sf, "SoundFile", real)
    monkeypatch.setattr(files.os, "chmod", interrupted)
    with pytest.raises(KeyboardInterrupt):  # not an error of ours: passed on, after the cleanup
        files.write_audio([tmp_path / "d.wav"], [tone()], 16000)
    assert names(tmp_path) == ["b.wav"]


def test_write_bytes_whole_or_not_at_all(tmp_path, monkeypatch):
    umask = os.umask(0o022)
    try:
        files.write_bytes(tmp_path / "a.png", b"data")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.png").read_bytes() == b"data" and os.stat(tmp_path / "a.png").st_mode & 0o777 == 0o644
    (tmp_path / "b.png").mkdir()
    refused(f"--out-dir: cannot write {str(tmp_path / 'b.png')!r} (Is a directory in {str(tmp_path)!r})",
            files.write_bytes,
            tmp_path / "b.png", b"data")
    assert names(tmp_path) == ["a.png", "b.png"]


def read_png(data: bytes):
    """(width, height, rows of RGB pixels) of an 8-bit RGB PNG, every chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, []
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        body, crc = data[at + 8:at + 8 + size], struct.unpack(">I", data[at + 8 + size:at + 12 + size])[0]
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        at += 12 + size
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"] and chunks[2][1] == b""
    width, height, *kind = struct.unpack(">IIBBBBB", chunks[0][1])
    assert kind == [8, 2, 0, 0, 0]  # 8 bits, RGB; deflate, filter method 0, no interlace
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()  # filter byte 0 on every row
    return width, height, raw[:, 1:].reshape(height, width, 3)


def test_mel_png_time_across_low_bins_at_the_bottom():
    mel = np.zeros((5, 3))  # (frames, bins)
    mel[4, 0] = 1.0  # the last frame's lowest bin: bottom right, the brightest
    mel[0, 2] = -1.0  # the first frame's top bin: top left, the darkest
    width, height, pixels = read_png(png.mel_png(mel))
    assert (width, height) == (5, 3)
    assert pixels[2, 4].tolist() == [252, 253, 191] and pixels[0, 0].tolist() == [0, 0, 4]
    assert pixels[1, 1].tolist() == [183, 55, 121]  # 0 is halfway from -1 to 1: the ramp's middle colour
    assert pixels[1, 2].tolist() == [183, 55, 121]
    np.testing.assert_array_equal(read_png(png.mel_png(np.full((2, 2), 7.0)))[2], np.zeros((2, 2, 3)) + [0, 0, 4])
    _, _, stops = read_png(png.mel_png(np.arange(5.0)[:, None]))  # levels 0, 1/4, 1/2, 3/4, 1: the ramp's stops
    assert stops[0].tolist() == [[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]]
    quarter = np.array([[0.0], [1.0], [3.0], [8.0]])  # levels 0, 1/8, 3/8, 1: between ramp colours
    _, _, p = read_png(png.mel_png(quarter))
    assert p[0, 1].tolist() == [40, 9, 64] and p[0, 2].tolist() == [132, 36, 122]


def test_a_float32_mel_draws_what_its_values_draw():
    """The levels are computed in float64 whatever the mel's dtype (the pipeline's mels are float32)."""
    mel = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)
    assert png.mel_png(mel) == png.mel_png(mel.astype(np.float64))


def test_the_manifest_is_utf8_whatever_the_locale(tmp_path):
    """A shell in the C locale must not make the merge fail on a prompt in another script (or write it otherwise)."""
    import locale

    (tmp_path / MANIFEST).write_bytes(lines(record("a", prompt="café 音楽")) + "naïve junk\n".encode())
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        manifest.merge_manifest(tmp_path, ["a"])
    finally:
        locale.setlocale(locale.LC_CTYPE, old)
    assert json.loads((tmp_path / MANIFEST).read_bytes().decode("utf-8"))["prompt"] == "café 音楽"
    assert (tmp_path / REJECTED).read_bytes().decode("utf-8") == "naïve junk\n"


def test_a_lock_file_removed_by_hand_is_released_quietly(tmp_path):
    lock = manifest.lock_folder(tmp_path)
    (tmp_path / manifest.LOCK).unlink()
    lock.release()
    assert not (tmp_path / manifest.LOCK).exists()
