"""Batch mode (`musicldm --prompts FILE --out-dir DIR`) on the tiny checkpoint: bad lines named before
any model loads, each item equal to its single run, reruns that skip, kills that lose only the
items in flight, and torchrun with two processes equal to one process, item by item."""

from __future__ import annotations

import datetime
import errno
import hashlib
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import musicldm, refused
from musicldm_core import placement
from musicldm_core.app import batch, cli, files, prompt_file
from musicldm_core.app.ranks import Ranks, SameOnEveryRank, rank_device
from musicldm_core.load import open_checkpoint
from musicldm_core.noise import randn
from musicldm_core.options import Options
from musicldm_core.pipeline import MusicLDMPipeline

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
    items, problems = prompt_file.read_items(path, defaults, base_seed=0)
    assert not problems
    assert [i.id for i in items] == ["00001-techno-128-bpm", "j"] and items[1].steps == 4 and items[0].steps == 10
    again, _ = prompt_file.read_items(path, defaults, base_seed=0)
    other, _ = prompt_file.read_items(path, defaults, base_seed=1)
    assert [i.seed for i in again] == [i.seed for i in items] != [i.seed for i in other]
    text = tmp_path / "p.txt"
    text.write_text("techno beat\n\n# a comment\njazz trio\n")
    items, problems = prompt_file.read_items(text, defaults, base_seed=0)
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
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(no_load))
    (tmp_path / "p.jsonl").write_text(line + "\n")
    assert cli.main(["--prompts", str(tmp_path / "p.jsonl"), "--out-dir", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err


def test_a_duplicate_id_names_both_lines(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b"}, {"prompt": "c", "id": "x"}])
    _, problems = prompt_file.read_items(path, {"steps": 3, "guidance": 2.0, "takes": 1}, 0)
    assert problems == [f"{path} line 3: id 'x' is also on line 1"]


def test_skip_bad_goes_on(tmp_path, tiny_ckpt):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "id": "good"}\n{"prompt": "b", "steps": 0}\n')
    r = musicldm("--prompts", path, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, *BASE, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "p.jsonl line 2: steps must be" in r.stderr
    assert list(records(tmp_path / "out")) == ["good"]


def test_each_item_equals_its_single_run(tmp_path, tiny_ckpt):
    """With --exact-batches, items batched together (4 at a time) give exactly what `musicldm PROMPT --seed S
    --exact-batches` gives."""
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS)
    out = tmp_path / "out"
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE, "--batch-size", 4,
                 "--exact-batches")
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
                "--seconds", rec["seconds"], "--takes", rec["takes"], "--threads", 1, "--exact-batches"]
        assert rec["exact_batches"] is True and rec["asked"]["exact_batches"] is True
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

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = MusicLDMPipeline.from_pretrained(full_ckpt)
        pipe.enable_batch_invariance()
        items = [prompt_file.Item(i, f"i{i}", prompt, None, 0.64, 100 + i, 3, 2.0, 2, None)
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
    """With --exact-batches (two ranks batch other items together, each on its share of the threads)."""
    prompts = write_prompts(tmp_path / "p.jsonl", ITEMS)
    one, two = tmp_path / "one", tmp_path / "two"
    r = musicldm("--prompts", prompts, "--out-dir", one, "--weights", tiny_ckpt, *BASE, "--batch-size", 2,
                 "--exact-batches")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29500 + os.getpid() % 1000), "-m", "musicldm_core", "--prompts", str(prompts),
                        "--out-dir", str(two), "--weights", str(tiny_ckpt), *BASE, "--batch-size", "2",
                        "--exact-batches"],
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

    both = randn((4, 8, 5, 3), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], "cpu",
                 torch.float32)
    for rows, seed in ((both[:2], 1), (both[2:], 2)):
        assert torch.equal(rows, randn((2, 8, 5, 3), torch.Generator().manual_seed(seed), "cpu", torch.float32))


def test_a_per_call_sampler_leaves_the_pipeline_as_it_was(tiny_ckpt):
    """pipe(..., sampler=NAME) equals a pipeline loaded with that scheduler; pipe.scheduler is untouched."""

    pipe, lms = MusicLDMPipeline.from_pretrained(tiny_ckpt), MusicLDMPipeline.from_pretrained(tiny_ckpt, scheduler="lms")
    kw = dict(audio_length_in_s=0.32, num_inference_steps=3)
    a = pipe("rain", sampler="lms", generator=torch.Generator().manual_seed(0), **kw).audios
    b = lms("rain", generator=torch.Generator().manual_seed(0), **kw).audios
    c = pipe("rain", generator=torch.Generator().manual_seed(0), **kw).audios
    assert np.array_equal(a, b) and not np.array_equal(a, c) and pipe.scheduler.name == "ddim"


# ---------------------------------------------------------------------------------------------
# batch.py's parts on their own, without a model: lines, items, groups, the out-dir, the ranks
# ---------------------------------------------------------------------------------------------

DEFAULTS = {"negative": None, "seconds": None, "seed": None, "steps": 3, "guidance": 2.0, "takes": 1, "sampler": None}


def item(line=1, item_id="a", prompt="rain", **kw) -> prompt_file.Item:
    values = dict(negative=None, seconds=1.0, seed=7, steps=3, guidance=2.0, takes=1, sampler=None)
    return prompt_file.Item(line, item_id, prompt, **{**values, **kw})


