"""`musicldm serve`: the HTTP API in-process on the tiny checkpoint; every status, the security refusals,
cancel, a full queue, a failed job, a restart with its history, and a clean Ctrl-C."""

from __future__ import annotations

import http.client
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import soundfile as sf

from musicldm_core import MusicLDMPipeline
from musicldm_core.app import cli, jobs, web


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return MusicLDMPipeline.from_pretrained(tiny_ckpt)


class Running:
    """A server on a free port in this process, and a small client for it."""

    def __init__(self, pipe, out_dir, weights, max_queue=16, token=None, host="127.0.0.1"):
        self.service = jobs.Service(pipe, out_dir, str(weights), max_queue)
        self.server = web.Server(self.service, host, 0, token)
        self.service.start()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.host, self.token = f"localhost:{self.server.port}", token

    def request(self, method, path, body=None, headers=None, raw=False, auth=True):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        bearer = {"Authorization": f"Bearer {self.token}"} if self.token and auth else {}
        headers = {"Host": self.host, **bearer, **(headers or {})}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if raw:
            return response.status, data, response
        return response.status, json.loads(data) if data else None

    def wait(self, job_id, states=("done", "failed", "cancelled"), timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, job = self.request("GET", f"/api/jobs/{job_id}")
            assert status == 200
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['state']}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.service.stop()


@pytest.fixture
def running(pipe, tiny_ckpt, tmp_path):
    made = []

    def start(**kw):
        made.append(Running(pipe, kw.pop("out_dir", tmp_path / "out"), tiny_ckpt, **kw))
        return made[-1]

    (tmp_path / "out").mkdir()
    yield start
    for r in made:
        r.close()


JOB = {"prompt": "warm piano chords", "steps": 4, "seconds": 0.64, "seed": 3}


def _png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def _multipart(fields: dict, audio: bytes, name="input.wav"):
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{name}"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + audio + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# --- a job, start to finish -------------------------------------------------------------------------------

def test_a_job_runs_its_files_are_served_and_its_command_remakes_it(running, tmp_path):
    r = running()
    status, answer = r.request("POST", "/api/jobs", {**JOB, "takes": 2})
    assert status == 202
    job = r.wait(answer["id"])
    assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None and job["seed"] == 3
    assert len(job["files"]) == 2 and len(job["pictures"]) == 2 and len(job["scores"]) == 2
    status, data, response = r.request("GET", "/files/" + job["files"][0], raw=True)
    assert status == 200 and response.getheader("Content-Type") == "audio/wav"
    audio, rate = sf.read(io.BytesIO(data))
    assert rate == 16000 and audio.shape == (10240,)  # 0.64 s
    status, png, _ = r.request("GET", "/files/" + job["pictures"][0], raw=True)
    assert status == 200 and _png_size(png) == (64, 64)  # 64 mel frames (0.64 s), 64 bins
    record = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[-1])
    assert record["id"] == job["id"] and record["files"] == job["files"] and record["pictures"] == job["pictures"]
    status, listing = r.request("GET", "/api/jobs")
    assert status == 200 and listing["jobs"][0]["id"] == job["id"] and "ddim" in listing["samplers"]
    # "copy as command": the command line remakes take 1, to the bit
    words = shlex.split(job["command"])
    words[words.index("-o") + 1] = str(tmp_path / "remade.wav")
    assert cli.main(words[1:]) == 0
    assert np.array_equal(sf.read(tmp_path / "remade.wav")[0], audio)


def test_audio_to_audio_from_a_multipart_upload(running, tmp_path):
    r = running()
    body, headers = _multipart({"prompt": "a drum loop", "steps": "4", "strength": "0.5", "seed": "5"}, _wav(0.64))
    status, answer = r.request("POST", "/api/jobs", body, headers)
    assert status == 202, answer
    job = r.wait(answer["id"])
    assert job["state"] == "done", job["error"]
    assert job["settings"]["strength"] == 0.5 and "--input" in job["command"] and "--strength 0.5" in job["command"]
    input_file = tmp_path / "out" / f"{job['id']}-input.wav"
    assert input_file.is_file() and r.request("GET", f"/files/{input_file.name}", raw=True)[0] == 200
    r.close()
    again = running()  # after a restart the input is still served with its takes
    assert again.request("GET", f"/files/{input_file.name}", raw=True)[0] == 200


