"""The `musicldm` command, end to end on the fixtures (subprocesses, as a user runs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import musicldm
from musicldm_core.app import cli, files



def test_console_script_is_installed():
    assert shutil.which("musicldm") or Path(sys.executable).with_name("musicldm").exists()


def test_generates_a_wav(tiny_ckpt, tmp_path):
    out = tmp_path / "techno.wav"
    r = musicldm("techno with a fast beat", "-o", out, "--weights", tiny_ckpt, "--steps", 3, "--seconds", 1.5,
                 "--seed", 4, "--negative", "noise", "--guidance", 3, "--sampler", "lms", "--device", "cpu",
                 "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 16000 and audio.shape == (24000,) and np.isfinite(audio).all()
    assert r.stdout.strip() == f"{out}: 1.50 s, seed 4, lms, 3 steps, guidance 3"
    again = tmp_path / "again.wav"
    assert musicldm("techno with a fast beat", "-o", again, "--weights", tiny_ckpt, "--steps", 3, "--seconds", 1.5,
                    "--seed", 4, "--negative", "noise", "--guidance", 3, "--sampler", "lms").returncode == 0
    assert np.array_equal(sf.read(again, dtype="float32")[0], audio)  # same seed, same audio
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_several_takes(tiny_ckpt, tmp_path):
    r = musicldm("jazz", "-o", tmp_path / "jazz.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5,
                 "--takes", 3, "--seed", 1)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jazz-1.wav", "jazz-2.wav", "jazz-3.wav"]


def test_progress_without_a_terminal_is_one_line_per_stage(tiny_ckpt, tmp_path):
    r = musicldm("jazz", "-o", tmp_path / "a.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5,
                 "--takes", 2)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("musicldm: ")]
    stages = [re.match(r"musicldm: (.*?)( \d+/\d+ \w+)? \(\d+\.\d s\)$", line) for line in lines]
    assert all(stages), lines
    assert [m[1] for m in stages] == ["encoding the prompt", "denoising", "decoding", "vocoding", "ranking takes"]
    assert "musicldm: denoising 2/2 steps (" in r.stderr and "0eval" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["", "--weights", "{ckpt}"], "prompt is empty or only whitespace"),
    (["x", "--weights", "{ckpt}", "--seconds", "-1"], "--seconds must be a finite number > 0"),
    (["x", "--weights", "{ckpt}", "--steps", "0"], "--steps must be >= 1"),
    (["x", "--weights", "{ckpt}", "--guidance", "nan"], "--guidance must be a finite number"),
    (["x", "--weights", "{ckpt}", "--takes", "0"], "--takes must be >= 1"),
    (["x", "--weights", "{ckpt}", "-o", "out.mp3"], "must end in .wav, .flac or .ogg"),
    (["x", "--weights", "{ckpt}", "-o", "no/such/dir/x.wav"], "does not exist"),
    (["x", "--weights", "{ckpt}", "--sample-rate", "100"], "--sample-rate must be between 8000 and 192000 Hz"),
    (["--from", "no/such.wav"], "--from: no such file 'no/such.wav'"),
    (["--from", "{ckpt}/vocoder/config.json"], "--from: cannot read"),
    (["--from", "a.wav", "x"], "--from remakes the file's own prompt: give no PROMPT or --prompts beside it"),
    (["x", "--sampler", "euler", "--eta", "0.5"], "--eta is DDIM's share of fresh noise; --sampler euler has none"),
    (["x", "--weights", "{ckpt}", "--device", "cuda:3"], "device: 'cuda:3' requested but"),
    (["x", "--weights", "/no/such/checkpoint"], "no such checkpoint folder"),
    (["x", "--weights", "{ckpt}", "--seconds", "0.001"], "--seconds must be at least 0.04 s (one latent frame), got 0.001"),
    (["x", "--weights", "{ckpt}", "-o", "a" * 300 + ".wav"], "is 304 bytes, longer than the 255 this file system"),
    (["x", "--weights", "{ckpt}", "--seed", str(2**64)], "--seed must be an integer between 0 and 18446744073709551615"),
    (["x", "--weights", "{ckpt}", "--seed", "-1"], "--seed must be an integer between 0"),
    (["x", "--weights", "{ckpt}", "--seconds", "1e9"], "1 take(s) of 1e+09 s need about"),
    (["x", "--weights", "{ckpt}", "--takes", "1000000"], "1000000 take(s) of 1.28 s need about"),
    (["x", "--weights", "{ckpt}", "--negative", "bad \udcff"], "--negative is not valid Unicode"),
])
def test_errors_are_one_line(tiny_ckpt, tmp_path, args, message):
    r = musicldm(*[a.replace("{ckpt}", str(tiny_ckpt)) for a in args], cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("musicldm: error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.wav"))


def test_a_bad_weight_file_is_named_on_one_line(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["conv_in.bias"]
    save_file(state, path)
    r = musicldm("x", "--weights", folder, cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "missing key 'conv_in.bias' [32]" in r.stderr and str(path) in r.stderr


def test_a_folder_among_the_takes_stops_before_generating(tiny_ckpt, tmp_path):
    (tmp_path / "x-2.wav").mkdir()
    r = musicldm("x", "-o", tmp_path / "x.wav", "--takes", 3, "--weights", tiny_ckpt, "--steps", 2)
    assert r.returncode == 1 and "x-2.wav' is a folder" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-2.wav"]  # nothing written


def test_a_prompt_that_is_not_utf8(tiny_ckpt, tmp_path):
    """A shell in another locale passes bytes that are not UTF-8: one clear line, before loading."""
    r = subprocess.run([sys.executable, "-m", "musicldm_core.app.cli", b"techno \xff\xfe beat", "--weights", str(tiny_ckpt)],
                       capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"}, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.decode().strip().startswith("musicldm: error: prompt is not valid Unicode at character 7")


def test_a_nan_weight_writes_no_file(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["decoder.conv_out.bias"][0] = float("inf")
    save_file(state, path)
    r = musicldm("x", "-o", tmp_path / "x.wav", "--weights", folder, "--steps", 2, "--seconds", 0.2)
    assert r.returncode == 1
    assert "the decoded mel spectrogram contain NaN or infinite values" in r.stderr and "vae/" in r.stderr
    assert not (tmp_path / "x.wav").exists()


def test_debug_shows_the_traceback(tmp_path):
    r = musicldm("x", "--weights", "/no/such/checkpoint", "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    """Takes are written all or none: the second file failing leaves neither, and the old file as it was."""
    target = tmp_path / "song-1.wav"
    target.write_bytes(b"the previous song")
    real_write, calls = sf.SoundFile.write, []

    def broken_write(f, *args, **kwargs):
        calls.append(f.name)
        real_write(f, *args, **kwargs)
        if len(calls) == 2:  # half a file written
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", broken_write)
    with pytest.raises(ValueError, match=r"--output: cannot write '.*song-2.wav' \(the disk holding '.*' is full: "
                                         r"[0-9.]+ MiB free\)"):
        files.write_audio([target, tmp_path / "song-2.wav"], [np.zeros(10, dtype=np.float32)] * 2, 16000)
    assert target.read_bytes() == b"the previous song"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["song-1.wav"]  # no temporary, no half set left behind


def test_hub_id_from_the_cache_offline(hf_cache, tmp_path):
    """The default --weights (ucsd-reach/musicldm) resolved from a Hugging Face cache with HF_HUB_OFFLINE=1."""
    cache, rev = hf_cache
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    r = musicldm("calm piano", "-o", tmp_path / "a.wav", "--steps", 1, "--seconds", 0.04, "--revision", rev, env=env)
    assert r.returncode == 0, r.stderr
    assert sf.read(tmp_path / "a.wav")[0].shape == (640,)
    r = musicldm("calm piano", "-o", tmp_path / "b.wav", "--weights", "someone/else", env=env)
    assert r.returncode == 1 and "not available: HF_HUB_OFFLINE=1 is set" in r.stderr


def test_every_option_reaches_the_pipeline(tiny_ckpt, tmp_path, monkeypatch):
    """The command's arguments, as the pipeline receives them (a silently dropped --negative shows)."""
    from musicldm_core.pipeline import MusicLDMPipeline

    seen = {}
    real = MusicLDMPipeline.from_pretrained

    def load(source, **kw):
        seen["load"] = dict(kw, source=source)
        pipe = real(source, **kw)
        generate = pipe.generate

        class Recording:  # the pipeline, its calls recorded
            def __getattr__(self, name):
                return getattr(pipe, name)

            def __setattr__(self, name, value):
                setattr(pipe, name, value)

            def generate(self, options, run=None):
                seen["call"] = dict(vars(options))
                return generate(options, run)

        return Recording()

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(load))
    assert cli.main(["jazz", "-o", str(tmp_path / "a.wav"), "--negative", "noise", "--seconds", "0.5", "--steps",
                     "3", "--guidance", "3.5", "--seed", "9", "--takes", "2", "--sampler", "heun", "--weights",
                     str(tiny_ckpt), "--device", "cpu", "--dtype", "bfloat16"]) == 0
    call, load_kw = seen["call"], seen["load"]
    assert call["prompt"] == "jazz" and call["negative_prompt"] == "noise" and call["sampler"] == "heun"
    assert call["audio_length_in_s"] == 0.5 and call["num_inference_steps"] == 3 and call["guidance_scale"] == 3.5
    assert call["num_waveforms_per_prompt"] == 2
    assert call["generator"].initial_seed() == 9
    assert Path(load_kw["source"]) == tiny_ckpt
    assert str(load_kw["device"]) == "cpu" and load_kw["dtype"] == "bfloat16"


