"""Batch mode (`musicldm --prompts FILE --out-dir DIR`) on the tiny checkpoint: bad lines named before
any model loads, each item equal to its single run, reruns that skip, kills that lose only the
items in flight, and torchrun with two processes equal to one process, item by item."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import musicldm
from musicldm_core import batch, cli

BASE = ["--steps", "3", "--seconds", "0.5", "--threads", "1"]
ITEMS = [{"prompt": "techno beat", "id": "techno"}, {"prompt": "jazz trio", "negative": "noise"},
         {"prompt": "calm piano", "takes": 2}, {"prompt": "drums", "steps": 2}, {"prompt": "a choir", "seed": 5},
         {"prompt": "slow strings", "guidance": 1.0}, {"prompt": "harp", "sampler": "heun"}]


def write_prompts(path: Path, items) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path



def records(out: Path) -> dict:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)), f"duplicate records: {ids}"
    return {json.loads(line)["id"]: json.loads(line) for line in lines}


def audio(out: Path, record: dict) -> list:
    return [sf.read(out / name, dtype="float32")[0] for name in record["files"]]


def leftovers(out: Path) -> list:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_items_ids_and_seeds(tmp_path):
    defaults = {"negative": None, "seconds": None, "seed": None, "steps": 10, "guidance": 2.0, "takes": 1,
                "sampler": None}
    path = write_prompts(tmp_path / "p.jsonl", [{"prompt": "Techno, 128 BPM!"}, {"prompt": "jazz", "id": "j",
                                                                                "steps": 4}])
    items, problems = batch.read_items(path, defaults, base_seed=0)
    assert not problems
    assert [i.id for i in items] == ["00001-techno-128-bpm", "j"] and items[1].steps == 4 and items[0].steps == 10
    again, _ = batch.read_items(path, defaults, base_seed=0)
    other, _ = batch.read_items(path, defaults, base_seed=1)
    assert [i.seed for i in again] == [i.seed for i in items] != [i.seed for i in other]
    text = tmp_path / "p.txt"
    text.write_text("techno beat\n\n# a comment\njazz trio\n")
    items, problems = batch.read_items(text, defaults, base_seed=0)
    assert not problems and [(i.line, i.prompt) for i in items] == [(1, "techno beat"), (4, "jazz trio")]


BAD = [
    ('{"prompt": "a"', "line 1: not valid JSON"),
    ('{"prompt": "a", "stpes": 3}', "line 1: unknown field(s) 'stpes'"),
    ('{"id": "x"}', "line 1: the field 'prompt' is missing"),
    ('{"prompt": "a", "steps": 0}', "line 1: steps must be >= 1"),
    ('{"prompt": "a", "steps": "ten"}', "line 1: steps must be an integer"),
    ('{"prompt": "a", "guidance": -1}', "line 1: guidance must be a finite number"),
    ('{"prompt": "a", "sampler": "dpm3"}', "line 1: sampler: unknown sampler 'dpm3'"),
    ('{"prompt": "a", "id": "../x"}', "line 1: id '../x' must be"),
    ('{"prompt": "a", "seed": -1}', "line 1: seed must be an integer between 0"),
    ('{"prompt": ""}', "line 1: prompt"),
    ('["a"]', "line 1: a line must be a JSON object"),
]


@pytest.mark.parametrize("line, message", BAD)
def test_a_bad_line_is_named_before_any_model_loads(tmp_path, monkeypatch, capsys, line, message):
    from musicldm_core.pipeline import MusicLDMPipeline

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(no_load))
    (tmp_path / "p.jsonl").write_text(line + "\n")
    assert cli.main(["--prompts", str(tmp_path / "p.jsonl"), "--out-dir", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err


def test_a_duplicate_id_names_both_lines(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b"}, {"prompt": "c", "id": "x"}])
    _, problems = batch.read_items(path, {"steps": 3, "guidance": 2.0, "takes": 1}, 0)
    assert problems == [f"{path} line 3: id 'x' is also on line 1"]


def test_skip_bad_goes_on(tmp_path, tiny_ckpt):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "id": "good"}\n{"prompt": "b", "steps": 0}\n')
    r = musicldm("--prompts", path, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, *BASE, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "p.jsonl line 2: steps must be" in r.stderr
    assert list(records(tmp_path / "out")) == ["good"]


def test_each_item_equals_its_single_run(tmp_path, tiny_ckpt):
    """Items batched together (4 at a time) give exactly what `musicldm PROMPT --seed S` gives."""
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS)
    out = tmp_path / "out"
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    got = records(out)
    assert list(got) == ["techno", "00002-jazz-trio", "00003-calm-piano", "00004-drums", "00005-a-choir",
                         "00006-slow-strings", "00007-harp"]
    calm = got["00003-calm-piano"]
    assert calm["files"] == ["00003-calm-piano-1.wav", "00003-calm-piano-2.wav"] and len(calm["scores"]) == 2
    assert calm["scores"][0] >= calm["scores"][1] and got["techno"]["scores"] is None
    assert got["00005-a-choir"]["seed"] == 5 and got["00007-harp"]["sampler"] == "heun"
    assert got["techno"]["sampler"] == "ddim" and got["techno"]["duration"] == 0.5 and got["techno"]["time"] > 0
    for item_id in ("techno", "00002-jazz-trio", "00003-calm-piano", "00004-drums"):  # the batched ones
        rec = got[item_id]
        single = tmp_path / f"{item_id}.wav"
        args = [rec["prompt"], "-o", single, "--weights", tiny_ckpt, "--seed", rec["seed"], "--steps", rec["steps"],
                "--seconds", rec["seconds"], "--takes", rec["takes"], "--threads", 1]
        r = musicldm(*args, *(["--negative", rec["negative"]] if rec["negative"] else []))
        assert r.returncode == 0, r.stderr
        names = [single] if rec["takes"] == 1 else [single.with_name(f"{item_id}-{k}.wav") for k in (1, 2)]
        for a, name in zip(audio(out, rec), names):
            assert np.array_equal(a, sf.read(name, dtype="float32")[0]), item_id


def test_items_equal_their_single_runs_at_full_size_and_one_thread(full_ckpt):
    """At 1 thread oneDNN runs a 1x1 convolution of 4 rows with other kernels than the same rows among 16
    (measured: 1.5e-5 apart after 3 steps at full size, two takes each, without rows_apart); batch
    invariance runs the UNet's convolutions and linear layers row by row, so each of 4 items of two takes
    equals its own call."""
    import torch

    from musicldm_core.pipeline import MusicLDMPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = MusicLDMPipeline.from_pretrained(full_ckpt)
        pipe.enable_batch_invariance()
        items = [batch.Item(i, f"i{i}", prompt, None, 0.64, 100 + i, 3, 2.0, 2, None)
                 for i, prompt in enumerate(["rain", "jazz trio", "calm piano", "drums"])]
        together, _ = batch.generate(pipe, items)
        for item, audio in zip(items, together):
            alone, _ = batch.generate(pipe, [item])
            assert np.array_equal(audio, alone[0]), item.id
    finally:
        torch.set_num_threads(threads)


def test_a_batch_that_loses_an_item_is_detected(tmp_path, tiny_ckpt):
    """The equality above can fail: a different seed for one item shows."""
    out = tmp_path / "out"
    musicldm("--prompts", write_prompts(tmp_path / "p.jsonl", ITEMS[:2]), "--out-dir", out, "--weights", tiny_ckpt,
             *BASE, "--batch-size", 2)
    rec = records(out)["techno"]
    r = musicldm(rec["prompt"], "-o", tmp_path / "s.wav", "--weights", tiny_ckpt, "--seed", rec["seed"] + 1, *BASE)
    assert r.returncode == 0
    assert not np.array_equal(audio(out, rec)[0], sf.read(tmp_path / "s.wav", dtype="float32")[0])


def test_a_rerun_skips_what_is_done_and_redoes_what_is_missing(tmp_path, tiny_ckpt):
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS[:3])
    out = tmp_path / "out"
    assert musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE).returncode == 0
    first = records(out)
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.wav")}
    (out / "techno.wav").unlink()  # a lost file: its item is done again
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE)
    assert r.returncode == 0, r.stderr
    again = records(out)
    assert list(again) == list(first)
    for p in out.glob("*.wav"):
        if p.name != "techno.wav":
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamps[p.name], f"{p.name} was rewritten"
    assert np.array_equal(audio(out, again["techno"])[0], sf.read(out / "techno.wav", dtype="float32")[0])


def test_leftovers_of_a_kill_are_cleaned_and_a_cut_line_is_redone(tmp_path, tiny_ckpt):
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS[:2])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".musicldm-abc123.tmp").write_bytes(b"RIFF half a file")
    (out / "manifest.jsonl").write_text('{"id": "techno", "files": ["techno.wav"], "pro')  # cut by a kill
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE)
    assert r.returncode == 0, r.stderr
    assert list(records(out)) == ["techno", "00002-jazz-trio"] and leftovers(out) == []


def test_sigkill_then_rerun_completes_without_duplicates(tmp_path, tiny_ckpt):
    items = [{"prompt": f"song {i}", "steps": 20} for i in range(12)]
    prompts = write_prompts(tmp_path / "p.jsonl", items)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "musicldm_core", "--prompts", str(prompts), "--out-dir", str(out), "--weights",
           str(tiny_ckpt), "--seconds", "0.5", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manifest = out / "manifest.jsonl"
        if manifest.is_file() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len((out / "manifest.jsonl").read_text().splitlines())
    assert 3 <= done < 12, "the kill came too late to test anything"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = records(out)
    assert len(got) == 12 and leftovers(out) == []
    assert all((out / name).is_file() for rec in got.values() for name in rec["files"])
    assert len(list(out.glob("*.wav"))) == 12


def test_torchrun_two_processes_equal_one(tmp_path, tiny_ckpt):
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS)
    one, two = tmp_path / "one", tmp_path / "two"
    r = musicldm("--prompts", prompts, "--out-dir", one, "--weights", tiny_ckpt, *BASE, "--batch-size", 2)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29500 + os.getpid() % 1000), "-m", "musicldm_core", "--prompts", str(prompts),
                        "--out-dir", str(two), "--weights", str(tiny_ckpt), *BASE, "--batch-size", "2"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = records(one), records(two)
    assert list(a) == list(b) and leftovers(two) == []  # one record per item, in file order; parts merged
    for item_id in a:
        assert {k: v for k, v in a[item_id].items() if k != "time"} == {k: v for k, v in b[item_id].items()
                                                                        if k != "time"}
        for x, y in zip(audio(one, a[item_id]), audio(two, b[item_id])):
            assert np.array_equal(x, y), item_id


def test_one_generator_per_prompt_draws_what_each_prompt_draws_alone():
    """Batches give each item its own seed as a list of generators, one per prompt (noise.randn)."""
    import torch

    from musicldm_core.noise import randn

    both = randn((4, 8, 5, 3), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], "cpu",
                 torch.float32)
    for rows, seed in ((both[:2], 1), (both[2:], 2)):
        assert torch.equal(rows, randn((2, 8, 5, 3), torch.Generator().manual_seed(seed), "cpu", torch.float32))


def test_a_per_call_sampler_leaves_the_pipeline_as_it_was(tiny_ckpt):
    """pipe(..., sampler=NAME) equals a pipeline loaded with that scheduler; pipe.scheduler is untouched."""
    import torch

    from musicldm_core.pipeline import MusicLDMPipeline

    pipe, lms = MusicLDMPipeline.from_pretrained(tiny_ckpt), MusicLDMPipeline.from_pretrained(tiny_ckpt, scheduler="lms")
    kw = dict(audio_length_in_s=0.32, num_inference_steps=3)
    a = pipe("rain", sampler="lms", generator=torch.Generator().manual_seed(0), **kw).audios
    b = lms("rain", generator=torch.Generator().manual_seed(0), **kw).audios
    c = pipe("rain", generator=torch.Generator().manual_seed(0), **kw).audios
    assert np.array_equal(a, b) and not np.array_equal(a, c) and pipe.scheduler.name == "ddim"
