"""What stays exact now that the entry points run the UNet batched (as `pipe()` does), and what
`--exact-batches` (pipe.enable_batch_invariance) adds. The table of exact properties in docs/exactness.md names
each one's condition; the tests here hold those conditions:

* with invariance off, no UNet layer is split by rows (the published widths, on the meta device);
* a single command-line run is the `pipe()` call with the same arguments, bit for bit, with the flag
  or without it (then against a pipeline with invariance on);
* a rerun of the same command, batch or not, equals the first run, bit for bit;
* a resumed batch runs every item that was not in flight in the batch it had in the uninterrupted run:
  only the items in flight may differ, and those by the batch-composition error.
"""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from helpers import musicldm
from musicldm_core.app import batch
from musicldm_core.unet_config import UNetConfig
from musicldm_core.pipeline import MusicLDMPipeline
from musicldm_core.unet import UNet

from test_batch import FakePipe, item, ranks_of

BASE = ["--steps", "3", "--seconds", "0.5", "--threads", "1"]


def rows_seen(pipe: MusicLDMPipeline, batch_size: int) -> set:
    """The batch sizes that the UNet's convolutions and linear layers compute with, over one forward pass."""
    seen, conv2d, linear = set(), F.conv2d, F.linear

    def spy(fn):
        return lambda x, *a, **k: seen.add(x.shape[0]) or fn(x, *a, **k)

    z = torch.zeros(batch_size, pipe.unet.config.in_channels, 64, 16, device="meta")
    c = torch.zeros(batch_size, pipe.unet.config.projection_class_embeddings_input_dim, device="meta")
    F.conv2d, F.linear = spy(conv2d), spy(linear)
    try:
        pipe.unet(z, torch.full((batch_size,), 500, device="meta"), c)
    finally:
        F.conv2d, F.linear = conv2d, linear
    return seen


def test_without_invariance_no_unet_layer_is_split_by_rows(full_ckpt):
    """The published UNet on the meta device: a batch of 8 rows reaches every convolution and linear layer
    whole; with invariance on, the same pass runs them one row at a time (so the spy can see a split)."""
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_json(full_ckpt / "unet" / "config.json"))
    pipe = MusicLDMPipeline(None, None, unet, None, None, None, None)
    assert pipe.batch_invariant is False and rows_seen(pipe, 8) == {8}
    pipe.enable_batch_invariance()
    assert rows_seen(pipe, 8) == {1}
    pipe.enable_batch_invariance(False)
    assert pipe.batch_invariant is False and rows_seen(pipe, 8) == {8}


@pytest.mark.parametrize("exact", [False, True])
def test_a_command_line_run_is_the_pipe_call(tiny_ckpt, tmp_path, exact):
    """`musicldm PROMPT ...` against `pipe(PROMPT, ...)` with the same arguments (and the same kernels:
    invariance on exactly when --exact-batches is given), two takes at two threads, bit for bit."""
    flags = ["--exact-batches"] * exact
    r = musicldm("jazz", "-o", tmp_path / "j.wav", "--weights", tiny_ckpt, "--steps", 3, "--seconds", 0.5,
                 "--takes", 2, "--seed", 11, "--threads", 2, *flags)
    assert r.returncode == 0, r.stderr
    torch.set_num_threads(2)
    pipe = MusicLDMPipeline.from_pretrained(tiny_ckpt)
    pipe.enable_batch_invariance(exact)
    expected = pipe("jazz", num_inference_steps=3, audio_length_in_s=0.5, num_waveforms_per_prompt=2, crop="start",
                    generator=torch.Generator().manual_seed(11)).audios
    for k in (1, 2):
        written, _ = sf.read(tmp_path / f"j-{k}.wav", dtype="float32")
        assert np.array_equal(written, expected[k - 1]), k
    tag = sf.SoundFile(tmp_path / "j-1.wav").comment
    assert ("--exact-batches" in tag) == exact


def batch_run(prompts: Path, out: Path, tiny_ckpt, *flags):
    r = musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt, *BASE, *flags)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {rec["id"]: rec for rec in records}, r


