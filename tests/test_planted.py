"""Bugs planted by hand in a review round that no test caught (issue 37): each test here is red with its
bug planted. The security holes first (the converter's reader, the page's guards), then the arithmetic
of lengths and steps, and two that only the full-size parity tests caught, now on the tiny checkpoint."""

from __future__ import annotations

import json
import math
import os
import socket
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import musicldm
from musicldm_core.app import cli, files
from musicldm_core.longform import window_starts
from test_serve import pipe, running  # noqa: F401  (fixtures)
from test_fuzz import BASE_ENTRIES, _archive
from test_serve import _multipart, _wav
from weights_convert import original, reader


# --- the converter's restricted reader ------------------------------------------------------------------

@pytest.mark.parametrize("snippet, name", [
    (b"ctorch\nsave\n(}Vx\ntR.", "torch.save"), (b"ctorch.hub\nload\n(Vx\nVy\ntR.", "torch.hub.load"),
    (b"ctorch\nload\n(Vx\ntR.", "torch.load"), (b"ctorch._utils\n_rebuild_tensor_v3\n.", "torch._utils._rebuild"),
    (b"cbuiltins\ngetattr\n(cbuiltins\nprint\nV__globals__\ntR.", "builtins.getattr"),
    (b"c__builtin__\ngetattr\n(cos\npath\nVjoin\ntR.", "builtins.getattr"),
    (b"cbuiltins\neval\n(V1\ntR.", "builtins.eval")])
def test_the_restricted_reader_refuses_every_call_by_name(tmp_path, snippet, name):
    """Only the tensor rebuilders, storages and plain containers resolve: torch's own functions and
    getattr (a walk to __globals__ and os.system) are refused by name before anything runs."""
    path = tmp_path / "x.ckpt"
    path.write_bytes(_archive(snippet, BASE_ENTRIES))
    unpickler = reader._Restricted(zipfile.ZipFile(path), "archive/", path)
    with pytest.raises(original.ConversionError, match=rf"refused: its pickle calls {name}"):
        unpickler.load()


# --- the page's guards ------------------------------------------------------------------------------------

def test_a_host_that_only_begins_like_ours_is_refused(running):  # noqa: F811
    r = running()
    port = r.server.port
    for host in (f"localhost.evil.example:{port}", "localhost:1", f"localhost:{port}0", f"127.0.0.1:{port}.x",
                 f"evil.example:{port}"):
        status, answer = r.request("GET", "/api/jobs", headers={"Host": host})
        assert status == 403 and "is not the address" in answer["error"], host
    assert r.request("GET", "/api/jobs", headers={"Host": f"127.0.0.1:{port}"})[0] == 200


def test_a_fetch_from_a_neighbouring_site_is_refused(running):  # noqa: F811
    """Sec-Fetch-Site same-site (a page on another localhost port) may not start or cancel jobs."""
    r = running()
    for site in ("same-site", "cross-site"):
        status, _ = r.request("POST", "/api/jobs", {"prompt": "rain"}, headers={"Sec-Fetch-Site": site})
        assert status == 403, site
        assert r.request("DELETE", "/api/jobs/x", headers={"Sec-Fetch-Site": site})[0] == 403
    assert r.request("GET", "/api/jobs")[1]["jobs"] == []