# --- bad requests: 400 with the field, 413, 415, 404 -------------------------------------------------------

@pytest.mark.parametrize("body, field, words", [
    ({**JOB, "seconds": -1}, "seconds", "seconds must be"),
    ({**JOB, "steps": "many"}, "steps", "steps must be an integer, got 'many'"),
    ({**JOB, "steps": 0}, "steps", "steps must be"),
    ({**JOB, "guidance": "loud"}, "guidance", "guidance must be a number"),
    ({**JOB, "takes": 0}, "takes", "takes must be"),
    ({**JOB, "sampler": "magic"}, "sampler", "sampler"),
    ({**JOB, "seed": -4}, "seed", "seed must be an integer between 0 and"),
    ({**JOB, "strength": 0.5}, "audio", "strength needs an input audio file"),
    ({**JOB, "volume": 11}, None, "unknown field(s) 'volume'"),
    ({"steps": 3}, "prompt", "the field 'prompt' is missing"),
])
def test_a_bad_field_is_400_and_named(running, body, field, words):
    r = running()
    status, answer = r.request("POST", "/api/jobs", body)
    assert status == 400, answer
    assert words in answer["error"] and "\n" not in answer["error"]
    assert answer.get("field") == field
    assert r.request("GET", "/api/jobs")[1]["jobs"] == []  # nothing was queued