def test_takes_are_written_best_first(tiny_ckpt, tmp_path):
    """NAME-1.wav is the pipeline's first (best-ranked) take, NAME-2.wav its second: exactly the API's
    audio for the same seed and the same call's kernels (ranked with a deterministic crop): a command-line run is
    the pipe() call, bit for bit."""
    import torch

    from musicldm_core.pipeline import MusicLDMPipeline

    r = musicldm("jazz", "-o", tmp_path / "jazz.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5,
                 "--takes", 2, "--seed", 3, "--threads", 2)
    assert r.returncode == 0, r.stderr
    torch.set_num_threads(2)
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    expected = pipe("jazz", num_inference_steps=2, audio_length_in_s=0.5, num_waveforms_per_prompt=2, crop="start",
                    generator=torch.Generator().manual_seed(3)).audios
    for k in (1, 2):
        written = sf.read(tmp_path / f"jazz-{k}.wav", dtype="float32")[0]
        assert np.array_equal(written, expected[k - 1]), k
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # the two takes differ, so the order shows


def test_a_failed_rename_names_its_file_and_undoes_the_set(tmp_path, monkeypatch):
    """The second rename fails: the message names song-2.wav, and song-1.wav (already in place) is removed."""
    real_replace, calls = os.replace, []

    def broken_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ValueError, match=r"--output: cannot write '.*song-2.wav' \(Permission denied in '.*'\)"):
        files.write_audio([tmp_path / "song-1.wav", tmp_path / "song-2.wav"], [np.zeros(10, dtype=np.float32)] * 2, 16000)
    assert list(tmp_path.iterdir()) == []


