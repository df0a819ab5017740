"""Audio prompts, blends and schedules on the command line and in batch mode (the page's: test_serve_browser.py):
each equals pipe() with the same arguments, bit for bit; its file's tag and --from remake it bit for bit, and a
changed audio prompt is refused by --from and makes a batch item again; mistakes are one line, by flag or field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import musicldm
from musicldm_core.app.files import read_tag
from musicldm_core.pipeline import MusicLDMPipeline

ARGS = ["--steps", "3", "--seconds", "2", "--seed", "5"]


def write_clip(path, hz=220.0, rate=44100, seconds=1.5):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return MusicLDMPipeline.from_pretrained(tiny_ckpt)


def made(tmp_path, tiny_ckpt, *args, name="out.wav"):
    result = musicldm("--weights", tiny_ckpt, *ARGS, *args, "-o", tmp_path / name, "--threads", "2")  # args win
    assert result.returncode == 0, result.stderr
    return sf.read(tmp_path / name, dtype="float32")[0]


@pytest.mark.parametrize("flags,kwargs", [
    (["--like", "{clip}"], dict(audio_prompt="{clip}")),
    (["warm jazz piano", "--like", "{clip}", "--like-weight", "0.4"],
     dict(prompt="warm jazz piano", audio_prompt="{clip}", audio_prompt_weight=0.4)),
    (["--blend", "warm jazz piano:0.7", "--blend", "rainy night:0.3", "--blend-mode", "slerp"],
     dict(prompt=["warm jazz piano", "rainy night"], prompt_weights=[0.7, 0.3], blend="slerp")),
    (["--seconds", "4", "--at", "0", "ambient pad", "--at", "1.5", "deep house | like:{clip}:0.5", "--travel", "1"],
     dict(audio_length_in_s=4.0, schedule=[(0.0, "ambient pad"), (1.5, {"prompt": ["deep house"],
          "prompt_weights": [1.0], "audio_prompt": "{clip}", "audio_prompt_weight": 0.5})], travel=1.0)),
])
def test_the_command_equals_pipe_and_its_tag_remakes_it(flags, kwargs, tiny_ckpt, pipe, tmp_path):
    clip = str(write_clip(tmp_path / "ref.wav"))
    fill = lambda v: v.replace("{clip}", clip) if isinstance(v, str) else v  # noqa: E731
    flags = [fill(f) for f in flags]
    kwargs = json.loads(json.dumps(kwargs).replace("{clip}", clip))
    kwargs["schedule"] = [tuple(e) for e in kwargs.get("schedule", [])] or None
    audio = made(tmp_path, tiny_ckpt, *flags)
    torch.set_num_threads(2)
    ref = pipe(**{"audio_length_in_s": 2.0, **kwargs}, num_inference_steps=3, window="auto",  # the command's window
               generator=torch.Generator().manual_seed(5)).audios[0]
    assert np.array_equal(audio, ref)
    tag = read_tag(tmp_path / "out.wav")
    assert f"{clip}=" in tag if "like" in " ".join(flags) else "--sha256" not in tag
    result = musicldm("--from", tmp_path / "out.wav", "-o", tmp_path / "again.wav")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "again.wav").read_bytes() == (tmp_path / "out.wav").read_bytes()


def test_from_refuses_a_changed_audio_prompt(tiny_ckpt, tmp_path):
    clip = write_clip(tmp_path / "ref.wav")
    made(tmp_path, tiny_ckpt, "--like", clip)
    write_clip(clip, hz=230.0)
    result = musicldm("--from", tmp_path / "out.wav", "-o", tmp_path / "again.wav")
    assert result.returncode == 1 and not (tmp_path / "again.wav").exists()
    assert f"the audio prompt {str(clip)!r} has changed since the take was made" in result.stderr
    clip.unlink()
    assert "is missing" in musicldm("--from", tmp_path / "out.wav", "-o", tmp_path / "again.wav").stderr


@pytest.mark.parametrize("args,says", [
    (["--at", "0", "a", "--at", "0", "b"], "--at[1] at 0 s repeats the entry before it"),
    (["--at", "0", "a", "--at", "9", "b"], "--at[1] at 9 s is past the piece's end (2 s)"),
    (["--at", "x", "a"], "--at: SECONDS must be a number, got 'x'"),
    (["--blend", "a:0", "--blend", "b:0"], "the blend's weights are all 0"),
    (["--blend", "a:1", "--blend", "b:1", "--blend", "c:1", "--blend-mode", "slerp"],
     "--blend-mode='slerp' interpolates between two parts; this blend has 3"),
    (["--like", "missing.wav"], "--like: no such file 'missing.wav'"),
    (["x", "--travel", "2"], "--travel applies to a schedule; give --at too"),
    (["--at", "0", "a", "--like", "{clip}"], "give either --at or --like"),
    ([], "give a PROMPT (or --like, --blend, --at)"),
])
def test_mistakes_are_one_line_by_flag(args, says, tiny_ckpt, tmp_path):
    clip = str(write_clip(tmp_path / "ref.wav"))
    result = musicldm(*[a.replace("{clip}", clip) for a in args], "--weights", tiny_ckpt, *ARGS,
                      "-o", tmp_path / "x.wav")
    assert result.returncode != 0 and not (tmp_path / "x.wav").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_a_batch_line_takes_like_blend_and_schedule(tiny_ckpt, pipe, tmp_path):
    """like paths relative to the prompt file; each conditioned item runs alone and equals its single run; a
    changed audio prompt makes its items again and leaves the others as they are."""
    folder = tmp_path / "lines"
    folder.mkdir()
    write_clip(folder / "ref.wav")
    lines = [{"id": "like", "prompt": "warm jazz piano", "like": "ref.wav", "like_weight": 0.5},
             {"id": "blend", "blend": ["warm jazz piano:0.7", "rainy night:0.3"]},
             {"id": "travel", "seconds": 4, "schedule": [[0, "ambient pad"], [1.5, "deep house | like:ref.wav"]]},
             {"id": "plain", "prompt": "plain piano"}]
    prompts = folder / "p.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    run = lambda: musicldm("--prompts", prompts, "--out-dir", out, "--weights", tiny_ckpt,  # noqa: E731
                           "--steps", "3", "--seconds", "2", "--threads", "2")
    result = run()
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    clip = str((folder / "ref.wav").resolve())
    assert records["like"]["like"] == clip and list(records["like"]["asked"]["audio_sha256"]) == [clip]
    assert "audio_sha256" not in records["plain"]["asked"] and "like" not in records["plain"]["asked"]
    torch.set_num_threads(2)
    single = pipe("warm jazz piano", audio_prompt=clip, audio_prompt_weight=0.5, audio_length_in_s=2.0,
                  num_inference_steps=3, window="auto",
                  generator=torch.Generator().manual_seed(records["like"]["seed"])).audios[0]
    assert np.array_equal(sf.read(out / "like.wav", dtype="float32")[0], single)
    assert "--at 1.5 'deep house | like:" + clip in read_tag(out / "travel.wav")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    write_clip(folder / "ref.wav", hz=240.0)
    result = run()
    assert result.returncode == 0, result.stderr
    assert "2 of 4 items already done" in result.stderr
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    assert [n for n in sorted(after) if after[n] != before[n]] == ["like.wav", "travel.wav"]


def test_a_bad_batch_line_is_named_by_line_and_field(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"schedule": [[0, "a"], [0, "b"]]}) + "\n"
                       + json.dumps({"blend": "a:1"}) + "\n" + json.dumps({"schedule": [5]}) + "\n")
    result = musicldm("--prompts", prompts, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, "--skip-bad")
    assert "line 1: schedule[1] at 0 s repeats the entry before it" in result.stderr
    assert "line 2: blend must be a list, got 'a:1'" in result.stderr
    assert "line 3: schedule[0] must be a pair [seconds, entry], got 5" in result.stderr


def test_a_long_clips_crop_is_stated(tiny_ckpt, tmp_path):
    """A clip longer than CLAP's 10 s: the command line says where its centred 10 s starts, a batch record keeps it."""
    clip = write_clip(tmp_path / "long.wav", rate=16000, seconds=12.0)
    result = musicldm("--like", clip, "--weights", tiny_ckpt, *ARGS, "-o", tmp_path / "x.wav")
    assert result.returncode == 0 and f"{clip} is longer than 10 s: its centred 10 s, from 1.000 s" in result.stderr
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "like": "long.wav"}) + "\n")
    result = musicldm("--prompts", prompts, "--out-dir", tmp_path / "out", "--weights", tiny_ckpt, *ARGS)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert record["audio_prompt_crops"] == {str(clip): 1.0}


@pytest.mark.parametrize("data,field,says", [
    ({"like": "/etc/passwd"}, "like", "like: send the clip as the form's file part 'like' (the page reads no paths)"),
    ({"schedule": [[0, "a"], [1, "b | like:/etc/passwd"]]}, "schedule",
     "schedule: the page's entries are texts and blends of texts"),
])
def test_the_page_reads_no_path_a_client_names(pipe, tmp_path, data, field, says):
    from musicldm_core.app import jobs

    service = jobs.Service(pipe, tmp_path, "w")
    with pytest.raises(jobs.Refused) as refused:
        service.submit({"steps": 3, **data})
    assert refused.value.status == 400 and refused.value.field == field and str(refused.value).startswith(says)