def test_an_items_files_group_and_what_it_asked():
    assert item().files(Path("o")) == [Path("o/a.wav")]
    assert item(takes=3).files(Path("o")) == [Path("o/a-1.wav"), Path("o/a-2.wav"), Path("o/a-3.wav")]
    one = item(seconds=2.0, steps=4, sampler="lms", guidance=3.0, takes=2, loop=True, window="whole")
    assert one.group == (2.0, 4, "lms", 3.0, 2, True, "whole", False, None)
    assert item().loop is False and item().window == "auto" and item().exact_batches is False
    asked = one.asked({"weights": "w", "sample_rate": None})
    assert asked == {"prompt": "rain", "negative": None, "seconds": 2.0, "seed": 7, "steps": 4, "guidance": 3.0,
                     "takes": 2, "sampler": "lms", "loop": True, "window": "whole", "weights": "w",
                     "sample_rate": None}  # no line, no id: those may change without changing the audio
    # exact batches: a group of its own, and asked only when on (records made before the field still match)
    exact = item(exact_batches=True)
    assert exact.group[-2] is True and exact.group != item().group
    assert exact.asked({}) == {**item().asked({}), "exact_batches": True}
    # a like, blend or schedule: a group of its own, asked only when set
    blended = item(blend=("rain:0.5",))
    assert blended.group[-1] == "a" and blended.asked({}) == {**item().asked({}), "blend": ["rain:0.5"]}


def test_item_options_draw_each_items_noise_from_its_seed():
    a, b = item(seed=1), item(2, "b", "jazz", negative="noise", seed=2)
    together = batch.item_options([a, b], Options(strength=0.5, eta=0.3))
    assert together.prompt == ["rain", "jazz"] and together.negative_prompt == ["", "noise"]
    assert [g.initial_seed() for g in together.generator] == [1, 2]
    assert (together.audio_length_in_s, together.num_inference_steps, together.guidance_scale,
            together.num_waveforms_per_prompt, together.sampler, together.loop, together.window) == \
        (1.0, 3, 2.0, 1, None, False, "auto")
    assert together.rank_within_prompt and together.crop == "start"  # each prompt's own takes, a fixed crop
    assert (together.strength, together.eta) == (0.5, 0.3)  # the template's other options are kept
    alone = batch.item_options([b])
    assert alone.prompt == "jazz" and alone.negative_prompt == "noise" and alone.generator.initial_seed() == 2
    assert batch.item_options([a]).negative_prompt is None  # "" for every prompt: none given, as a single run
    three = item(takes=3, sampler="heun", loop=True, window="windowed", guidance=1.5, steps=9, seconds=None)
    o = batch.item_options([three])
    assert (o.num_waveforms_per_prompt, o.sampler, o.loop, o.window, o.guidance_scale, o.num_inference_steps,
            o.audio_length_in_s) == (3, "heun", True, "windowed", 1.5, 9, None)


def test_a_derived_seed_depends_on_the_base_seed_and_the_id_only():
    seed = prompt_file.derived_seed(0, "a")
    assert seed == prompt_file.derived_seed(0, "a") and 0 <= seed < 2**63
    assert len({seed, prompt_file.derived_seed(1, "a"), prompt_file.derived_seed(0, "b"), prompt_file.derived_seed(0, "A")}) == 4
    assert seed == int.from_bytes(hashlib.sha256(b"0\na").digest()[:8], "little") >> 1  # the documented recipe