def test_help_and_version_import_no_torch():
    """--help and --version answer before torch could load: here any import of torch fails."""
    code = ("import sys\nsys.modules['torch'] = None\nfrom musicldm_core.app.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert main(['--version']) == 0\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: musicldm" in r.stdout and "--sample-rate" in r.stdout
    assert re.search(r"^musicldm_core \S+, torch \S+, Python 3\.\d+", r.stdout, re.M), r.stdout


def test_a_drawn_seed_is_said_and_from_remakes_each_take_bit_for_bit(tiny_ckpt, tmp_path):
    r = musicldm("rain on a roof", "-o", tmp_path / "rain.wav", "--weights", tiny_ckpt, "--steps", 3, "--seconds",
                 0.5, "--takes", 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    seed = re.search(r", seed (\d+), ddim, 3 steps, guidance 2$", lines[0])[1]
    assert lines == [f"{tmp_path / f'rain-{k}.wav'}: 0.50 s, seed {seed}, ddim, 3 steps, guidance 2" for k in (1, 2)]
    tag = sf.SoundFile(tmp_path / "rain-2.wav").comment
    assert tag.startswith("musicldm 'rain on a roof' -o rain.wav --seed " + seed) and tag.endswith("--takes 2 --take 2")
    for k in (1, 2):
        again = musicldm("--from", tmp_path / f"rain-{k}.wav", "-o", tmp_path / f"again-{k}.wav")
        assert again.returncode == 0, again.stderr
        assert (tmp_path / f"again-{k}.wav").read_bytes() == (tmp_path / f"rain-{k}.wav").read_bytes()
    assert (tmp_path / "rain-1.wav").read_bytes() != (tmp_path / "rain-2.wav").read_bytes()
    default = musicldm("--from", tmp_path / "rain-1.wav")
    assert default.returncode == 0 and (tmp_path / "rain-1-remade.wav").read_bytes() == (tmp_path / "rain-1.wav"
                                                                                          ).read_bytes()


@pytest.mark.parametrize("name, rate, subtype", [("x.flac", 48000, "PCM_24"), ("x.ogg", 44100, "VORBIS"),
                                                 ("x.wav", 22050, "FLOAT")])
def test_formats_and_sample_rates(tiny_ckpt, tmp_path, name, rate, subtype):
    common = ["--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5, "--seed", 1]
    assert musicldm("waves", "-o", tmp_path / "ref.wav", *common).returncode == 0
    r = musicldm("waves", "-o", tmp_path / name, "--sample-rate", rate, *common)
    assert r.returncode == 0, r.stderr
    audio, got = sf.read(tmp_path / name, dtype="float32")
    info = sf.info(tmp_path / name)
    assert got == rate and info.subtype == subtype and len(audio) == -(-8000 * rate // 16000)
    from musicldm_core.resampler import resample

    import torch

    ref = resample(torch.from_numpy(sf.read(tmp_path / "ref.wav", dtype="float32")[0]).double()[None], 16000, rate)
    error = np.abs(audio - ref[0].float().numpy()).max()
    assert error < {"PCM_24": 2e-7, "FLOAT": 1e-7, "VORBIS": 0.2}[subtype], error  # 24-bit steps are 1.2e-7


def test_progress_names_the_decoding_stages_of_a_long_piece(tiny_ckpt, tmp_path):
    """20.48 s on a checkpoint trained for 1.28 s: every stage, windows counted, one line each."""
    from musicldm_core.longform import window_starts

    r = musicldm("drone", "-o", tmp_path / "long.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 20.48)
    assert r.returncode == 0, r.stderr
    vae, vocoder = len(window_starts(512, 32, 28, False)), len(window_starts(2048, 128, 112, False))
    for line in ("musicldm: encoding the prompt (", "musicldm: denoising 2/2 steps (",
                 f"musicldm: decoding {vae}/{vae} windows (", f"musicldm: vocoding {vocoder}/{vocoder} windows ("):
        assert line in r.stderr, r.stderr
    assert vae > 10 and vocoder > 10