def test_a_recorded_symlink_or_outside_file_is_never_served(running, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(out / "manifest.jsonl", out / "m.wav")
    os.symlink(tmp_path / "secret.txt", out / "s.wav")
    record = {"id": "x", "prompt": "rain", "negative": None, "seconds": 0.5, "seed": 1, "steps": 3, "guidance": 2.0,
              "takes": 1, "sampler": "ddim", "files": ["m.wav", "s.wav", "../secret.txt"], "pictures": ["m.wav"]}
    (out / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    r = running()
    for name in ("m.wav", "s.wav", "..%2Fsecret.txt", "manifest.jsonl", "%2E%2E/secret.txt"):
        assert r.request("GET", f"/files/{name}")[0] == 404, name


def test_a_huge_declared_body_is_refused_before_it_is_read(running):  # noqa: F811
    """Content-Length 1000000000 and no body: 413 at once (a server that read first would wait)."""
    r = running()
    with socket.create_connection(("127.0.0.1", r.server.port), timeout=10) as s:
        s.sendall(f"POST /api/jobs HTTP/1.1\r\nHost: {r.host}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000000000\r\n\r\n".encode())
        began = time.monotonic()
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - began < 5


def test_a_failed_or_cancelled_audio_job_leaves_no_input_behind(running, tmp_path, monkeypatch):  # noqa: F811
    r = running()
    body, headers = _multipart({"prompt": "rain", "steps": "3"}, _wav(0.3))
    monkeypatch.setattr(files, "write_bytes", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    status, answer = r.request("POST", "/api/jobs", body, headers)
    job = r.wait(answer["id"])
    assert job["state"] == "failed" and not list((tmp_path / "out").glob("*-input.wav"))
    monkeypatch.undo()
    body, headers = _multipart({"prompt": "rain", "steps": "200"}, _wav(0.3))
    status, answer = r.request("POST", "/api/jobs", body, headers)
    r.wait(answer["id"], states=("running",))
    r.request("DELETE", f"/api/jobs/{answer['id']}")
    assert r.wait(answer["id"])["state"] == "cancelled"
    assert not list((tmp_path / "out").glob("*-input.wav")) and not list((tmp_path / "out").glob("*.wav"))


# --- the remake tag ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, negative", [("rock'n'roll", None), ("a \"quoted\" song", "a'b"),
                                              ("tabs\tand  spaces", "$HOME `x` \\n"), ("--steps 9", "-o x.wav")])
def test_the_tag_quotes_every_word_it_must(prompt, negative):
    from argparse import Namespace

    from musicldm_core.app.batch import RUN_DEFAULTS, item_recipes
    from musicldm_core.app.prompt_file import Item

    item = Item(1, "x", prompt, negative, 1.0, 3, 4, 2.0, 1, None)
    tag, = item_recipes(RUN_DEFAULTS, item, "ddim", torch.device("cpu"), "float32", 1)
    args = cli.parse_tag(tag, "x.wav")
    assert (args.prompt, args.negative, args.steps, args.seed) == (prompt, negative, 4, 3)


# --- lengths and steps ------------------------------------------------------------------------------------

def test_a_resampled_output_is_not_a_sample_short(tmp_path, tiny_ckpt):
    """--seconds 0.333 at 44100 Hz: 5328 samples at 16 kHz make ceil(5328 * 44100 / 16000) = 14686."""
    r = musicldm("rain", "-o", tmp_path / "a.wav", "--weights", tiny_ckpt, "--steps", 2, "--seconds", 0.333,
                 "--sample-rate", 44100, "--threads", 1)
    assert r.returncode == 0, r.stderr
    audio, rate = sf.read(tmp_path / "a.wav")
    assert rate == 44100 and len(audio) == math.ceil(5328 * 44100 / 16000) == 14686


def test_strength_takes_diffusers_int_of_the_steps(pipe):  # noqa: F811
    """3 steps at strength 0.5 run int(1.5) = 1 step (round would give 2), as diffusers' image-to-image."""
    counted = []
    pipe("rain", audio=np.sin(np.arange(8000) / 9).astype(np.float32), audio_sampling_rate=16000, strength=0.5,
         num_inference_steps=3, progress=lambda stage, done, total: counted.append(total) if stage == "denoising"
         else None)
    assert set(counted) == {1}


@pytest.mark.parametrize("length, window, stride", [(40, 16, 8), (48, 16, 16), (16, 16, 8), (24, 8, 8), (25, 8, 8)])
def test_window_starts_never_repeat_the_last_window(length, window, stride):
    starts = window_starts(length, window, stride, circular=False)
    assert starts == sorted(set(starts)) and starts[-1] == max(0, length - window)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_eta_reaches_the_sampler(pipe):  # noqa: F811
    """DDIM's eta draws fresh noise every step: eta 1 differs from eta 0, with the same seed."""
    def run(eta):
        return pipe("rain", num_inference_steps=3, audio_length_in_s=0.3, eta=eta,
                    generator=torch.Generator().manual_seed(1)).audios
    zero, one = run(0.0), run(1.0)
    assert not np.allclose(zero, one, atol=1e-4) and np.array_equal(zero, run(0.0))


def test_callback_steps_as_diffusers(pipe):  # noqa: F811
    """callback(i, t, latents) where i % callback_steps == 0, as the reference: 5 steps, every 2 -> 0, 2, 4."""
    seen = []
    pipe("rain", num_inference_steps=5, audio_length_in_s=0.3, callback_steps=2,
         callback=lambda i, t, x: seen.append(i), generator=torch.Generator().manual_seed(1))
    assert seen == [0, 2, 4]
    seen.clear()
    pipe("rain", num_inference_steps=5, audio_length_in_s=0.3, callback=lambda i, t, x: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]
