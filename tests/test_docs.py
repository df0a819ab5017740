"""Every command the documents show (each line of a ```bash block in README.md and docs/*.md) runs, as written,
on a small checkpoint: the tiny test checkpoint stands in for `ucsd-reach/musicldm` in an offline Hub cache, and
the files a command names (song.wav, prompts.jsonl, prompts.txt, the authors' musicldm-ckpt.ckpt) are made first.
Only the step count is lowered (`--steps 3` appended: the last flag wins), so a renamed flag, a changed default
that refuses, or a broken example fails here. The install and test commands are what .ci/run runs (checked
against it); the GPU benchmarks skip without CUDA."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def commands() -> list:
    """(document, command) for every command of every ```bash block; `A && B` is two commands."""
    found = []
    for doc in DOCUMENTS:
        for block in re.findall(r"^```bash\n(.*?)^```", doc.read_text(), re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    found.append((doc.relative_to(ROOT).as_posix(), words[:cut]))
                    words = words[cut + 1:]
    return found


COMMANDS = commands()


def test_the_documents_show_commands():
    assert len(COMMANDS) >= 15 and {doc for doc, _ in COMMANDS} >= {"README.md", "docs/batch.md", "docs/page.md"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt, authors_release) -> tuple:
    """(a folder holding the files the documents name, the environment: the tiny checkpoint as the Hub's)."""
    folder = tmp_path_factory.mktemp("docs")
    repo = folder / "hub" / "models--ucsd-reach--musicldm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("tiny")
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / "tiny").symlink_to(tiny_ckpt, target_is_directory=True)
    t = np.arange(16000 * 6) / 16000
    sf.write(folder / "song.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    (folder / "prompts.jsonl").write_text('{"prompt": "warm jazz", "seconds": 2}\n{"prompt": "rain", "seconds": 2}\n')
    (folder / "prompts.txt").write_text("warm jazz\nrain\n")
    shutil.copy(authors_release.paths["main"], folder / "musicldm-ckpt.ckpt")
    env = {**os.environ, "HF_HUB_CACHE": str(folder / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    return folder, env


def _argv(words: list) -> list:
    """The command as this test runs it: the installed entry points through this Python."""
    head = {"musicldm": [sys.executable, "-m", "musicldm_core"], "python": [sys.executable],
            "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    return head[words[0]] + words[1:]


@pytest.mark.parametrize("doc, words", COMMANDS, ids=[f"{doc}:{' '.join(w)[:50]}" for doc, w in COMMANDS])
def test_every_documented_command_runs(doc, words, world):
    folder, env = world
    if words[0] == "pip" or words[1:3] == ["-m", "pytest"]:  # the install and the test command: CI runs them
        ci = (ROOT / ".ci" / "run").read_text()
        assert all(w in ci for w in words if w not in ("pip", "install", "-e", ".")), words
        assert "python -m pytest -q" in ci
        return
    if "--device" in words and words[words.index("--device") + 1] == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if words[1:2] == ["serve"]:
        _serve(_argv(words) + ["--port", "0"], folder, env)
        return
    generates = (words[0] in ("musicldm", "torchrun") or words[1:3] == ["-m", "musicldm_core"]) and "score" not in words
    extra = ["--steps", "3"] if generates else []
    run = subprocess.run(_argv(words) + extra, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{doc}: {' '.join(words)}\n{run.stderr[-2000:]}"


def _serve(argv: list, folder: Path, env: dict) -> None:
    """`musicldm serve` starts, says its address, and stops cleanly on Ctrl-C."""
    server = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("musicldm serve: http://localhost:"), (line, server.stderr.read() if not line else "")
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    assert code == 0
