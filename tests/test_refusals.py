"""Bad input on every surface (the command line, batch mode, torchrun, the Python API): one line that
names the culprit, a non-zero exit, nothing written, and refused before the weights load where the
checkpoint's configs are enough. Each case runs the command as a user types it (subprocesses)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import musicldm
from musicldm_core.app import batch, cli, manifest, prompt_file
from musicldm_core.app import files as app_files, prompt_file
from musicldm_core.audio_input import load_audio

QUICK = ["--steps", "3", "--threads", "1"]



def one_line(r, message: str) -> None:
    """Exit 1, and stderr is exactly one error line holding `message`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("musicldm: error:"), r.stderr
    assert message in lines[0], lines[0]


def files(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def no_weights(tiny_ckpt, tmp_path) -> Path:
    """The tiny checkpoint with its UNet weights replaced by junk: a refusal that does not name that
    file came before the weights load."""
    folder = tmp_path / "configs-only"
    shutil.copytree(tiny_ckpt, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    return folder


def wav(path: Path, seconds: float, rate: int = 16000, subtype: str = "FLOAT") -> Path:
    n = int(round(seconds * rate))
    sf.write(path, (0.1 * np.sin(np.arange(n) / 7.0)).astype("float32"), rate, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------
# Part 2: refusals that name the culprit, before any weight loads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--takes", "1000000"], "1000000 take(s) of 1.28 s need about"),
    (["--seconds", "1e9"], "ask for a smaller --takes or --seconds"),
    (["--seconds", "0.001"], "--seconds must be at least 0.04 s"),
    (["--steps", "3", "--sampler", "pndm", "--input", "{input}"], "audio-to-audio starts part way down the schedule"),
])
def test_refused_from_the_configs_before_the_weights_load(no_weights, tmp_path, args, message):
    args = [a.replace("{input}", str(wav(tmp_path / "in.wav", 0.5))) for a in args]
    r = musicldm("x", "--weights", no_weights, *args, cwd=tmp_path)
    one_line(r, message)
    assert "diffusion_pytorch_model" not in r.stderr and not list(tmp_path.glob("music*"))


def test_the_memory_refusal_names_the_flags(no_weights, tmp_path):
    r = musicldm("x", "--weights", no_weights, "--seconds", "1e9", cwd=tmp_path)
    one_line(r, "1 take(s) of 1e+09 s need about")
    assert "--seconds" in r.stderr and "audio_length_in_s" not in r.stderr


def test_a_damaged_weight_is_named_on_the_first_line(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    path = folder / "vocoder" / "model.safetensors"
    state = load_file(path)
    state["conv_pre.bias"] = state["conv_pre.bias"].long()
    save_file(state, path)
    r = musicldm("x", "--weights", folder, *QUICK, cwd=tmp_path)
    one_line(r, f"weight 'conv_pre.bias' is torch.int64 in {path}")
    assert not list(tmp_path.glob("*.wav"))


# ---------------------------------------------------------------------------------------------
# Part 4: input audio, paths and the remaining raw messages
# ---------------------------------------------------------------------------------------------


def test_input_refusals(no_weights, tmp_path):
    """Each refused before the weights load (the checkpoint here has none), in one line naming the file."""
    truncated = wav(tmp_path / "cut.wav", 1.0, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:16000])
    long = wav(tmp_path / "long.wav", 601.0, 1000, "PCM_16")
    cases = [(wav(tmp_path / "short.wav", 0.03), "is 30.0 ms long; it must be at least 40 ms"),
             (truncated, "is truncated: its header promises 32000 bytes of audio, the file holds 15956"),
             (long, "is 601.0 s long; at most 600 s is read"),
             (wav(tmp_path / "odd.wav", 0.1, 999983), "the sampling rate of"),
             (wav(tmp_path / "prime.wav", 0.1, 96001), "96001 Hz has no small ratio to 16000 Hz"),
             (tmp_path / "missing.wav", "--input: no such file"),
             (tmp_path, "is a folder, not an audio file")]
    for path, message in cases:
        r = musicldm("x", "--weights", no_weights, "--input", path, cwd=tmp_path)
        one_line(r, message)
        assert "--input" in r.stderr and "diffusion_pytorch_model" not in r.stderr
    assert not list(tmp_path.glob("music*"))


def test_input_shorter_than_a_latent_frame_boundary(tiny_ckpt, tmp_path):
    """40 ms, the shortest accepted input, runs (the refusal above is not too strict)."""
    r = musicldm("x", "--weights", tiny_ckpt, "--input", wav(tmp_path / "in.wav", 0.04), *QUICK, "-o",
                 tmp_path / "o.wav")
    assert r.returncode == 0, r.stderr
    assert abs(sf.info(tmp_path / "o.wav").duration - 0.04) < 1e-9


def test_an_input_shows_its_reading_stage(tiny_ckpt, tmp_path):
    r = musicldm("x", "--weights", tiny_ckpt, "--input", wav(tmp_path / "in.wav", 0.3, 44100), *QUICK, "-o",
                 tmp_path / "o.wav")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith("musicldm: reading the input")


@pytest.mark.parametrize("args, message", [
    (["--extend", "0"], "--extend must be a finite number > 0, got 0.0"),
    (["--strength", "0", "--extend", "1"], "give one of --strength, --inpaint or --extend, not several"),
])
def test_edit_values(no_weights, tmp_path, args, message):
    r = musicldm("x", "--weights", no_weights, "--input", wav(tmp_path / "in.wav", 0.5), *args, cwd=tmp_path)
    one_line(r, message)


def test_a_loop_says_its_rounded_length(tiny_ckpt, tmp_path):
    r = musicldm("x", "--weights", tiny_ckpt, "--loop", "--seconds", "0.05", *QUICK, "-o", tmp_path / "l.wav")
    assert r.returncode == 0, r.stderr
    assert "musicldm: --loop rounds --seconds 0.05 to 0.08 s (a loop is a whole number of 40 ms latent frames)" \
        in r.stderr.splitlines()
    assert sf.info(tmp_path / "l.wav").frames == 1280
    r = musicldm("x", "--weights", tiny_ckpt, "--loop", "--seconds", "0.08", *QUICK, "-o", tmp_path / "m.wav")
    assert "rounds" not in r.stderr  # a whole number of frames is not rounded


def test_a_full_disk_names_the_folder_and_writes_nothing(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """libsndfile says only "System error." when the disk fills; the message names the folder and its disk."""
    def full(*args, **kwargs):
        raise sf.LibsndfileError(2, "Error writing")

    monkeypatch.setattr(sf.SoundFile, "write", full)
    monkeypatch.setattr(app_files.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10, 10, 0))
    code = cli.main(["x", "--weights", str(tiny_ckpt), "--steps", "3", "--seconds", "0.3", "-o", str(tmp_path / "a.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == (f"musicldm: error: --output: cannot write {str(tmp_path / 'a.wav')!r} (the disk "
                                     f"holding {str(tmp_path)!r} is full: 0.0 MiB free)")
    assert files(tmp_path) == []


def test_a_full_disk_in_batch_mode(tiny_ckpt, tmp_path, monkeypatch, capsys):
    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(app_files, "temp_file", full)
    monkeypatch.setattr(batch, "check_folder", lambda *a, **k: None)  # the probe would fail first
    code = cli.main(["--prompts", str(prompts), "--out-dir", str(out), "--weights", str(tiny_ckpt), "--steps", "3",
                     "--seconds", "0.3", "--threads", str(torch.get_num_threads())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and f"(the disk holding {str(out)!r} is full" in err[-1] and ".musicldm-" not in err[-1]
    assert [name for name in files(out) if name.endswith(".wav")] == []


@pytest.mark.parametrize("setup, args, message", [
    ("out-file", [], "--out-dir: '{out}' is a file, not a folder"),
    ("manifest-folder", [], "--out-dir: '{out}/manifest.jsonl' is a folder; move it away"),
    ("prompts-latin1", [], "--prompts: '{prompts}' line 2 is not UTF-8 (byte 0xe9 at column 4)"),
    ("ok", ["--input", "x.wav"], "--input cannot be used with --prompts"),
    ("ok", ["--extend", "2"], "--extend cannot be used with --prompts"),
    ("ok", ["-o", "a.wav"], "-o/--output cannot be used with --prompts"),
])
def test_batch_paths_and_options(no_weights, tmp_path, setup, args, message):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_bytes("rain\ncaf\u00e9 music\n".encode("latin-1" if setup == "prompts-latin1" else "utf-8"))
    if setup == "out-file":
        out.write_text("not a folder")
    if setup == "manifest-folder":
        (out / "manifest.jsonl").mkdir(parents=True)
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", no_weights, *args, cwd=tmp_path)
    one_line(r, message.replace("{out}", str(out)).replace("{prompts}", str(prompts)))
    assert not [p for p in tmp_path.rglob("*.wav")]


def test_a_long_prompt_is_said_to_be_cut(tiny_ckpt, tmp_path):
    """A 1.1 MB prompt line (too long for a command-line argument) is cut to CLAP's 512 tokens, as the reference
    cuts it, and a warning says so, once."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("calm piano " * 100000 + "\n")
    r = musicldm("--prompts", prompts, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, *QUICK, "--seconds",
                 "0.3", "--takes", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [line for line in r.stderr.splitlines() if line.startswith("musicldm: warning:")]
    assert len(warned) == 1 and "a prompt longer than 512 tokens was cut to its first 512" in warned[0], r.stderr
    assert "(1099999 characters)" in warned[0]  # the line, stripped


# ---------------------------------------------------------------------------------------------
# The Python API's audio argument
# ---------------------------------------------------------------------------------------------


def test_api_audio_layouts_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2, 4000))).astype("float32")
    as_channels = load_audio(stereo, 16000, 16000)
    assert torch.equal(load_audio(stereo.T, 16000, 16000), as_channels)  # soundfile's (frames, channels)
    assert torch.equal(load_audio(torch.from_numpy(stereo), 16000, 16000), as_channels)
    path = wav(tmp_path / "a.wav", 0.5)
    cases = [((str(path), 16000), "audio_sampling_rate applies to an array; the file"),
             ((b"RIFF....", 16000), "audio must be a file path or a float array"),
             (({"array": stereo}, 16000), "got dict"),
             ((torch.zeros(1, 1, 4000) + 0.1, 16000), "must have 1 or 2 dimensions, (samples,) or (channels, samples), "
                                                      "got shape (1, 1, 4000)"),
             ((np.zeros(4000, dtype="int16"), 16000), "must hold floating-point samples"),
             ((stereo, 500), "sampling rate must be a whole number of Hz from 1000 to 384000, got 500"),
             ((stereo, 16000.0), "got 16000.0"),
             ((rng.standard_normal((40, 4000)), 16000), "neither side is a channel count")]
    for (audio, rate), message in cases:
        with pytest.raises(ValueError) as e:
            load_audio(audio, rate, 16000)
        assert message in str(e.value)


def test_threads_share_a_tokenizer_and_a_pipeline(tiny_ckpt):
    """4000 tokenizer calls from two threads (the Rust tokenizer's settings are per object), then two
    threads calling one pipeline: each result equals the same call made alone."""
    from musicldm_core.pipeline import MusicLDMPipeline

    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    errors = []

    def tokenize(k: int) -> None:
        try:
            for i in range(2000):
                pipe.tokenizer(["a prompt " * (i % 7 + k)], pad_to_max_length=bool(i % 2))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=tokenize, args=(k,)) for k in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []

    kw = dict(audio_length_in_s=0.32, num_inference_steps=3)
    alone = {p: pipe(p, generator=torch.Generator().manual_seed(1), **kw).audios for p in ("rain", "drums")}
    got = {}

    def call(prompt: str) -> None:
        got[prompt] = pipe(prompt, generator=torch.Generator().manual_seed(1), **kw).audios

    threads = [threading.Thread(target=call, args=(p,)) for p in alone]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(np.array_equal(got[p], alone[p]) for p in alone)


# ---------------------------------------------------------------------------------------------
# Part 3: batch mode, nothing silently wrong
# ---------------------------------------------------------------------------------------------


def jsonl(path: Path, items) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def records(out: Path) -> dict:
    return {json.loads(line)["id"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}


def test_loop_and_window_reach_batch_mode(tiny_ckpt, tmp_path):
    """--loop (and a per-line "loop") make loops; each equals its single run with --loop, to the bit."""
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "rain", "id": "a"}, {"prompt": "drums", "id": "b", "loop": False,
                                                                         "window": "whole"}])
    out = tmp_path / "out"
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *QUICK, "--seconds", "0.3", "--loop",
                 "--seed", 4)
    assert r.returncode == 0, r.stderr
    got = records(out)
    assert got["a"]["loop"] is True and got["a"]["duration"] == 0.32 and got["b"]["loop"] is False
    assert got["b"]["window"] == "whole" and got["b"]["duration"] == 0.3
    r = musicldm("rain", "--weights", tiny_ckpt, *QUICK, "--seconds", "0.3", "--loop", "--seed", got["a"]["seed"],
                 "-o", tmp_path / "single.wav")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(sf.read(out / "a.wav")[0], sf.read(tmp_path / "single.wav")[0])


def test_a_rerun_with_other_values_makes_the_item_again(tiny_ckpt, tmp_path):
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "rain", "id": "a"}, {"prompt": "drums"}])
    out = tmp_path / "out"
    base = ["--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, "--threads", "1", "--seconds", "0.3"]
    assert musicldm(*base, "--steps", "3").returncode == 0
    first = sf.read(out / "a.wav")[0]
    r = musicldm(*base, "--steps", "3")
    assert r.returncode == 0 and r.stdout == ""  # unchanged: skipped
    r = musicldm(*base, "--steps", "4")
    assert r.returncode == 0 and r.stdout.count("\n") == 2, r.stdout
    assert records(out)["a"]["steps"] == 4 and not np.array_equal(sf.read(out / "a.wav")[0], first)
    jsonl(prompts, [{"prompt": "heavy rain", "id": "a"}, {"prompt": "drums"}])  # an edited prompt, the same id
    r = musicldm(*base, "--steps", "4")
    assert r.returncode == 0 and r.stdout.startswith(f"{out / 'a.wav'}:") and r.stdout.count("\n") == 1
    assert records(out)["a"]["prompt"] == "heavy rain" and len(records(out)) == 2


def test_colliding_names_are_refused_before_anything_runs(no_weights, tmp_path):
    out = tmp_path / "out"
    for items, message in [([{"prompt": "a", "id": "x", "takes": 2}, {"prompt": "b", "id": "x-1"}],
                            "line 2: id 'x-1' and 'x' on line 1 both write 'x-1.wav'"),
                           ([{"prompt": "a", "id": "Beat"}, {"prompt": "b", "id": "beat"}],
                            "line 2: id 'beat' and 'Beat' on line 1 both write 'beat.wav' (letter case")]:
        r = musicldm("--prompts", jsonl(tmp_path / "p.jsonl", items), "--out-dir", out, "--weights", no_weights)
        one_line(r, message)
        assert not out.exists() or files(out) == []


def test_a_second_run_on_a_locked_folder_says_who_holds_it(no_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = manifest.lock_folder(out)
    try:
        r = musicldm("--prompts", jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}]), "--out-dir", out, "--weights",
                     no_weights)
        one_line(r, f"--out-dir: {str(out)!r} is in use by another batch run (pid {os.getpid()} on ")
    finally:
        lock.release()
    assert files(out) == []
    manifest.lock_folder(out).release()  # released: free again


def test_two_runs_started_together_make_each_item_once(tiny_ckpt, tmp_path):
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": f"song {i}"} for i in range(4)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "musicldm_core", "--prompts", str(prompts), "--out-dir", str(out), "--weights",
           str(tiny_ckpt), *QUICK, "--seconds", "0.3"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), *p.communicate()) for p in procs]
    made = sum(stdout.count(".wav:") for _, stdout, _ in results)
    assert made == 4, results  # no item twice
    for code, _, stderr in results:
        assert code == 0 or (code == 1 and "is in use by another batch run" in stderr), stderr
    assert len(records(out)) == 4 and len(list(out.glob("*.wav"))) == 4


def test_a_bad_manifest_record_is_named_and_set_aside(tiny_ckpt, tmp_path):
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "rain", "id": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_bytes(b'{"id": 7, "files": []}\n{"id": "z", "files": ["z.wav"]}\n\xff\xfe\n')
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *QUICK, "--seconds", "0.3")
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "skipped (the merge moves it" in line]
    assert len(said) == 2 and "manifest.jsonl line 1: its id must be text, got 7" in said[0]
    assert "line 3: not UTF-8" in said[1]
    assert list(records(out)) == ["a", "z"]
    assert (out / "manifest-rejected.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()[0] == \
        '{"id": 7, "files": []}'


def test_a_byte_order_mark_and_a_comment_do_not_change_the_format(tmp_path):
    defaults = {"negative": None, "seconds": None, "seed": None, "steps": 3, "guidance": 2.0, "takes": 1,
                "sampler": None, "loop": False, "window": "auto"}
    cases = {"a.jsonl": '\ufeff{"prompt": "rain", "id": "r", "seed": 3}\n',
             "b.dat": '# my prompts\n{"prompt": "rain", "id": "r", "seed": 3}\n',
             "c.txt": "\ufeffrain\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        items, problems = prompt_file.read_items(tmp_path / name, defaults, 0)
        assert not problems and len(items) == 1 and items[0].prompt == "rain", name
        if name != "c.txt":
            assert items[0].id == "r" and items[0].seed == 3


def test_torchrun_a_bad_line_is_one_line_and_nothing_runs(tiny_ckpt, tmp_path):
    """Line 2 is refused only by the checkpoint (shorter than a latent frame) and falls to rank 1: every
    rank checks every line, so rank 0 generates nothing either, and the error is said once."""
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "seconds": 0.001}])
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29600 + os.getpid() % 1000), "-m", "musicldm_core", "--prompts", str(prompts),
                        "--out-dir", str(out), "--weights", str(tiny_ckpt), *QUICK],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    ours = [line for line in r.stderr.splitlines() if line.startswith("musicldm:")]
    assert r.returncode != 0 and len(ours) == 1, r.stderr[-3000:]
    assert "line 2 (00002-b): seconds must be at least 0.04 s" in ours[0]
    assert "Traceback" not in r.stderr.split("musicldm: error:")[0]  # our line is not preceded by a traceback
    assert [p for p in out.rglob("*") if p.suffix == ".wav"] == []
