"""The one front door (app/prepare.py): a command-line run and a page job each check their request once,
read the input once and estimate memory once, and generation does not plan again. Counted by wrapping the
functions that do each (Options.check, options.read_input, placement.check_memory) for one real run on the
tiny checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicldm_core import MusicLDMPipeline, options, placement
from musicldm_core.app import cli
from musicldm_core.app.jobs import Service


@pytest.fixture
def counts(monkeypatch) -> dict:
    """How often each was called since the fixture was made."""
    seen = {"check": 0, "read_input": 0, "check_memory": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(options.Options, "check", counted("check", options.Options.check))
    monkeypatch.setattr(options, "read_input", counted("read_input", options.read_input))
    monkeypatch.setattr(options, "check_memory", counted("check_memory", placement.check_memory))
    from musicldm_core.app import prepare

    monkeypatch.setattr(prepare, "read_input", options.read_input)  # the front door's own reference
    return seen


def _song(path: Path) -> Path:
    t = np.arange(16000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


@pytest.mark.parametrize("request_", [["--seconds", "1"], ["--input", "song.wav", "--extend", "0.5"]],
                         ids=["text", "audio-to-audio"])
def test_one_command_line_run_checks_reads_and_estimates_once(counts, tiny_ckpt, tmp_path, monkeypatch, request_):
    _song(tmp_path / "song.wav")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["rain", "-o", "out.wav", "--weights", str(tiny_ckpt), "--steps", "3", "--seed", "1", *request_])
    assert code == 0 and (tmp_path / "out.wav").is_file()
    assert counts == {"check": 1, "read_input": 1, "check_memory": 1}, counts


def test_one_page_job_checks_reads_and_estimates_once(counts, tiny_ckpt, tmp_path):
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    service = Service(pipe, tmp_path, str(tiny_ckpt))
    service.start()
    try:
        job = service.submit({"prompt": "rain", "steps": 3, "seed": 2, "extend": 0.5},
                             _song(tmp_path / "in.wav").read_bytes(), "in.wav")
        began = time.monotonic()
        while job.state in ("queued", "running") and time.monotonic() - began < 120:
            time.sleep(0.05)
    finally:
        service.stop()
    assert job.state == "done", job.error
    assert counts == {"check": 1, "read_input": 1, "check_memory": 1}, counts


def test_a_plain_pipe_call_still_plans_for_itself(counts, tiny_ckpt):
    """pipe(...) has no front door: generate plans (and checks) it, once."""
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    pipe("rain", num_inference_steps=3, audio_length_in_s=1.0)
    assert counts == {"check": 1, "read_input": 1, "check_memory": 1}, counts
