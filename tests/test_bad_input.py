"""Round 4 of bad input (issue 37): the remake tag past libsndfile's RIFF INFO limit, the page's history
with a sparse record, the converter's damaged files and unusable OUT_DIR, the page's form in another
encoding, and requests that used to escape the HTTP handler. Each test was red before its fix."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import exchange, musicldm
from musicldm_core import MusicLDMPipeline
from musicldm_core.app import files, manifest
from test_serve import _multipart, _wav, pipe, running  # noqa: F401  (fixtures)
from weights_convert import original, reader


# --- the remake tag ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
@pytest.mark.parametrize("length", [40, 2045, 2046, 20000])
def test_a_tag_of_any_length_is_read_back_whole(tmp_path, ext, length):
    command = ("musicldm " + "techno é " * length)[:length]
    path = tmp_path / f"a{ext}"
    audio = 0.1 * np.sin(np.arange(1600, dtype=np.float32) / 5)
    files.write_audio([path], [audio], 16000, comments=[command])
    assert files.read_tag(path) == command
    back, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and back.shape == audio.shape
    if ext == ".wav":
        assert np.array_equal(back, audio)  # the chunk of our own is skipped by a reader of WAV


def test_a_long_prompt_is_remade_from_its_file(tmp_path, tiny_ckpt):
    """'techno ' * 2857 makes a command of over 20000 characters: --from remakes the file bit for bit."""
    prompt = "techno " * 2857
    r = musicldm(prompt.strip(), "-o", tmp_path / "long.wav", "--weights", tiny_ckpt, "--steps", 3, "--seconds", 0.5,
                 "--seed", 4, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert files.read_tag(tmp_path / "long.wav").startswith("musicldm 'techno techno")
    r = musicldm("--from", tmp_path / "long.wav", "-o", tmp_path / "again.wav")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "long.wav").read_bytes() == (tmp_path / "again.wav").read_bytes()


# --- the page's history ---------------------------------------------------------------------------------

def test_the_page_starts_past_a_record_it_cannot_list(running, tmp_path, capfd):
    """A record with only id and files (batch mode accepts it: it makes the item again) is named and skipped;
    the others are listed, and a recorded input that is not a plain name is never served."""
    out = tmp_path / "out"
    full = {"id": "full", "prompt": "rain", "negative": None, "seconds": 0.5, "seed": 1, "steps": 3,
            "guidance": 2.0, "takes": 1, "sampler": "ddim", "files": ["full.wav"], "input": "../secret.txt"}
    (out / "full.wav").write_bytes(_wav(0.1))
    (tmp_path / "secret.txt").write_text("secret")
    (out / "manifest.jsonl").write_text(json.dumps({"id": "sparse", "files": ["sparse.wav"]}) + "\n"
                                        + json.dumps(full) + "\n")
    r = running()
    assert "manifest.jsonl record 'sparse' has no prompt" in capfd.readouterr().err
    status, listing = r.request("GET", "/api/jobs")
    assert status == 200 and [j["id"] for j in listing["jobs"]] == ["full"]
    for path in ("/files/..%2Fsecret.txt", "/files/../secret.txt", "/files/%2E%2E%2Fsecret.txt"):
        assert r.request("GET", path)[0] == 404, path


# --- the converter --------------------------------------------------------------------------------------

def convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weights_convert.original", *map(str, args)], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)


def one_line(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weights_convert.original: error: ") and message in lines[0], lines


def test_a_damaged_safetensors_file_is_one_line(tmp_path, authors_release):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    one_line(convert(bad, tmp_path / "o1"), "bad.safetensors: not a readable .safetensors file")
    one_line(convert(authors_release.paths["main"], tmp_path / "o2", "--vae", bad),
             "bad.safetensors: not a readable .safetensors file")


def test_an_out_dir_that_cannot_be_made_is_refused_before_the_read(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    read = []
    monkeypatch.setattr(original, "read_checkpoint", lambda path: read.append(path))
    with pytest.raises(original.ConversionError, match=r"cannot be made: .*file is a file, not a folder"):
        original.convert(tmp_path / "never.ckpt", tmp_path / "file" / "out")
    real_mkdtemp = original.tempfile.mkdtemp

    def read_only(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(original.tempfile, "mkdtemp", read_only)
    with pytest.raises(original.ConversionError, match=r"cannot be made in .* \(Permission denied\)"):
        original.convert(tmp_path / "never.ckpt", tmp_path / "ro" / "out")
    monkeypatch.setattr(original.tempfile, "mkdtemp", real_mkdtemp)
    assert read == []
    one_line(convert(tmp_path / "never.ckpt", tmp_path / "file" / "out"), "is a file, not a folder")


@pytest.mark.parametrize("content, says", [
    (b"", "an empty file"), (os.urandom(256) + b"\xff\xfe", "not a checkpoint (its first bytes are"),
    (b"hello, I am text\n", "a text file, not a checkpoint"),
    (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", "a bare pickle (protocol 4)")])
def test_what_a_file_that_is_not_a_checkpoint_is(tmp_path, content, says):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(original.ConversionError, match=r"x\.ckpt: " + "(.*)"):
        reader.read_checkpoint(path)
    try:
        reader.read_checkpoint(path)
    except original.ConversionError as e:
        assert says in str(e), str(e)


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path, monkeypatch):
    path = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 * 2**20))  # 64 MiB of zeros: 64 KiB on disk
    assert path.stat().st_size < 2**20
    monkeypatch.setattr(torch, "load", lambda *a, **kw: pytest.fail("torch.load read the bomb"))
    with pytest.raises(original.ConversionError, match=r"declares 67108864 bytes inflated from a file of \d+"):
        reader.read_checkpoint(path)


# --- the page's requests -------------------------------------------------------------------------------

def test_a_form_field_in_another_encoding_is_refused_by_name(running):
    r = running()
    body, headers = _multipart({"steps": "3"}, _wav(0.2))
    body = body.replace(b'name="steps"\r\n\r\n3', b'name="prompt"\r\n\r\ncaf\xe9 techno')
    status, answer = r.request("POST", "/api/jobs", body, headers)
    assert status == 400 and answer["field"] == "prompt" and "not valid UTF-8 (byte 0xe9" in answer["error"]


def answer_of(raw: bytes) -> tuple:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_requests_that_escaped_the_handler_get_a_json_answer(running, monkeypatch, capfd):
    r = running()
    host = f"Host: {r.host}\r\n".encode()
    deep = b"[" * 30000 + b"]" * 30000
    status, answer = answer_of(exchange(r.server.port, b"POST /api/jobs HTTP/1.1\r\n" + host
                                           + b"Content-Type: application/json\r\nContent-Length: "
                                           + str(len(deep)).encode() + b"\r\n\r\n" + deep))
    assert status == 400 and "nested too deep" in answer["error"]
    status, answer = answer_of(exchange(r.server.port, b"POST /api/jobs HTTP/1.1\r\n" + host
                                           + b"Content-Type: application/json\r\nContent-Length: \xc2\xb2\r\n\r\n{}"))
    assert status == 411 and "Content-Length" in answer["error"]
    status, answer = answer_of(exchange(r.server.port, b"GARBAGE\r\n\r\n"))
    assert status == 400 and answer["error"]
    for name in ("..", "x" * 300 + ".wav", "../../etc/passwd", "a/b.wav"):
        body, headers = _multipart({"prompt": "rain", "steps": "3"}, _wav(0.2), name)
        status, answer = r.request("POST", "/api/jobs", body, headers)
        assert status == 202, (name, answer)
        assert r.wait(answer["id"])["state"] == "done"
    monkeypatch.setattr(r.service, "views", lambda: 1 / 0)  # a bug in the handler's work
    status, answer = r.request("GET", "/api/jobs")
    assert status == 500 and answer == {"error": "internal error (ZeroDivisionError); the server goes on"}
    assert r.request("GET", f"/api/jobs/{answer and 'nope'}")[0] == 404  # and it goes on
    assert "Traceback" not in capfd.readouterr().err


# --- the remake command: overrides, a tag that does not parse, files of batch mode and the page ------------

QUICK = ["--steps", 3, "--seconds", 0.5, "--threads", 1]


def test_flags_beside_from_override_the_files(tmp_path, tiny_ckpt):
    r = musicldm("rain", "-o", tmp_path / "a.wav", "--weights", tiny_ckpt, *QUICK, "--seed", 2)
    assert r.returncode == 0, r.stderr
    moved = tmp_path / "moved"
    shutil.copytree(tiny_ckpt, moved)  # the weights moved: --weights beside --from says where they are now
    r = musicldm("--from", tmp_path / "a.wav", "-o", tmp_path / "b.flac", "--sample-rate", 48000, "--weights", moved)
    assert r.returncode == 0, r.stderr
    assert "remaking a.wav with --sample-rate, --weights overridden (not the file bit for bit)" in r.stderr
    audio, rate = sf.read(tmp_path / "b.flac")
    assert rate == 48000 and len(audio) == 24000
    tag = files.read_tag(tmp_path / "b.flac")
    assert "--sample-rate 48000" in tag and f"--weights {moved}" in tag and "-o b.flac" in tag
    r = musicldm("--from", tmp_path / "a.wav", "-o", tmp_path / "c.wav")  # no override: the same bytes
    assert r.returncode == 0 and "overridden" not in r.stderr
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()


@pytest.mark.parametrize("tag, says", [("musicldm rain --bogus 3", "unrecognized arguments: --bogus 3"),
                                       ("musicldm 'rain --steps 3", "No closing quotation"),
                                       ("musicldm rain --steps many", "argument --steps: invalid int value: 'many'")])
def test_a_tag_that_does_not_parse_is_the_files_fault(tmp_path, tag, says):
    files.write_audio([tmp_path / "x.wav"], [np.zeros(160, np.float32) + 0.1], 16000, comments=[tag])
    r = musicldm("--from", tmp_path / "x.wav", "--steps", 4)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"--from: the tag of '{tmp_path / 'x.wav'}' does not parse ({says}" in lines[0], lines[0]


def test_a_batch_items_file_carries_the_command_that_remakes_it(tmp_path, tiny_ckpt):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "rain", "id": "r", "takes": 2}\n{"prompt": "jazz", "id": "j"}\n')
    r = musicldm("--prompts", prompts, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, *QUICK, "--seed", 5,
                 "--exact-batches")
    assert r.returncode == 0, r.stderr
    for name in ("r-1.wav", "r-2.wav", "j.wav"):
        tag = files.read_tag(tmp_path / "out" / name)
        assert tag.startswith("musicldm ") and "--exact-batches" in tag, tag
        again = musicldm("--from", tmp_path / "out" / name, "-o", tmp_path / f"again-{name}")
        assert again.returncode == 0, again.stderr
        assert np.array_equal(sf.read(tmp_path / "out" / name)[0], sf.read(tmp_path / f"again-{name}")[0]), name


def test_a_page_take_carries_the_command_that_remakes_it(running, tmp_path):
    r = running()
    status, answer = r.request("POST", "/api/jobs", {"prompt": "rain", "steps": 3, "seconds": 0.5, "seed": 6})
    job = r.wait(answer["id"])
    path = tmp_path / "out" / job["files"][0]
    assert files.read_tag(path) == job["command"]
    again = musicldm("--from", path, "-o", tmp_path / "again.wav", "--threads", torch.get_num_threads())
    assert again.returncode == 0, again.stderr
    assert np.array_equal(sf.read(path)[0], sf.read(tmp_path / "again.wav")[0])


def test_the_authors_preset_records_no_eta_on_another_sampler(tmp_path, tiny_ckpt):
    common = ["--weights", tiny_ckpt, *QUICK, "--takes", 2, "--seed", 1, "--preset", "authors"]
    r = musicldm("rain", "-o", tmp_path / "p.wav", "--sampler", "pndm", *common)
    assert r.returncode == 0, r.stderr
    assert "--eta" not in files.read_tag(tmp_path / "p.wav") and "--sampler pndm" in files.read_tag(
        tmp_path / "p.wav")
    r = musicldm("rain", "-o", tmp_path / "d.wav", *common)
    assert r.returncode == 0 and "--eta 1.0" in files.read_tag(tmp_path / "d.wav")


# --- raw OS messages and fields -----------------------------------------------------------------------------

def test_serve_names_a_port_in_use_before_loading(tmp_path, tiny_ckpt, monkeypatch):
    from musicldm_core.app import serve

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = serve.build_parser().parse_args(["--port", str(port), "--weights", str(tiny_ckpt), "--out-dir",
                                                str(tmp_path / "o")])
        with pytest.raises(ValueError, match=rf"--port {port}: cannot listen on 127\.0\.0\.1:{port} \(Address "
                                             r"already in use\); choose another --port"):
            serve.serve(args)
    (tmp_path / "file").write_text("x")
    args = serve.build_parser().parse_args(["--weights", str(tiny_ckpt), "--out-dir", str(tmp_path / "file")])
    with pytest.raises(ValueError, match=r"--out-dir: '.*file' is a file, not a folder"):
        serve.serve(args)


def test_page_refusals_name_their_field_in_the_pages_words(running):
    r = running()
    for data, field, words in (({"steps": 10**12}, "steps", "steps must be between 1 and 1000"),
                               ({"seconds": 1e7}, "seconds", "ask for a smaller takes or seconds")):
        status, answer = r.request("POST", "/api/jobs", {"prompt": "rain", **data})
        assert status == 400 and answer["field"] == field and words in answer["error"], answer
        assert "num_inference_steps" not in answer["error"] and "audio_length_in_s" not in answer["error"]
    body, headers = _multipart({"prompt": "rain"}, b"")
    status, answer = r.request("POST", "/api/jobs", body, headers)
    assert status == 400 and answer == {"error": "the audio file 'input.wav' is empty", "field": "audio"}


def test_the_memory_refusal_with_an_input_names_extend(tmp_path, tiny_ckpt):
    sf.write(tmp_path / "in.wav", 0.3 * np.sin(np.arange(16000) / 7), 16000)
    r = musicldm("rain", "-o", tmp_path / "o.wav", "--weights", tiny_ckpt, "--input", tmp_path / "in.wav",
                 "--extend", "1e9")
    assert r.returncode == 1 and "ask for a smaller --takes or --extend" in r.stderr, r.stderr


# --- what a newcomer stumbled on --------------------------------------------------------------------------

def test_a_long_stage_says_where_it_is_outside_a_terminal(monkeypatch):
    from musicldm_core.app import progress

    stream = io.StringIO()
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    p = progress.StageProgress(stream=stream)
    for done in range(3):
        p("denoising", done, 4)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("musicldm: denoising 0/4 steps so far (") and "left" not in lines[0], lines
    assert lines[1].startswith("musicldm: denoising 1/4 steps so far (") and "s left)" in lines[1], lines
    assert lines[-1].startswith("musicldm: denoising 2/4 steps (")
    monkeypatch.setattr(progress, "INTERVAL", 3600.0)
    stream.truncate(0)
    quiet = progress.StageProgress(stream=stream)
    quiet("denoising", 0, 4), quiet("denoising", 1, 4), quiet.close()
    assert "so far" not in stream.getvalue()


def test_the_inputs_round_trip_is_labelled_and_reading_is_shown(tmp_path, tiny_ckpt):
    sf.write(tmp_path / "in.wav", 0.3 * np.sin(np.arange(8000) / 7), 16000)  # at 16 kHz: no resampling
    r = musicldm("rain", "-o", tmp_path / "o.wav", "--weights", tiny_ckpt, "--input", tmp_path / "in.wav",
                 "--inpaint", "0.1:0.3", *QUICK[:2], "--threads", 1)
    assert r.returncode == 0, r.stderr
    stages = [line.split(" (")[0] for line in r.stderr.splitlines() if line.startswith("musicldm: ")]
    assert stages == ["musicldm: reading the input", "musicldm: encoding the prompt",
                      "musicldm: encoding the input 1/1 windows", "musicldm: denoising 3/3 steps",
                      "musicldm: decoding 1/1 windows", "musicldm: vocoding 1/1 windows",
                      "musicldm: decoding the input 1/1 windows", "musicldm: vocoding the input 1/1 windows"], stages


def test_output_mistakes_are_refused_before_torch_loads(tmp_path):
    for output, says in (("x.mp3", "must end in .wav, .flac or .ogg"), ("no/such/x.wav", "does not exist")):
        code = ("import sys; from musicldm_core.app import cli; rc = cli.main(['rain', '-o', %r]); "
                "sys.exit(0 if rc == 1 and 'torch' not in sys.modules else 3)") % str(tmp_path / output)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0 and says in r.stderr, r.stderr


def test_help_names_serve_and_the_hub_failure_names_the_way_out(monkeypatch, tmp_path):
    r = musicldm("--help")
    from musicldm_core.app.prompt_file import FIELDS

    assert "musicldm serve" in r.stdout and all(name in r.stdout for name in FIELDS)  # --prompts lists every field
    from musicldm_core import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"not in the cache at .*; give --weights FOLDER .* or set HF_HUB_CACHE"):
        hub.resolve("ucsd-reach/musicldm", None)


def test_the_manifest_has_the_files_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        manifest.append_record(tmp_path / "manifest.jsonl", {"id": "a", "files": []})
        manifest.merge_manifest(tmp_path, ["a"])
        files.write_audio([tmp_path / "a.wav"], [np.zeros(16, np.float32) + 0.1], 16000)
    finally:
        os.umask(old)
    assert (tmp_path / "manifest.jsonl").stat().st_mode & 0o777 == (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o644


def test_a_long_step_says_which_window_it_is_in(monkeypatch):
    from musicldm_core.app import progress

    stream = io.StringIO()
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    p = progress.StageProgress(stream=stream)
    p("denoising", 0, 2)
    p("denoising: windows", 0, 150)
    p("denoising: windows", 38, 150)
    p("denoising", 1, 2)
    p.close()
    lines = stream.getvalue().splitlines()
    assert "musicldm: denoising 0/2 steps so far, window 38/150 of this step (" in stream.getvalue(), lines
    assert lines[-1].startswith("musicldm: denoising 1/2 steps (")  # the detail ends no stage


def test_a_tensor_named_by_a_number_is_one_refusal(tmp_path):
    """Found while reading state_dict_of for what a mutated pickle can reach: a tensor keyed by an integer made
    it raise AttributeError ('int' object has no attribute 'startswith') instead of one ConversionError."""
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {1: torch.ones(2), "a": torch.ones(2)}}, path)
    obj, _ = reader.read_checkpoint(path)
    with pytest.raises(original.ConversionError, match=r"x\.ckpt: a tensor is named 1, not by text"):
        reader.state_dict_of(obj, path)


def test_a_pickle_that_declares_an_exabyte_is_refused_cleanly(tmp_path, capsys):
    """Found by the long fuzz run: BYTEARRAY8 with a length of 2**62 in data.pkl; read from the archive's
    stream, CPython's unpickler freed a bytearray still exported ("deallocated bytearray object has exported
    buffers" on stderr). Now one ConversionError and nothing else said."""
    import struct

    from test_fuzz import BASE_ENTRIES, _archive

    path = tmp_path / "x.ckpt"
    path.write_bytes(_archive(b"\x80\x05\x96" + struct.pack("<Q", 2**62) + b"\0" * 64, BASE_ENTRIES))
    with pytest.raises(original.ConversionError, match=r"x\.ckpt: "):
        reader.read_checkpoint(path)
    import gc

    gc.collect()
    assert "exported buffers" not in capsys.readouterr().err