def test_read_text(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbfrain\n")
    assert prompt_file.read_text(path, "--prompts") == "rain\n"  # the byte-order mark dropped
    path.write_bytes(b"ok\nab\xffc\n")
    refused(f"--prompts: {str(path)!r} line 2 is not UTF-8 (byte 0xff at column 3); save the file as UTF-8",
            prompt_file.read_text, path, "--prompts")
    path.write_bytes(b"\xfe")
    refused("line 1 is not UTF-8 (byte 0xfe at column 1)", prompt_file.read_text, path, "--prompts")
    path.write_bytes(b"\nab\xffc\nmore\n")  # the line before ends at the file's first byte; lines after it
    refused("line 2 is not UTF-8 (byte 0xff at column 3)", prompt_file.read_text, path, "--prompts")
    path.write_bytes(b"x\ny\nab\xff\n")  # two lines before
    refused("line 3 is not UTF-8 (byte 0xff at column 3)", prompt_file.read_text, path, "--prompts")
    refused(f"--prompts: cannot read {str(tmp_path / 'no')!r} (No such file or directory)", prompt_file.read_text,
            tmp_path / "no", "--prompts")


@pytest.mark.parametrize("name, lines, expected", [
    ("p.jsonl", ["rain"], True), ("p.JSON", ["rain"], True), ("p.txt", ['{"prompt": "a"}'], False),
    ("p", ["", "# {comment}", '  {"prompt": "a"}'], True), ("p.list", ["# c", "a {text}", "{"], False),
    ("p", [], False)])
def test_the_format_by_extension_else_by_the_first_line(name, lines, expected):
    assert prompt_file.is_json_lines(Path(name), lines) is expected


def test_read_items_in_both_formats(tmp_path):
    path = tmp_path / "p"
    path.write_text('\n  # {"prompt": "skipped"}\n{"prompt": "Techno, 128 BPM!", "seconds": 2, "seed": 0}\n'
                    '{"prompt": "~~~", "negative": null, "sampler": null, "steps": 5, "loop": true}\n')
    items, problems = prompt_file.read_items(path, {**DEFAULTS, "guidance": 3.0, "negative": "noise"}, base_seed=4)
    assert problems == []
    a, b = items
    assert a.negative == "noise"  # the command's --negative, where the line gives none (b's null: none)
    assert (a.line, a.id, a.prompt, a.seconds, a.seed, a.steps, a.guidance, a.takes, a.loop, a.window) == \
        (3, "00003-techno-128-bpm", "Techno, 128 BPM!", 2, 0, 3, 3.0, 1, False, "auto")
    assert (b.id, b.seed, b.steps, b.loop, b.negative, b.sampler) == ("00004-item", prompt_file.derived_seed(4, "00004-item"),
                                                                      5, True, None, None)
    refused(f"--prompts: cannot read {str(tmp_path / 'none.txt')!r}", prompt_file.read_items, tmp_path / "none.txt",
            DEFAULTS, 0)
    long = tmp_path / "p.txt"
    long.write_text(" " + "word " * 20 + "\n")  # the id's slug is cut to 40 characters, no trailing '-'
    (only,), _ = prompt_file.read_items(long, DEFAULTS, 0)
    assert only.prompt == ("word " * 20).strip() and only.id == "00001-" + "-".join(["word"] * 8)
    empty = tmp_path / "e.txt"
    empty.write_text("# nothing\n\n")
    assert prompt_file.read_items(empty, DEFAULTS, 0) == ([], [f"{empty}: no prompts in the file"])


@pytest.mark.parametrize("lines, problem", [
    (['{"prompt": "a", "seed": true}'], "line 1: seed must be an integer, got True"),
    (['{"prompt": "a", "seed": 18446744073709551616}'], "line 1: seed must be an integer between 0 and "
                                                        "18446744073709551615, got 18446744073709551616"),
    (['{"prompt": "a", "id": "-x"}'], "line 1: id '-x' must be 1-100 letters, digits, '.', '_' or '-', starting "
                                      "with a letter or digit (it names the output files)"),
    (['{"prompt": "a", "id": "' + "x" * 101 + '"}'], "line 1: id '" + "x" * 101 + "' must be 1-100 letters, digits, "
                                                     "'.', '_' or '-', starting with a letter or digit (it names the "
                                                     "output files)"),
    (['{"prompt": "a", "id": 5}'], "line 1: id must be text, got 5"),
    (['{"prompt": "a", "id": "x", "takes": 2}', '{"prompt": "b", "id": "x-2"}'],
     "line 2: id 'x-2' and 'x' on line 1 both write 'x-2.wav'"),
    (['{"prompt": "a", "id": "Song"}', '{"prompt": "b", "id": "song"}'],
     "line 2: id 'song' and 'Song' on line 1 both write 'song.wav' (letter case does not tell files apart on macOS "
     "and Windows)"),
    (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x", "takes": 2}'], "line 2: id 'x' is also on line 1"),
    (['{"prompt": "a", "id": "x", "takes": 2}', '{"prompt": "b", "id": "x"}'], "line 2: id 'x' is also on line 1"),
    (['{"prompt": "a", "steps": 0}'], "line 1: steps must be >= 1, got 0"),
    (['{"prompt": "a", "takes": 0}'], "line 1: takes must be >= 1, got 0"),
    (['{"prompt": "a", "seconds": 0}'], "line 1: seconds must be a finite number > 0, got 0"),
    (['{"prompt": "a", "window": "wide"}'], "line 1: window must be None, 'auto', 'whole' or 'windowed', got 'wide'"),
    (['{"prompt": "a", "guidance": -1}'], "line 1: guidance must be a finite number >= 0, got -1"),
    (['{"prompt": "a", "negative": 3}'], "line 1: negative must be text, got 3"),
    (['"a"'], "line 1: a line must be a JSON object, got str"),
    (['{"prompt": "a" "b"}'], "line 1: not valid JSON (Expecting ',' delimiter at column 16)"),
])
def test_a_bad_line_is_named_with_its_number(tmp_path, lines, problem):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items, problems = prompt_file.read_items(path, DEFAULTS, 0)
    assert problems == [f"{path} {problem}"] and len(items) == len(lines) - 1


def test_check_fields():
    prompt_file.check_fields({"prompt": "a", "seconds": 2, "guidance": 1, "loop": False, "negative": None, "seed": None,
                        "sampler": None})  # an integer is a number; these three may be null, and seconds:
    prompt_file.check_fields({"prompt": "a", "seconds": None})
    assert list(prompt_file.FIELDS)[:2] == ["prompt", "id"] and {"seconds", "takes", "exact_batches"} <= set(prompt_file.FIELDS)
    refused(f"unknown field(s) 'b', 'c'; the fields are {', '.join(prompt_file.FIELDS)}", prompt_file.check_fields,
            {"prompt": "a", "c": 1, "b": 2})
    refused("the field 'prompt' is missing", prompt_file.check_fields, {"id": "x"})
    for key, value, words in (("seconds", "2", "a number"), ("seconds", True, "a number"), ("steps", 2.0, "an integer"),
                              ("steps", True, "an integer"), ("loop", 1, "true or false"), ("prompt", None, "text"),
                              ("id", None, "text"), ("steps", None, "an integer"), ("window", None, "text")):
        refused(f"{key} must be {words}, got {value!r}", prompt_file.check_fields, {"prompt": "a", key: value})
    fields = {**prompt_file.FIELDS, "extra": dict}
    refused("extra must be dict, got 1", prompt_file.check_fields, {"prompt": "a", "extra": 1}, fields)
    refused("blend must be a list, got 'a:1'", prompt_file.check_fields, {"blend": "a:1"})
    prompt_file.check_fields({"prompt": "a", "steps": None}, prompt_file.FIELDS, ("steps",))  # optional: may be null


def test_batches_group_by_what_must_be_equal_in_the_order_groups_appear():
    a = [item(i, f"a{i}") for i in range(5)]
    b = [item(10 + i, f"b{i}", steps=4) for i in range(2)]
    ancestral = [item(20 + i, f"e{i}", sampler="euler_ancestral") for i in range(2)]
    unguided = [item(30 + i, f"u{i}", guidance=1.0) for i in range(2)]
    order = [a[0], b[0], a[1], ancestral[0], a[2], unguided[0], a[3], b[1], ancestral[1], a[4], unguided[1]]
    got = [[i.id for i in group] for group in batch.batches(order, 2)]
    assert got == [["a0", "a1"], ["a2", "a3"], ["a4"], ["b0", "b1"], ["e0"], ["e1"], ["u0", "u1"]]
    exact = [item(50 + i, f"x{i}", guidance=1.0, exact_batches=True) for i in range(2)]
    assert [[i.id for i in g] for g in batch.batches(exact + unguided, 4)] == [["x0"], ["x1"], ["u0", "u1"]]
    guided = [item(40 + i, f"g{i}", guidance=1.01) for i in range(2)]
    assert [[i.id for i in g] for g in batch.batches(guided, 4)] == [["g0", "g1"]]


def test_report_names_the_first_three_problems(capsys):
    batch.report([], "bad line(s)", skip=False)
    problems = [f"line {i}: bad" for i in range(1, 6)]
    refused("5 bad line(s) (--skip-bad skips them): line 1: bad; line 2: bad; line 3: bad; and 2 more", batch.report,
            problems, "bad line(s)", False)
    refused("4 bad line(s) (--skip-bad skips them): line 1: bad; line 2: bad; line 3: bad; and 1 more", batch.report,
            problems[:4], "bad line(s)", False)
    message = refused("3 bad line(s) (--skip-bad skips them): line 1: bad; line 2: bad; line 3: bad", batch.report,
                      problems[:3], "bad line(s)", False)
    assert "more" not in message
    batch.report(problems[:2], "bad line(s)", skip=True)
    assert capsys.readouterr().err == "musicldm: skipped line 1: bad\nmusicldm: skipped line 2: bad\n"


def test_ranks_from_the_launchers_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    one = Ranks()
    assert (one.rank, one.world, one.local_rank, one.local_world) == (0, 1, 0, 1)
    monkeypatch.setenv("RANK", "5"), monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1"), monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    ranks = Ranks()
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.local_world) == (5, 8, 1, 4)


def test_check_out_dir(tmp_path):
    made = tmp_path / "a" / "b"
    assert batch.check_out_dir(made) == made and made.is_dir() and list(made.iterdir()) == []
    (tmp_path / "f").write_text("")
    refused(f"--out-dir: {str(tmp_path / 'f')!r} is a file, not a folder", batch.check_out_dir, tmp_path / "f")
    refused(f"--out-dir: cannot make the folder {str(tmp_path / 'f' / 'x')!r} (Not a directory)", batch.check_out_dir,
            tmp_path / "f" / "x")
    (made / "manifest.jsonl").mkdir()
    refused(f"--out-dir: {str(made / 'manifest.jsonl')!r} is a folder; move it away (batch mode keeps its manifest "
            "there)", batch.check_out_dir, made)
    (made / "manifest.jsonl").rmdir()
    (made / ".manifest-parts").write_text("")
    refused(f"--out-dir: {str(made / '.manifest-parts')!r} is a file; move it away (batch mode keeps its manifest "
            "parts there)", batch.check_out_dir, made)
    (made / ".manifest-parts").unlink()
    (made / ".manifest-parts").mkdir()
    (made / "manifest.jsonl").write_text("")
    (made / "probe.wav").mkdir()  # whatever else the folder holds
    assert batch.check_out_dir(made) == made


def test_an_out_dir_that_cannot_be_written(tmp_path, monkeypatch):
    def read_only(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "temp_file", read_only)
    refused(f"--out-dir: cannot write in {str(tmp_path)!r} (Permission denied)", batch.check_out_dir, tmp_path)


def test_run_values_record_only_what_is_not_the_default():
    args = Namespace(weights=Path("w"), revision=None, sample_rate=None, eta=0.0, attention_heads="checkpoint")
    assert batch.run_values(batch.run_settings(args)) == {"weights": "w", "revision": None, "sample_rate": None}
    args = Namespace(weights="w", revision="v1", sample_rate=44100, eta=0.5, attention_heads="authors")
    assert batch.run_values(batch.run_settings(args)) == {"weights": "w", "revision": "v1", "sample_rate": 44100, "eta": 0.5,
                                      "attention_heads": "authors"}
    assert batch.run_values(batch.run_settings(Namespace(weights="w", revision=None, sample_rate=None))) == \
        {"weights": "w", "revision": None, "sample_rate": None}  # a Namespace from an older caller


def test_an_items_record():
    one = item(takes=2)
    record = batch.item_record(one, "ddim", [Path("o/a-1.wav"), Path("o/a-2.wav")], 1.0, [0.5, 0.25], 1.23456,
                               {"weights": "w"})
    assert record == {"line": 1, "id": "a", "prompt": "rain", "negative": None, "seconds": 1.0, "seed": 7, "steps": 3,
                      "guidance": 2.0, "takes": 2, "sampler": "ddim", "loop": False, "window": "auto",
                      "exact_batches": False, "files": ["a-1.wav", "a-2.wav"], "duration": 1.0, "scores": [0.5, 0.25], "time": 1.235,
                      "asked": one.asked({"weights": "w"})}


def test_the_rank_device():
    one, two = ranks_of(0, 1, 1), ranks_of(1, 2, 2)
    assert rank_device(Namespace(device="cpu"), one) == torch.device("cpu")
    assert rank_device(Namespace(device=None), one) == torch.device(placement.default_device())
    assert rank_device(Namespace(device="cpu"), two) == torch.device("cpu")  # ranks share the CPU
    if torch.cuda.device_count() >= 2:
        assert rank_device(Namespace(device="cuda"), two) == torch.device("cuda", 1)  # each rank its GPU
        assert rank_device(Namespace(device="cuda"), one) == torch.device("cuda")
    elif not torch.cuda.is_available():
        refused("device: 'cuda:1' requested but", rank_device, Namespace(device="cuda"), two)
        refused("device: 'cuda' requested but", rank_device, Namespace(device="cuda"), one)


@pytest.mark.parametrize("flag, value, message", [
    ("output", "x.wav", "-o/--output cannot be used with --prompts: files are named <id>.wav in --out-dir"),
    ("input", "x.wav", "--input cannot be used with --prompts: audio-to-audio runs one input at a time: leave out "
                       "--prompts"),
    ("strength", 0.5, "--strength cannot be used with --prompts: it goes with --input"),
    ("inpaint", "1:2", "--inpaint cannot be used with --prompts: it goes with --input"),
    ("extend", 2.0, "--extend cannot be used with --prompts: it goes with --input")])
def test_what_batch_mode_does_not_take(flag, value, message):
    args = Namespace(**{name: None for name in batch.NOT_IN_BATCH}, prompts="never read")
    setattr(args, flag, value)
    refused(message, batch.run, args, DEFAULTS)


class FakePipe:
    """Stands in for MusicLDMPipeline in generate_items: take k of the item with seed s is the constant
    (s + k / 10) / 100, so that every file can be traced to its item and take."""

    sampling_rate = 16000

    def __init__(self, calls: list):
        self.calls, self.scheduler = calls, SimpleNamespace(name="ddim")

    exact = False  # enable_batch_invariance's state, recorded with each generate call

    def enable_batch_invariance(self, on=True):
        self.exact = on

    def compile(self):
        self.calls.append("compile")

    def generate(self, o):
        generators = o.generator if isinstance(o.generator, list) else [o.generator]
        n = o.num_waveforms_per_prompt
        audios = np.stack([np.full(160, (g.initial_seed() + k / 10) / 100, np.float32) for g in generators
                           for k in range(n)])
        self.calls.append(("generate", len(generators), o.eta, callable(o.progress)) + (("exact",) if self.exact else ()))
        if o.progress is not None:
            o.progress("denoising", 1, 1)
        return SimpleNamespace(audios=audios, scores=torch.arange(len(audios), dtype=torch.float32) if n > 1 else None)


def ranks_of(rank: int, world: int, local_world: int) -> Ranks:
    ranks = Ranks.__new__(Ranks)
    ranks.rank, ranks.world, ranks.local_rank, ranks.local_world = rank, world, rank % local_world, local_world
    return ranks


def run_items(tmp_path, monkeypatch, items, ranks, done=frozenset(), **options):
    """generate_items with FakePipe: (what the pipeline was loaded with, its calls, the records written)."""

    calls, loaded = [], {}

    def from_pretrained(folder, **kwargs):
        loaded.update(kwargs, folder=folder, threads=torch.get_num_threads())
        return FakePipe(calls)

    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(from_pretrained))
    args = Namespace(**{"threads": None, "batch_size": None, "dtype": None, "attention_heads": "authors",
                        "compile": False, "sample_rate": None, "eta": 0.25, **options})
    threads = torch.get_num_threads()
    try:
        batch.generate_items(args, items, done, tmp_path, ranks, torch.device("cpu"), Path("ckpt"), {"weights": "w"})
    finally:
        torch.set_num_threads(threads)
    manifest = tmp_path / ("manifest.jsonl" if ranks.world == 1 else f".manifest-parts/rank-{ranks.rank:05d}.jsonl")
    return loaded, calls, [json.loads(line) for line in manifest.read_text().splitlines()]


