"""weights_convert.original: the authors' checkpoints read without running pickle, written as a folder the
API and the command line load; the refusals, each one line. Parity with the authors' code:
tests/parity/test_authors.py."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
import soundfile as sf
import torch

from musicldm_core import MusicLDMPipeline, presets
from musicldm_core.app import cli
from weights_convert import original, reader


def _state(authors_release) -> dict:
    obj, _ = reader.read_checkpoint(authors_release.paths["main"])
    return dict(obj["state_dict"])


def _convert(path, out, tiny_ckpt, **kw):
    return original.convert(path, out, tokenizer_from=str(tiny_ckpt), log=lambda *a: None, **kw)


def _error(path, out, tiny_ckpt, **kw) -> str:
    with pytest.raises(original.ConversionError) as e:
        _convert(path, out, tiny_ckpt, **kw)
    message = str(e.value)
    assert "\n" not in message, message
    assert not out.exists(), "a failed conversion left its folder"
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir()), "a temporary folder was left"
    return message


# --- the folder ----------------------------------------------------------------------------------------

def test_the_folder_carries_the_authors_model(authors_release):
    folder, r = authors_release.ema, authors_release
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["attention_head_dim"] == [1, 2, 3, 5]  # widths 32, 64, 96, 160 at 32 channels a head
    assert unet["sample_size"] == 256 and unet["class_embeddings_concat"] is True
    text = json.loads((folder / "text_encoder" / "config.json").read_text())["text_config"]
    assert text["layer_norm_eps"] == 1e-5
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == float(r.model.scale_factor)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["num_train_timesteps"]) == (0.0015, 0.0195, 1000)
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["set_alpha_to_one"] is False
    assert r.report["ema"] is True and r.report["unet_heads"] == [1, 2, 3, 5]


def test_the_report_lists_what_the_model_does_not_use(authors_release):
    unused, skipped = authors_release.report["unused_keys"], authors_release.report["skipped_objects"]
    for key in ("model_ema.decay", "model_ema.num_updates", "first_stage_model.loss.logvar", "betas", "logvar",
                "cond_stage_model.model.text_transform.sequential.0.weight",
                "cond_stage_model.model.audio_branch.spectrogram_extractor.stft.conv_real.weight"):
        assert key in unused, key
    assert not any(k.startswith("model_ema.diffusion_model") for k in unused), "EMA twins are the UNet, not junk"
    assert "pytorch_lightning.utilities.parsing.AttributeDict" in skipped
    assert any(name.startswith("numpy") for name in skipped)
    assert json.loads((authors_release.ema / "conversion.json").read_text())["unused_keys"] == unused


def test_the_folder_holds_no_pickle(authors_release):
    for path in authors_release.ema.rglob("*"):
        if path.is_dir():
            continue
        assert path.suffix in (".json", ".safetensors", ".txt"), path
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle or a torch.save archive"


def test_the_api_and_the_command_line_load_it(authors_release, tmp_path):
    pipe = MusicLDMPipeline.from_pretrained(authors_release.ema)
    audio = pipe("soft strings", num_inference_steps=3, audio_length_in_s=0.32,
                 generator=torch.Generator().manual_seed(0)).audios
    assert audio.shape == (1, 5120) and abs(audio).max() > 0
    out = tmp_path / "x.wav"
    assert cli.main(["soft strings", "--weights", str(authors_release.ema), "--steps", "3", "--seconds", "0.32",
                     "--seed", "0", "-o", str(out), "--device", "cpu"]) == 0
    data, rate = sf.read(out)
    assert rate == 16000 and data.shape == (5120,)


def test_the_separate_files_alone_also_convert(authors_release, tiny_ckpt, tmp_path):
    """A main checkpoint with its first stage and CLAP taken out: the separate files fill them."""
    state = {k: v for k, v in _state(authors_release).items() if k.startswith(("model.", "model_ema.", "scale_factor"))}
    path = tmp_path / "unet-only.ckpt"
    torch.save({"state_dict": state}, path)
    p = authors_release.paths
    _convert(path, tmp_path / "out", tiny_ckpt, vae=p["vae"], vocoder=p["vocoder"], clap=p["clap"])
    assert (tmp_path / "out" / "vocoder" / "model.safetensors").is_file()
    message = _error(path, tmp_path / "none", tiny_ckpt)
    assert "holds no vae weights (first_stage_model.*)" in message, message


# --- EMA ------------------------------------------------------------------------------------------------

def test_ema_by_default_and_only_when_there(authors_release, tiny_ckpt, tmp_path):
    state = {k: v for k, v in _state(authors_release).items() if not k.startswith("model_ema.")}
    path = tmp_path / "no-twins.ckpt"
    torch.save({"state_dict": state}, path)
    assert _convert(path, tmp_path / "default", tiny_ckpt)["ema"] is False  # none there: the trained weights
    message = _error(path, tmp_path / "asked", tiny_ckpt, ema=True)
    assert "--ema asks for the EMA weights, but 'model_ema.diffusion_modeltime_embed0weight' (the EMA twin of " \
           "'model.diffusion_model.time_embed.0.weight') is missing; use --no-ema" in message, message


# --- reading safely ----------------------------------------------------------------------------------------

class _RunsCode:
    """Pickles as a call that would create a file: what a malicious checkpoint does."""

    def __init__(self, how, marker):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("how, callable_name", [("system", "posix.system"), ("exec", "builtins.exec")])
def test_a_pickle_that_runs_code_is_refused(authors_release, tiny_ckpt, tmp_path, how, callable_name):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _state(authors_release), "hyper_parameters": _RunsCode(how, marker)}, path)
    message = _error(path, tmp_path / "out", tiny_ckpt)
    assert f"refused: its pickle calls {callable_name}, which is not data" in message, message
    assert not marker.exists(), "the checkpoint's code ran"
    assert original.main([str(path), str(tmp_path / "out2"), "--tokenizer-from", str(tiny_ckpt)]) == 1
    assert not marker.exists()


def test_restricted_reading_rebuilds_tensors_exactly(authors_release):
    """The restricted unpickler gives back every tensor that was saved, dtype and values."""
    state = _state(authors_release)
    trusted = authors_release.model.state_dict()  # what save_release wrote
    assert state.keys() == trusted.keys()
    for key, value in trusted.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_restricted_reading_keeps_views_of_one_storage(tmp_path):
    """Tensors saved as views of one storage (offsets, strides, a transpose) come back as they were; a
    numpy value forces the restricted reader (weights_only refuses it)."""
    import numpy as np

    base = torch.arange(24, dtype=torch.float64)
    saved = {"head": base[:5], "tail": base[7:], "grid": base[4:16].view(3, 4).t(), "half": base.half()[::3],
             "step": np.float64(1.5)}
    torch.save({"state_dict": saved}, tmp_path / "views.ckpt")
    obj, skipped = reader.read_checkpoint(tmp_path / "views.ckpt")
    assert any(name.startswith("numpy") for name in skipped)
    for key in ("head", "tail", "grid", "half"):
        got = obj["state_dict"][key]
        assert got.dtype == saved[key].dtype and got.shape == saved[key].shape and torch.equal(got, saved[key]), key


def test_a_file_that_is_not_a_checkpoint(tiny_ckpt, tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    assert "notes.ckpt: a text file, not a checkpoint" in _error(path, tmp_path / "out", tiny_ckpt)
    archive = tmp_path / "other.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x/readme.txt", "no pickle here")
    assert "not a PyTorch checkpoint" in _error(archive, tmp_path / "out", tiny_ckpt)
    assert "no such file" in _error(tmp_path / "absent.ckpt", tmp_path / "out", tiny_ckpt)


# --- missing, misshapen, refused ---------------------------------------------------------------------------

@pytest.mark.parametrize("key, change, expected", [
    ("model_ema.diffusion_modelinput_blocks10emb_layers1weight", "drop",
     "the EMA weights are incomplete: 'model_ema.diffusion_modelinput_blocks10emb_layers1weight' (the EMA twin of "
     "'model.diffusion_model.input_blocks.1.0.emb_layers.1.weight') is missing"),
    ("model.diffusion_model.input_blocks.1.0.emb_layers.1.weight", "drop",
     "missing key 'model.diffusion_model.input_blocks.1.0.emb_layers.1.weight'"),
    ("model_ema.diffusion_modelinput_blocks10in_layers2weight", "shape",
     "key 'model.diffusion_model.input_blocks.1.0.in_layers.2.weight' has shape [32, 32, 3, 1]"),
    ("first_stage_model.decoder.up.1.block.0.conv1.weight", "shape",
     "key 'first_stage_model.decoder.up.1.block.0.conv1.weight' has shape"),
    ("first_stage_model.vocoder.resblocks.4.convs2.1.bias", "drop",
     "missing key 'first_stage_model.vocoder.resblocks.4.convs2.1.bias'"),
    ("scale_factor", "drop", "missing key 'scale_factor' (the learned latent scale)"),
    ("betas", "skew", "the 'betas' buffer is not a scaled-linear schedule"),
])
def test_missing_or_misshapen_keys_are_named(authors_release, tiny_ckpt, tmp_path, key, change, expected):
    state = _state(authors_release)
    if change == "drop":
        del state[key]
    elif change == "shape":
        state[key] = state[key][..., :1].clone()
    else:
        state[key] = state[key] * torch.linspace(1, 1.1, len(state[key]))
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, path)
    message = _error(path, tmp_path / "out", tiny_ckpt)
    assert expected in message, message


def test_refusals_before_anything_is_written(authors_release, tiny_ckpt, tmp_path):
    main = authors_release.paths["main"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(original.ConversionError, match="full: exists and is not an empty folder"):
        _convert(main, tmp_path / "full", tiny_ckpt)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    # 160 (the deepest width) is no multiple of 64
    assert "is not a multiple of --head-channels 64" in _error(main, tmp_path / "out", tiny_ckpt, head_channels=64)
    with pytest.raises(original.ConversionError, match="no tokenizer/ folder"):
        original.convert(main, tmp_path / "out", tokenizer_from=str(tmp_path), log=lambda *a: None)


def test_head_channels_sets_the_heads(authors_release, tiny_ckpt, tmp_path):
    report = _convert(authors_release.paths["main"], tmp_path / "out", tiny_ckpt, head_channels=16)
    assert report["unet_heads"] == [2, 4, 6, 10]


def test_the_command_prints_what_it_did(authors_release, tiny_ckpt, tmp_path, capsys):
    assert original.main([str(authors_release.paths["main"]), str(tmp_path / "out"), "--no-ema",
                          "--tokenizer-from", str(tiny_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "trained (non-EMA) weights, heads [1, 2, 3, 5]" in out
    assert "not used by the model" in out and "first_stage_model.loss.* (3)" in out
    assert "pytorch_lightning.utilities.parsing.AttributeDict (1)" in out


# --- the published checkpoint with the authors' heads; presets ---------------------------------------------

def test_authors_heads_on_a_folder_that_has_them_change_nothing(authors_release):
    with pytest.warns(UserWarning, match="already has the authors' attention heads"):
        pipe = MusicLDMPipeline.from_pretrained(authors_release.ema, attention_heads="authors")
    assert pipe.unet.config.attention_head_dim == (1, 2, 3, 5)


def test_attention_heads_is_checked(tiny_ckpt):
    with pytest.raises(ValueError, match="attention_heads must be one of 'checkpoint', 'authors', got 'paper'"):
        MusicLDMPipeline.from_pretrained(tiny_ckpt, attention_heads="paper")
    # the tiny UNet's widths (32, 64, 64, 96) split into 32-channel heads; a width of 48 would not
    from musicldm_core.unet_config import UNetConfig
    from musicldm_core.errors import CheckpointError

    cfg = UNetConfig.from_json(tiny_ckpt / "unet" / "config.json")
    assert cfg.with_head_channels(32).attention_head_dim == (1, 2, 2, 3)
    with pytest.raises(CheckpointError, match=r"block_out_channels\[0\]=32 is not a multiple of 64"):
        cfg.with_head_channels(64)


def test_preset_authors_on_the_command_line():
    args = cli.parse(["rain", "--preset", "authors"])
    assert (args.sampler, args.steps, args.guidance, args.eta, args.takes, args.take) == ("ddim", 200, 2.0, 1.0, 5, 1)
    mine = cli.parse(["rain", "--preset", "authors", "--steps", "20", "--eta", "0.5"])  # flags given win
    assert (mine.steps, mine.eta, mine.guidance) == (20, 0.5, 2.0)
    batch = cli.parse(["--prompts", "p.txt", "--out-dir", "o", "--preset", "authors"])
    assert batch.takes == 5 and batch.take is None  # batch mode writes every take, best first
    assert presets.pipeline_kwargs("authors") == {"sampler": "ddim", "num_inference_steps": 200, "guidance_scale": 2.0,
                                                  "eta": 1.0, "num_waveforms_per_prompt": 5}
    with pytest.raises(ValueError, match="preset must be one of authors, got 'paper'"):
        presets.pipeline_kwargs("paper")


def test_preset_authors_runs_and_keeps_the_best_take(authors_release, tmp_path, capsys):
    out = tmp_path / "best.wav"
    assert cli.main(["warm piano", "--weights", str(authors_release.ema), "--preset", "authors", "--steps", "3",
                     "--seconds", "0.32", "--seed", "1", "-o", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.wav"]
    with sf.SoundFile(out) as f:
        assert "--eta 1.0 --takes 5 --take 1" in f.comment and "--sampler ddim" in f.comment


@pytest.mark.parametrize("eta", ["-0.1", "1.5", "nan"])
def test_eta_out_of_range_is_one_line(eta, capsys):
    assert cli.main(["rain", "--eta", eta, "--weights", "/nonexistent"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"musicldm: error: --eta must be between 0 and 1, got {float(eta)}", err