def audio_of(out: Path, record: dict) -> list:
    return [sf.read(out / name, dtype="float32")[0] for name in record["files"]]


PROMPTS = [{"prompt": p, "id": f"i{i}"} for i, p in enumerate(
    ["techno", "jazz trio", "calm piano", "drums", "a choir", "slow strings"])]


def test_a_rerun_equals_the_first_run(tiny_ckpt, tmp_path):
    """The same batch command into a fresh folder, and the same single command again: the same bits."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    first, _ = batch_run(prompts, tmp_path / "one", tiny_ckpt, "--batch-size", 4)
    again, _ = batch_run(prompts, tmp_path / "two", tiny_ckpt, "--batch-size", 4)
    assert [rec["exact_batches"] for rec in first.values()] == [False] * len(PROMPTS)
    for item_id in first:
        for a, b in zip(audio_of(tmp_path / "one", first[item_id]), audio_of(tmp_path / "two", again[item_id])):
            assert np.array_equal(a, b), item_id
    for name in ("a.wav", "b.wav"):
        assert musicldm("drums", "-o", tmp_path / name, "--weights", tiny_ckpt, *BASE, "--seed", 3).returncode == 0
    assert np.array_equal(sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0])


def test_a_resumed_batch_runs_each_item_in_the_batch_it_had(tmp_path, monkeypatch):
    """Batches are cut from all of a rank's items before the done ones are left out: killed after i1 and i2
    of the batch (i1 i2 i3 i4), the rerun makes i3 and i4 alone (they were in flight) and then (i5 i6), as
    the uninterrupted run did, not (i3 i4 i5 i6), which would move every later item into another batch."""
    calls = []
    monkeypatch.setattr(MusicLDMPipeline, "from_pretrained", staticmethod(lambda folder, **kw: FakePipe(calls)))
    items = [item(i, f"i{i}", seed=i) for i in range(1, 7)]
    args = Namespace(threads=1, batch_size=4, dtype=None, compile=False, sample_rate=None, eta=0.0)
    batch.generate_items(args, items, {"i1", "i2"}, tmp_path, ranks_of(0, 1, 1), torch.device("cpu"), Path("c"), {})
    assert [c[1] for c in calls] == [2, 2]
    records = [json.loads(line)["id"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert records == ["i3", "i4", "i5", "i6"]
    calls.clear()
    exact = [item(i, f"x{i}", seed=i, exact_batches=i > 2) for i in range(1, 5)]  # the flag follows each batch
    batch.generate_items(args, exact, set(), tmp_path, ranks_of(0, 1, 1), torch.device("cpu"), Path("c"), {})
    assert calls == [("generate", 2, 0.0, True), ("generate", 2, 0.0, True, "exact")]


def test_a_resumed_batch_differs_only_in_the_items_in_flight(tiny_ckpt, tmp_path):
    """The real thing on the tiny checkpoint: an uninterrupted run of 6 items at batch size 4, and a run
    resumed after a kill that left i0 and i1 written (i2 and i3 in flight). i0, i1 are kept, i4 and i5
    are bit-equal to the uninterrupted run, and i2, i3 within the batch-composition error."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    whole, _ = batch_run(prompts, tmp_path / "whole", tiny_ckpt, "--batch-size", 4)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    lines = (tmp_path / "whole" / "manifest.jsonl").read_text().splitlines()
    (resumed / "manifest.jsonl").write_text("".join(line + "\n" for line in lines[:2]))
    for rec in list(whole.values())[:2]:
        for name in rec["files"]:
            shutil.copy(tmp_path / "whole" / name, resumed / name)
    got, r = batch_run(prompts, resumed, tiny_ckpt, "--batch-size", 4)
    assert "2 of 6 items already done" in r.stderr
    for item_id, rec in whole.items():
        for a, b in zip(audio_of(tmp_path / "whole", rec), audio_of(resumed, got[item_id])):
            if item_id in ("i2", "i3"):  # in flight: made in a batch of two instead of four
                assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), item_id
            else:
                assert np.array_equal(a, b), item_id