def test_generate_items_writes_each_items_takes_and_record(tmp_path, monkeypatch, capsys):
    items = [item(i, f"i{i}", seed=i, takes=2) for i in range(1, 6)] + [item(6, "u", seed=6, guidance=1.0)]
    loaded, calls, records = run_items(tmp_path, monkeypatch, items, ranks_of(0, 1, 2), compile=True)
    assert loaded == {"folder": Path("ckpt"), "device": torch.device("cpu"), "dtype": "float32",
                      "attention_heads": "authors", "threads": max(1, (os.cpu_count() or 1) // 2)}
    # 4 a call on a CPU; the unguided item alone; each call with the run's eta and a progress line
    assert calls == ["compile", ("generate", 4, 0.25, True), ("generate", 1, 0.25, True),
                     ("generate", 1, 0.25, True)]
    assert [r["id"] for r in records] == ["i1", "i2", "i3", "i4", "i5", "u"]
    for record, one in zip(records, items):
        assert record["asked"] == one.asked({"weights": "w"}) and record["sampler"] == "ddim"
        assert record["duration"] == 0.01 and record["time"] >= 0
        for k, name in enumerate(record["files"]):
            audio, rate = sf.read(tmp_path / name, dtype="float32")
            assert rate == 16000 and np.allclose(audio, (one.seed + k / 10) / 100), name
    assert records[1]["files"] == ["i2-1.wav", "i2-2.wav"] and records[1]["scores"] == [2.0, 3.0]
    assert records[4]["scores"] == [0.0, 1.0] and records[5]["scores"] is None and records[5]["files"] == ["u.wav"]
    said = capsys.readouterr()
    assert said.out.splitlines()[0] == f"{tmp_path / 'i1-1.wav'}: 0.01 s, seed 1, ddim, 3 steps, guidance 2"
    assert len(said.out.splitlines()) == 11
    assert said.err.startswith("musicldm: i1, i2, i3, i4: denoising 1/1 steps (")  # one process: no rank in front


def test_generate_items_at_another_rate_on_a_rank_of_two(tmp_path, monkeypatch):
    items = [item(1, "a", seed=1), item(2, "b", seed=2, sampler="lms")]
    loaded, calls, records = run_items(tmp_path, monkeypatch, items, ranks_of(1, 2, 2), threads=1, batch_size=1,
                                       dtype="bfloat16", sample_rate=8000)
    assert (loaded["threads"], loaded["dtype"]) == (1, "bfloat16") and calls == [("generate", 1, 0.25, True)] * 2
    assert [(r["id"], r["sampler"], r["duration"]) for r in records] == [("a", "ddim", 0.01), ("b", "lms", 0.01)]
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 8000 and len(audio) == 80 and abs(audio[40] - 0.01) < 1e-3  # resampled, the level kept


def _two_ranks(port: int, rank: int, flag: bool, marker: Path, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = Ranks()
    ranks.join()
    both, mine = ranks.all_true(True), ranks.all_true(flag)
    if rank == 0:  # late: rank 1 sees the marker only if the barrier waited for it
        time.sleep(0.5)
        marker.write_text("rank 0 was here")
    ranks.barrier()
    waited = marker.exists()
    ranks.close()
    queue.put((rank, both, mine, waited, torch.distributed.is_initialized()))


def test_two_ranks_agree_only_when_both_do(monkeypatch, tmp_path):
    """Ranks over gloo in two forked processes (which run this process's code): all_true is a logical and.
    First a world of one, here: it forms no group."""

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    alone = Ranks()
    alone.join()
    assert alone.all_true(True) is True and alone.all_true(False) is False and not torch.distributed.is_initialized()
    alone.barrier()
    alone.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_two_ranks, args=(port, rank, rank == 0, tmp_path / "marker", queue))
                 for rank in (0, 1)]
    for p in processes:
        p.start()
    try:
        results = sorted(queue.get(timeout=60) for _ in processes)
    finally:
        for p in processes:
            p.join(timeout=5)
            p.kill()
    # all_true is an and; the barrier waits for the late rank; close ends the group
    assert results == [(0, True, False, True, False), (1, True, False, True, False)]


def test_items_are_checked_against_the_checkpoint(tiny_ckpt, monkeypatch, capsys):
    checkpoint = open_checkpoint(tiny_ckpt)
    cpu = torch.device("cpu")
    good, bad = item(1, "good"), item(2, "bad", seconds=0.01)  # shorter than one latent frame
    assert batch.checked_against(checkpoint, cpu, [good], skip_bad=False) == [good]
    refused("1 item(s) this checkpoint cannot run (--skip-bad skips them): line 2 (bad): seconds must be at least "
            "0.04 s", batch.checked_against, checkpoint, cpu, [good, bad], skip_bad=False)  # named by its field
    assert batch.checked_against(checkpoint, cpu, [good, bad], skip_bad=True) == [good]
    assert capsys.readouterr().err.startswith("musicldm: skipped line 2 (bad): seconds must be at least")
    # batch mode does not slice the VAE: the memory check counts every take's decoding at once
    takes = item(3, "takes", takes=8, seconds=1.0)
    frames = 100
    configs = checkpoint.configs
    whole, _ = placement.estimate_memory(*configs, 8, frames, True, False, None, 0)
    sliced, _ = placement.estimate_memory(*configs, 8, frames, True, True, None, 0)
    assert sliced < whole
    monkeypatch.setattr(placement, "available_memory", lambda device: int((sliced + whole) / 2 / 0.9))
    refused("enable_vae_slicing() would make it fit", batch.checked_against, checkpoint, cpu, [takes], False)


def test_generate_gives_each_item_its_own_takes_and_scores():
    calls = []
    items = [item(1, "a", seed=1, takes=2), item(2, "b", seed=2, takes=2), item(3, "c", seed=3, takes=2)]
    audios, scores = batch.generate(FakePipe(calls), items)
    assert [a.shape for a in audios] == [(2, 160)] * 3 and scores == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert [float(a[1, 0]) for a in audios] == pytest.approx([0.011, 0.021, 0.031])  # (seed + 1/10) / 100


def test_generate_items_defaults_on_a_gpu(tmp_path, monkeypatch):
    """What a CUDA device changes: 8 items a call, float16, and the CPU's threads left alone (the pipeline here
    is a stand-in: nothing runs on the device)."""

    items = [item(i, f"i{i}", seed=i) for i in range(1, 10)]
    calls, loaded = [], {}
    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained",
                        staticmethod(lambda folder, **kw: loaded.update(kw) or FakePipe(calls)))
    args = Namespace(threads=None, batch_size=None, dtype=None, compile=False, sample_rate=None)  # an older caller's
    threads = torch.get_num_threads()
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 4 * threads)  # what a CPU run would take
    batch.generate_items(args, items, set(), tmp_path, ranks_of(0, 1, 1), torch.device("cuda"), Path("ckpt"), {})
    assert (loaded["dtype"], loaded["attention_heads"]) == ("float16", "checkpoint")
    assert torch.get_num_threads() == threads
    assert [c[1] for c in calls if c[0] == "generate"] == [8, 1] and calls[0][2] == 0.0  # no eta given: 0