def test_encoding_a_long_input_is_shown_and_a_page_job_cancels_inside_it(pipe, tmp_path):
    """A long input is encoded window by window, each window reported ("encoding the input"), and a job
    cancelled while its input is being encoded encodes no further window and never reaches denoising."""
    from dataclasses import replace

    from musicldm_core.app.jobs import Service

    seen = []

    class CancelAtFirstWindow:  # the pipeline, cancelling every job once its input's first window is encoded
        def __getattr__(self, name):
            return getattr(pipe, name)

        def generate(self, options, run=None):
            def progress(stage, done, total):
                seen.append((stage, done, total))
                if stage == "encoding the input" and done == 1:
                    for job in service.jobs.values():
                        job.cancel.set()
                options.progress(stage, done, total)

            return pipe.generate(replace(options, progress=progress), run)

    service = Service(CancelAtFirstWindow(), tmp_path, "tiny")
    service.start()
    try:
        job = service.submit({"prompt": "rain", "steps": 3, "seed": 1, "strength": 0.5}, _wav(20.0), "in.wav")
        for _ in range(1200):
            if job.state not in ("queued", "running"):
                break
            time.sleep(0.05)
    finally:
        service.stop()
    windows = [total for stage, _, total in seen if stage == "encoding the input"]
    assert job.state == "cancelled" and windows and windows[0] > 2, (job.state, seen)
    assert not any(stage == "denoising" for stage, _, _ in seen), seen
    assert [done for stage, done, _ in seen if stage == "encoding the input"] == [0, 1]  # no window after the cancel


def test_the_memory_estimate_counts_encoding_an_input():
    """Encoding the input (one trained window at a time through the VAE encoder) is a stage of the estimate:
    with a wide VAE and an output shorter than a window, it is the stage that needs most."""
    from types import SimpleNamespace as N

    from musicldm_core.placement import estimate_memory

    u = N(block_out_channels=(4, 4), layers_per_block=(1, 1), in_channels=8, sample_size=32)
    v = N(scale_factor=4, block_out_channels=(4096, 4096))
    h = N(model_in_dim=64, upsample_rates=(4,), upsample_initial_channel=8, resblock_kernel_sizes=(3,), hop_length=160)
    need, stage = estimate_memory(u, v, h, takes=1, frames=16, guided=False, vae_slicing=False,
                                  input_samples=16000 * 60)
    assert stage == "VAE encoder", stage
    alone, _ = estimate_memory(u, v, h, takes=1, frames=16, guided=False, vae_slicing=False)
    assert need > alone