def test_bodies_are_bounded(running, monkeypatch):
    r = running()
    status, answer = r.request("POST", "/api/jobs", {"prompt": "x" * (web.JSON_LIMIT + 1)})
    assert status == 413 and "at most 65536" in answer["error"]
    monkeypatch.setattr(web, "UPLOAD_LIMIT", 50_000)
    body, headers = _multipart({"prompt": "p", "steps": "3"}, _wav(2.0))
    assert r.request("POST", "/api/jobs", body, headers)[0] == 413
    monkeypatch.setattr(web, "UPLOAD_LIMIT", 50 * 2**20)
    monkeypatch.setattr("musicldm_core.audio_input.MAX_INPUT_SECONDS", 1.0)
    body, headers = _multipart({"prompt": "p", "steps": "3"}, _wav(1.5))
    status, answer = r.request("POST", "/api/jobs", body, headers)
    assert status == 413 and "1.5 s long; at most 1 s" in answer["error"], answer
    status, answer = r.request("POST", "/api/jobs", b"prompt=x", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, answer = r.request("POST", "/api/jobs", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in answer["error"]
    assert r.request("GET", "/api/jobs/nope")[0] == 404 and r.request("DELETE", "/api/jobs/nope")[0] == 404
    assert r.request("GET", "/elsewhere")[0] == 404


# --- the queue: cancel, full, a failed job --------------------------------------------------------------

class Gate:
    """The pipeline behind a gate: a job is 'running' until the test opens it; or it fails."""

    def __init__(self, pipe, fail=None):
        self.pipe, self.open, self.fail, self.entered = pipe, threading.Event(), fail, threading.Event()

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def generate(self, options, run=None):
        self.entered.set()
        self.open.wait(60)
        if self.fail:
            raise self.fail
        return self.pipe.generate(options, run)


def test_cancel_and_a_full_queue(running, pipe):
    r = running(max_queue=1)
    gate = Gate(pipe)
    r.service.pipe = gate
    a = r.request("POST", "/api/jobs", JOB)[1]["id"]
    assert gate.entered.wait(30) and r.request("GET", f"/api/jobs/{a}")[1]["state"] == "running"
    b = r.request("POST", "/api/jobs", JOB)[1]["id"]
    status, answer = r.request("POST", "/api/jobs", JOB)
    assert status == 503 and "the queue is full (1 jobs waiting)" in answer["error"]
    status, job = r.request("DELETE", f"/api/jobs/{b}")
    assert status == 200 and job["state"] == "cancelled"  # a queued job leaves the queue at once
    assert r.request("DELETE", f"/api/jobs/{a}")[0] == 200
    gate.open.set()  # the running job stops at its next step
    assert r.wait(a)["state"] == "cancelled"
    assert not any((r.service.out_dir / f).exists() for f in (f"{a}.wav", f"{b}.wav"))
    c = r.request("POST", "/api/jobs", JOB)[1]["id"]  # the worker goes on
    assert r.wait(c)["state"] == "done"


def test_a_failed_job_says_why_and_the_server_goes_on(running, pipe):
    r = running()
    r.service.pipe = Gate(pipe, fail=ValueError("the denoised latents hold NaN or infinite values (the unet)"))
    r.service.pipe.open.set()
    job = r.wait(r.request("POST", "/api/jobs", JOB)[1]["id"])
    assert job["state"] == "failed" and job["error"] == "the denoised latents hold NaN or infinite values (the unet)"
    r.service.pipe = pipe
    assert r.wait(r.request("POST", "/api/jobs", JOB)[1]["id"])["state"] == "done"


def test_a_restart_lists_the_history(running, tmp_path):
    first = running()
    job = first.wait(first.request("POST", "/api/jobs", JOB)[1]["id"])
    first.close()
    again = running()
    status, listing = again.request("GET", "/api/jobs")
    old = next(j for j in listing["jobs"] if j["id"] == job["id"])
    assert old["state"] == "done" and old["files"] == job["files"] and old["command"] == job["command"]
    assert again.request("GET", "/files/" + job["files"][0], raw=True)[0] == 200


# --- security --------------------------------------------------------------------------------------------

def test_host_origin_and_site_refusals(running):
    r = running()
    status, answer = r.request("GET", "/api/jobs", headers={"Host": "evil.example:80"})
    assert status == 403 and "Host 'evil.example:80' is not the address" in answer["error"]
    assert r.request("GET", "/", headers={"Host": "attacker.test"}, raw=True)[0] == 403
    status, answer = r.request("POST", "/api/jobs", JOB, {"Origin": "http://evil.example"})
    assert status == 403 and "another site" in answer["error"]
    assert r.request("DELETE", "/api/jobs/x", headers={"Origin": "http://evil.example"})[0] == 403
    assert r.request("POST", "/api/jobs", JOB, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert r.request("GET", "/api/jobs")[1]["jobs"] == []
    status, answer = r.request("POST", "/api/jobs", JOB, {"Origin": f"http://{r.host}"})  # the page itself
    assert status == 202


def test_beyond_loopback_needs_a_token(pipe, tiny_ckpt, tmp_path, running):
    service = jobs.Service(pipe, tmp_path, str(tiny_ckpt))
    with pytest.raises(ValueError, match="--host 0.0.0.0 reaches beyond this machine: give --token"):
        web.Server(service, "0.0.0.0", 0)
    assert cli.main(["serve", "--host", "0.0.0.0", "--weights", str(tiny_ckpt), "--out-dir", str(tmp_path)]) == 1
    r = running(token="s3cret", host="0.0.0.0")
    assert r.request("GET", "/api/jobs", auth=False)[0] == 401
    assert r.request("GET", "/api/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert r.request("POST", "/api/jobs", JOB, auth=False)[0] == 401
    status, answer = r.request("POST", "/api/jobs", JOB)  # with the token
    assert status == 202
    name = r.wait(answer["id"])["files"][0]
    assert r.request("GET", f"/files/{name}", raw=True, auth=False)[0] == 401
    assert r.request("GET", f"/files/{name}?token=s3cret", raw=True, auth=False)[0] == 200


def test_no_file_outside_what_was_written(running, tmp_path):
    r = running()
    out = tmp_path / "out"
    job = r.wait(r.request("POST", "/api/jobs", JOB)[1]["id"])
    (tmp_path / "secret.txt").write_text("private")
    for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt", "/files/manifest.jsonl",
                 "/files/.musicldm.lock", "/files/" + str(tmp_path / "secret.txt"), "/files/"):
        status, data, _ = r.request("GET", path, raw=True)
        assert status == 404 and b"private" not in data, path
    # a recorded name that is now a symlink to a file outside: not followed
    target = out / job["files"][0]
    target.unlink()
    target.symlink_to(tmp_path / "secret.txt")
    status, data, _ = r.request("GET", "/files/" + job["files"][0], raw=True)
    assert status == 404 and b"private" not in data


def test_the_page_is_served_with_a_strict_policy(running):
    r = running()
    status, data, response = r.request("GET", "/", raw=True)
    assert status == 200 and b">Generate</button>" in data and b'<label for="prompt">Prompt</label>' in data
    assert "default-src 'self'" in response.getheader("Content-Security-Policy")
    assert b"http://" not in data and b"https://" not in data  # no external URL: it works offline


def test_ctrl_c_stops_cleanly(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "musicldm_core", "serve", "--weights", str(tiny_ckpt),
                                "--out-dir", str(out), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("musicldm serve: http://localhost:"), line + process.stderr.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, process.stderr.read()
    finally:
        process.kill()
    assert sorted(p.name for p in out.iterdir()) == []  # no lock, no temporary file left


# --- the picture -----------------------------------------------------------------------------------------

def test_the_mels_returned_are_each_takes_own(pipe):
    """return_mels: the mel the VAE decoded for each take, in the ranked order: vocoding mels[i] gives
    audios[i] exactly (with batch invariance: a mel vocoded alone, as it is then vocoded in the call)."""
    import torch

    pipe.enable_batch_invariance()
    try:
        out = pipe("rain on a tin roof", num_inference_steps=3, audio_length_in_s=0.64, num_waveforms_per_prompt=3,
                   generator=torch.Generator().manual_seed(2), return_mels=True)
    finally:
        pipe.enable_batch_invariance(False)
    assert out.mels.shape == (3, 64, 64) and out.scores is not None
    for i in range(3):
        wave = pipe.vocode(torch.from_numpy(out.mels[i])[None, None]).numpy()[0]
        assert np.array_equal(wave[: out.audios.shape[-1]], out.audios[i]), i
    assert pipe("rain", num_inference_steps=3, audio_length_in_s=0.64).mels is None  # only when asked


def test_mel_png_is_a_valid_picture_of_the_mel():
    import zlib

    from musicldm_core.app.png import mel_png

    mel = np.zeros((5, 3))  # 5 frames, 3 bins
    mel[0, 0], mel[4, 2] = -2.0, 3.0  # the first frame's lowest bin lowest, the last frame's highest bin highest
    data = mel_png(mel)
    assert _png_size(data) == (5, 3)
    length = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT"
    assert zlib.crc32(data[37:41 + length]) == int.from_bytes(data[41 + length:45 + length], "big")
    rows = zlib.decompress(data[41:41 + length])
    assert len(rows) == 3 * (1 + 5 * 3) and all(rows[r * 16] == 0 for r in range(3))  # filter byte 0 per row
    pixel = lambda row, col: tuple(rows[row * 16 + 1 + 3 * col: row * 16 + 4 + 3 * col])  # noqa: E731
    assert pixel(2, 0) == (0, 0, 4)  # bottom-left: the lowest bin of the first frame, the minimum: darkest
    assert pixel(0, 4) == (252, 253, 191)  # top-right: the highest bin of the last frame, the maximum: brightest


def test_requests_at_the_same_moment_get_their_own_ids(running, pipe):
    r = running()
    gate = Gate(pipe)
    r.service.pipe = gate
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(r.request("POST", "/api/jobs", JOB))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [answer["id"] for status, answer in answers if status == 202]
    assert len(ids) == 6 and len(set(ids)) == 6
    for job_id in ids:
        r.request("DELETE", f"/api/jobs/{job_id}")
    gate.open.set()