@pytest.mark.parametrize("cpus, local_world, threads", [(8, 3, 2), (None, 1, 1), (2, 4, 1), (16, 1, 16)])
def test_each_rank_takes_its_share_of_the_cpu(tmp_path, monkeypatch, cpus, local_world, threads):
    monkeypatch.setattr(batch.os, "cpu_count", lambda: cpus)
    loaded, _, _ = run_items(tmp_path, monkeypatch, [item()], ranks_of(0, 1, local_world))
    assert loaded["threads"] == threads


class FakeRanks(Ranks):
    """Rank `rank` of a job of `world`, without a process group; all_true answers `others` for the other ranks."""

    def __init__(self, rank: int = 0, world: int = 2, others: bool = True):
        self.rank, self.world, self.local_rank, self.local_world, self.others = rank, world, rank, world, others

    def join(self):
        pass

    def barrier(self):
        pass

    def all_true(self, flag: bool) -> bool:
        return flag and self.others

    def close(self):
        pass


def batch_run(tmp_path, monkeypatch, tiny_ckpt, lines, *flags, ranks=None):
    """`musicldm --prompts FILE --out-dir DIR ...` in this process with FakePipe (the checkpoint's configs are
    read and every item checked against them; no weight loads): (args, the pipeline's calls, the records)."""

    calls = []
    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(lambda folder, **kw: FakePipe(calls)))
    if ranks is not None:
        monkeypatch.setattr(batch, "Ranks", lambda: ranks)
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = cli.parse(["--prompts", str(prompts), "--out-dir", str(tmp_path / "out"), "--weights", str(tiny_ckpt),
                      "--steps", "3", "--threads", str(torch.get_num_threads()), *flags])
    cli.command(args)
    manifest = tmp_path / "out" / "manifest.jsonl"
    return args, calls, [json.loads(x) for x in manifest.read_text().splitlines() if x.startswith("{")] \
        if manifest.exists() else []


