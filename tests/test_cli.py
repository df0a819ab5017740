"""The `musicldm` command, end to end on the fixtures (subprocesses, as a user runs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicldm_core import cli, outputs


def musicldm(*args, env=None, cwd=None):
    full_env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "musicldm_core.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd)


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
    assert r.stdout.strip() == str(out)
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


def test_progress_bar(tiny_ckpt, tmp_path):
    r = musicldm("jazz", "-o", tmp_path / "a.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5,
                 env={"HF_HUB_DISABLE_PROGRESS_BARS": "0"})
    assert r.returncode == 0 and "denoising" in r.stderr and "2/2" in r.stderr
    quiet = musicldm("jazz", "-o", tmp_path / "b.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5)
    assert quiet.returncode == 0 and "denoising" not in quiet.stderr


@pytest.mark.parametrize("args, message", [
    (["", "--weights", "{ckpt}"], "prompt is empty or only whitespace"),
    (["x", "--weights", "{ckpt}", "--seconds", "-1"], "--seconds must be a finite number > 0"),
    (["x", "--weights", "{ckpt}", "--steps", "0"], "--steps must be >= 1"),
    (["x", "--weights", "{ckpt}", "--guidance", "nan"], "--guidance must be a finite number"),
    (["x", "--weights", "{ckpt}", "--takes", "0"], "--takes must be >= 1"),
    (["x", "--weights", "{ckpt}", "-o", "out.mp3"], "must end in .wav"),
    (["x", "--weights", "{ckpt}", "-o", "no/such/dir/x.wav"], "does not exist"),
    (["x", "--weights", "{ckpt}", "--device", "cuda:3"], "device: 'cuda:3' requested but"),
    (["x", "--weights", "/no/such/checkpoint"], "no such checkpoint folder"),
    (["x", "--weights", "{ckpt}", "--seconds", "0.001"], "audio_length_in_s must be at least"),
    (["x", "--weights", "{ckpt}", "-o", "a" * 300 + ".wav"], "is 304 bytes, longer than the 255 this file system"),
    (["x", "--weights", "{ckpt}", "--seed", str(2**64)], "--seed must be between 0 and 18446744073709551615"),
    (["x", "--weights", "{ckpt}", "--seed", "-1"], "--seed must be between 0"),
    (["x", "--weights", "{ckpt}", "--seconds", "1e9"], "need about"),
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
    r = subprocess.run([sys.executable, "-m", "musicldm_core.cli", b"techno \xff\xfe beat", "--weights", str(tiny_ckpt)],
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
    real_write, calls = sf.write, []

    def broken_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(ValueError, match=r"--output: cannot write '.*song-2.wav' \(No space left on device\)"):
        outputs.write_wavs([target, tmp_path / "song-2.wav"], [np.zeros(10, dtype=np.float32)] * 2, 16000)
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

            def generate(self, options):
                seen["call"] = dict(vars(options))
                return generate(options)

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
    assert load_kw["source"] == str(tiny_ckpt)
    assert str(load_kw["device"]) == "cpu" and load_kw["dtype"] == "bfloat16"


def test_takes_are_written_best_first(tiny_ckpt, tmp_path):
    """NAME-1.wav is the pipeline's first (best-ranked) take, NAME-2.wav its second: exactly the API's
    audio for the same seed (batch-invariant, ranked with a deterministic crop)."""
    import torch

    from musicldm_core.pipeline import MusicLDMPipeline

    r = musicldm("jazz", "-o", tmp_path / "jazz.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.5,
                 "--takes", 2, "--seed", 3, "--threads", 2)
    assert r.returncode == 0, r.stderr
    torch.set_num_threads(2)
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    pipe.enable_batch_invariance()
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
    with pytest.raises(ValueError, match=r"--output: cannot write '.*song-2.wav' \(Permission denied\)"):
        outputs.write_wavs([tmp_path / "song-1.wav", tmp_path / "song-2.wav"], [np.zeros(10, dtype=np.float32)] * 2, 16000)
    assert list(tmp_path.iterdir()) == []
