"""One comparison for every parity test (max abs and relative error, printed and asserted), and the command
line as a user runs it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import traceback
from unittest import mock

import numpy as np
import pytest
import torch

# Mutation testing (benchmarks/mutation.py) swaps mutants inside the test process, where a subprocess cannot see
# them: there the command line runs in this process instead.
IN_PROCESS = os.environ.get("MUSICLDM_TESTS_IN_PROCESS") == "1"


def musicldm(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """`python -m musicldm_core ARGS`: exit status, stdout and stderr as text."""
    argv = [str(a) for a in args]
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    if not IN_PROCESS:
        return subprocess.run([sys.executable, "-m", "musicldm_core", *argv], capture_output=True, text=True,
                              env=env, cwd=cwd)
    from musicldm_core.app import cli

    out, err, here, sigint = io.StringIO(), io.StringIO(), os.getcwd(), signal.getsignal(signal.SIGINT)
    threads = torch.get_num_threads()
    try:
        with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            os.chdir(cwd or here)
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # --debug: the traceback, as Python prints it
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        signal.signal(signal.SIGINT, sigint)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sine(seconds: float, rate: int = 16000, freq: float = 440.0, overtone: float = 0.0) -> np.ndarray:
    """(samples,) float32: a 0.3 sine at `freq`, plus `overtone` times one at 3.1 `freq` (not a harmonic)."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + overtone * np.sin(2 * np.pi * 3.1 * freq * t)).astype(np.float32)


def says(message: str, text: str) -> bool:
    """`text` holds `message` as a whole: not inside a longer word at either end (so a message that grew
    stray characters at an edge, or lost its argument's prefix, does not match)."""
    return re.search(rf"(?<!\w){re.escape(message)}(?!\w)", text) is not None


def refused(message: str, call, *args, error=ValueError, **kwargs) -> str:
    """call(*args, **kwargs) raises `error` whose message says `message` (`says`); returns the message."""
    with pytest.raises(error) as e:
        call(*args, **kwargs)
    assert says(message, str(e.value)), f"{message!r} not in {str(e.value)!r}"
    return str(e.value)


def errors(ours, ref) -> tuple[float, float, tuple]:
    """(max abs error, that divided by max |ref|, index where the error peaks)."""
    a = torch.as_tensor(np.asarray(ours) if not torch.is_tensor(ours) else ours).double().cpu()
    b = torch.as_tensor(np.asarray(ref) if not torch.is_tensor(ref) else ref).double().cpu()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != reference {tuple(b.shape)}"
    assert torch.isfinite(a).all(), "non-finite values in ours"
    diff = (a - b).abs()
    peak = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape)) if diff.numel() else ()
    scale = float(b.abs().max()) if b.numel() else 0.0
    abs_err = float(diff.max()) if diff.numel() else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err, peak


def assert_close(ours, ref, rtol: float, name: str) -> tuple[float, float]:
    abs_err, rel_err, peak = errors(ours, ref)
    print(f"[parity] {name}: max abs {abs_err:.3e}, rel {rel_err:.3e} (peak at {peak})")
    assert rel_err <= rtol, f"{name}: relative error {rel_err:.3e} > {rtol:.1e} (max abs {abs_err:.3e} at {peak})"
    return abs_err, rel_err


def assert_detects(ours, ref, rtol: float, name: str) -> None:
    """A deliberately broken model must fail the same tolerance: the parity test can go red."""
    _, rel_err, _ = errors(ours, ref)
    print(f"[mutation] {name}: rel {rel_err:.3e} (must exceed {rtol:.1e}: {rel_err / rtol:.3g}x the bound)")
    assert rel_err > rtol, f"{name}: a deliberate break went unnoticed (rel {rel_err:.3e} <= {rtol:.1e})"


def reference_pipeline(folder, **kwargs):
    """diffusers' MusicLDMPipeline from a checkpoint folder, without its progress bar."""
    from diffusers import MusicLDMPipeline

    pipe = MusicLDMPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_scheduler(folder, name: str):
    """diffusers' scheduler class for our sampler `name`, built from the checkpoint's own
    scheduler_config.json as `Class.from_config` builds it (PNDM as PLMS, as MusicLDM uses it)."""
    import diffusers

    from musicldm_core.samplers import CLASS_NAMES

    class_name = {ours: theirs for theirs, ours in CLASS_NAMES.items()}[name]
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    return getattr(diffusers, class_name).from_pretrained(folder / "scheduler", **extra)


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to a server on this machine, close our side, and read its whole answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def idle_server(pipe, out_dir, weights, max_queue: int):
    """`musicldm serve`'s server on a free port whose worker never starts: a valid job is queued, nothing
    generates (for fuzzing and schema checks)."""
    import threading

    from musicldm_core.app import jobs, web

    running = web.Server(jobs.Service(pipe, out_dir, str(weights), max_queue=max_queue), "127.0.0.1", 0)
    threading.Thread(target=running.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()