def test_a_batch_derives_its_seeds_from_seed(tmp_path, monkeypatch, tiny_ckpt):
    lines = [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b", "seed": 0}]
    args, _, records = batch_run(tmp_path / "7", monkeypatch, tiny_ckpt, lines, "--seed", "7")
    assert [r["seed"] for r in records] == [prompt_file.derived_seed(7, "a"), 0] and args.checked is True
    _, _, records = batch_run(tmp_path / "none", monkeypatch, tiny_ckpt, lines)
    assert [r["seed"] for r in records] == [prompt_file.derived_seed(0, "a"), 0]


def test_a_batch_names_its_bad_lines_and_items(tmp_path, monkeypatch, tiny_ckpt, capsys):
    bad_line, bad_item = {"prompt": "b", "steps": 0}, {"prompt": "c", "seconds": 0.01}
    refused("1 bad line(s) in --prompts (--skip-bad skips them): ", batch_run, tmp_path / "1", monkeypatch, tiny_ckpt,
            [{"prompt": "a"}, bad_line])
    refused("1 bad line(s) in --prompts", batch_run, tmp_path / "2", monkeypatch, tiny_ckpt, [bad_line],
            "--skip-bad")  # nothing good left: skipping would make nothing
    refused("1 item(s) this checkpoint cannot run (--skip-bad skips them): line 2 (00002-c): seconds", batch_run,
            tmp_path / "3", monkeypatch, tiny_ckpt, [{"prompt": "a"}, bad_item])
    _, _, records = batch_run(tmp_path / "4", monkeypatch, tiny_ckpt, [{"prompt": "a"}, bad_line, bad_item],
                              "--skip-bad")
    assert [r["id"] for r in records] == ["00001-a"]
    err = capsys.readouterr().err
    assert "musicldm: skipped " in err and "line 2: steps must be >= 1" in err and "line 3 (00003-c): seconds" in err
    refused(f"{tiny_ckpt}: revision='v1' applies to Hub repo ids, not to local folders", batch_run, tmp_path / "5",
            monkeypatch, tiny_ckpt, [{"prompt": "a"}], "--revision", "v1", error=Exception)
    if not torch.cuda.is_available():
        refused("device: 'cuda' requested but CUDA is not available", batch_run, tmp_path / "6", monkeypatch,
                tiny_ckpt, [{"prompt": "a"}], "--device", "cuda")


def test_a_rerun_with_nothing_to_do_loads_nothing(tmp_path, monkeypatch, tiny_ckpt):
    lines = [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"}]
    _, calls, first = batch_run(tmp_path, monkeypatch, tiny_ckpt, lines)
    assert calls[0][0] == "generate" and len(first) == 2
    generated = []
    monkeypatch.setattr(batch, "generate_items", lambda *a: generated.append(a) or 99)
    _, calls, again = batch_run(tmp_path, monkeypatch, tiny_ckpt, lines)
    assert calls == [] and generated == [] and again == first


def test_rank_zero_locks_cleans_and_merges_for_the_job(tmp_path, monkeypatch, tiny_ckpt, capsys):
    out = tmp_path / "out"
    (out / ".manifest-parts").mkdir(parents=True)
    (out / ".musicldm-stale.tmp").write_bytes(b"half")
    (out / ".manifest-parts" / "rank-00001.jsonl").write_text(json.dumps({"id": "b", "files": []}) + "\n")
    (out / "manifest.jsonl").write_text("not a record\n")
    locks = []
    real = batch.lock_folder
    monkeypatch.setattr(batch, "lock_folder", lambda folder: locks.append(folder) or real(folder))
    lines = [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"}, {"prompt": "c", "id": "c"}]
    _, calls, records = batch_run(tmp_path, monkeypatch, tiny_ckpt, lines, ranks=FakeRanks(0, 2))
    assert locks == [out] and not (out / ".musicldm-stale.tmp").exists() and not (out / ".musicldm.lock").exists()
    assert [r["id"] for r in records] == ["a", "b", "c"]  # its items (a, c) and rank 1's part, merged in order
    assert [c[1] for c in calls if c[0] == "generate"] == [2]
    err = capsys.readouterr().err
    assert "manifest.jsonl line 1: not JSON" in err and "musicldm: rank 0/2: a, c: denoising" in err


def test_other_ranks_neither_lock_nor_merge(tmp_path, monkeypatch, tiny_ckpt, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".musicldm-other.tmp").write_bytes(b"rank 0's to remove")
    (out / "manifest.jsonl").write_text("not a record\n")
    monkeypatch.setattr(batch, "lock_folder", lambda folder: pytest.fail("rank 1 took the lock"))
    lines = [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"}, {"prompt": "c", "id": "c"}]
    args, calls, records = batch_run(tmp_path, monkeypatch, tiny_ckpt, lines, ranks=FakeRanks(1, 2))
    assert (out / ".musicldm-other.tmp").exists() and records == []
    assert (out / "manifest.jsonl").read_text() == "not a record\n"  # rank 0 merges, rank 1 does not
    part = [json.loads(x) for x in (out / ".manifest-parts" / "rank-00001.jsonl").read_text().splitlines()]
    assert [r["id"] for r in part] == ["b"] and args.checked is True
    err = capsys.readouterr().err
    assert "not JSON" not in err and "musicldm: rank 1/2: b: denoising" in err


def test_when_rank_zero_cannot_lock_every_rank_stops(tmp_path, monkeypatch, tiny_ckpt):
    lines = [{"prompt": "a"}]
    (tmp_path / "out").mkdir()
    with batch.lock_folder(tmp_path / "out"):  # another job holds the folder
        refused("is in use by another batch run", batch_run, tmp_path, monkeypatch, tiny_ckpt, lines,
                ranks=FakeRanks(0, 2, others=False))
        with pytest.raises(SameOnEveryRank, match="^rank 0 could not lock --out-dir$"):
            batch_run(tmp_path, monkeypatch, tiny_ckpt, lines, ranks=FakeRanks(1, 2, others=False))


def test_each_item_is_timed_as_its_share_of_its_batch(tmp_path, monkeypatch):
    clock = iter([100.0, 108.0, 200.0, 203.0])  # batch of 4 items: 8 s; batch of 1: 3 s
    monkeypatch.setattr(batch, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    items = [item(i, f"i{i}", seed=i) for i in range(1, 6)]
    _, _, records = run_items(tmp_path, monkeypatch, items, ranks_of(0, 1, 1))
    assert [r["time"] for r in records] == [2.0, 2.0, 2.0, 2.0, 3.0]


def test_each_files_line_is_flushed_as_it_is_written(tmp_path, monkeypatch):
    """A reader of a pipe (a log, a job runner) sees each file as it lands, not when the run ends."""

    class Stdout(io.StringIO):
        def flush(self):
            self.flushed.append(self.getvalue().count("\n"))

    out = Stdout()
    out.flushed = []
    monkeypatch.setattr(sys, "stdout", out)
    run_items(tmp_path, monkeypatch, [item(1, "a", seed=1), item(2, "b", seed=2, steps=4)], ranks_of(0, 1, 1))
    assert out.flushed[-2:] == [1, 2]  # after each line


def test_a_file_that_cannot_be_written_names_the_out_dir(tmp_path, monkeypatch):
    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "temp_file", full)
    refused(f"--out-dir: cannot write {str(tmp_path / 'a.wav')!r} (the disk holding", run_items, tmp_path,
            monkeypatch, [item()], ranks_of(0, 1, 1))


def test_the_job_waits_at_its_barriers_for_hours(monkeypatch):
    """Ranks that finish first wait at the final barrier for the others: torch's default of 30 minutes would end a
    long job. The group is gloo (the flags exchanged are CPU tensors, whatever the device)."""

    formed = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: formed.append((a, k)))
    ranks = ranks_of(1, 2, 2)
    ranks.join()
    assert formed == [(("gloo",), {"timeout": datetime.timedelta(hours=72)})]
