"""The strict safetensors loader, the configs and checkpoint resolution: every error names the problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicldm_core.config import VAEConfig
from musicldm_core.unet_config import UNetConfig
from reference_checkpoints import SCALING_FACTOR
from musicldm_core.errors import CheckpointError
from musicldm_core.hub import resolve
from musicldm_core.unet import UNet
from musicldm_core.names import diffusers
from musicldm_core.weights import weight_files

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def unet_dir(tiny_ckpt, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(tiny_ckpt / "unet", folder)
    return folder


def _rewrite(folder, edit):
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, folder / WEIGHTS)


def test_loads_and_matches_the_file(unet_dir):
    model = UNet.from_pretrained(unet_dir)
    state = load_file(unet_dir / WEIGHTS)
    ours = {diffusers.ours_to_published(k): v for k, v in model.state_dict().items()}
    assert set(ours) == set(state)
    for k, v in ours.items():
        assert torch.equal(v, state[k]), k
    assert not any(p.requires_grad for p in model.parameters())


def test_loads_straight_into_dtype(unet_dir):
    model = UNet.from_pretrained(unet_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_sharded_checkpoint(unet_dir):
    state = load_file(unet_dir / WEIGHTS)
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, unet_dir / name)
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (unet_dir / f"{WEIGHTS}.index.json").write_text(json.dumps(index))
    (unet_dir / WEIGHTS).unlink()
    assert len(weight_files(unet_dir, "diffusion_pytorch_model")) == 2
    model = UNet.from_pretrained(unet_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[diffusers.ours_to_published(k)]), k


def test_sharded_index_with_missing_shard(unet_dir):
    (unet_dir / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    (unet_dir / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"shard file\(s\) not found: gone.safetensors"):
        UNet.from_pretrained(unet_dir)


def test_truncated_file(unet_dir):
    path = unet_dir / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as e:
        UNet.from_pretrained(unet_dir)
    assert str(path) in str(e.value)


def test_corrupted_header(unet_dir):
    path = unet_dir / WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as e:
        UNet.from_pretrained(unet_dir)
    assert str(path) in str(e.value)


def test_missing_file_and_no_pickle(unet_dir):
    (unet_dir / WEIGHTS).rename(unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"file not found.*only safetensors is loaded, never pickle"):
        UNet.from_pretrained(unet_dir)


def test_missing_key(unet_dir):
    _rewrite(unet_dir, lambda s: s.pop("conv_in.bias"))
    with pytest.raises(CheckpointError, match=r"(?s)1 missing.*missing key 'conv_in.bias' \[32\]"):
        UNet.from_pretrained(unet_dir)


def test_unexpected_key(unet_dir):
    _rewrite(unet_dir, lambda s: s.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra.weight' \[3\] in .*safetensors"):
        UNet.from_pretrained(unet_dir)


def test_wrong_shape(unet_dir):
    _rewrite(unet_dir, lambda s: s.update({"conv_in.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"wrong shape for 'conv_in.bias': expected \[32\], found \[7\]"):
        UNet.from_pretrained(unet_dir)


def test_all_problems_in_one_error(unet_dir):
    def edit(s):
        s.pop("conv_out.weight")
        s["bogus"] = torch.zeros(1)
        s["conv_in.bias"] = torch.zeros(5)

    _rewrite(unet_dir, edit)
    with pytest.raises(CheckpointError) as e:
        UNet.from_pretrained(unet_dir)
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 1 of the wrong shape" in msg
    assert "'conv_out.weight'" in msg and "'bogus'" in msg and "'conv_in.bias'" in msg


def test_config_missing_key_means_the_reference_default(unet_dir):
    """A key missing from config.json means what it means to diffusers: its constructor default."""
    cfg = json.loads((unet_dir / "config.json").read_text())
    del cfg["block_out_channels"]  # diffusers' default (320, 640, 1280, 1280) then fails the other keys
    (unet_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: cross_attention_dim\[1\]=64 must equal "
                                              r"block_out_channels\[1\]=640"):
        UNet.from_pretrained(unet_dir)


def test_config_not_json(unet_dir):
    (unet_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        UNet.from_pretrained(unet_dir)


def test_config_unknown_keys_are_ignored(tiny_ckpt):
    data = json.loads((tiny_ckpt / "unet" / "config.json").read_text())
    cfg = UNetConfig.from_hf({**data, "some_future_option": 3})
    assert cfg == UNetConfig.from_hf(data)
    assert cfg.attention_head_dim == (4, 4, 4, 4)  # legacy attention_head_dim = number of heads, per block
    assert cfg.resnet_temb_dim == 2 * 4 * 32  # CLAP projection concatenated to the time embedding


def test_config_rejects_unsupported_option(tiny_ckpt):
    data = json.loads((tiny_ckpt / "unet" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"unet/config.json: class_embed_type='timestep' is not supported"):
        UNetConfig.from_hf({**data, "class_embed_type": "timestep"}, "unet/config.json")
    vae = json.loads((tiny_ckpt / "vae" / "config.json").read_text())
    assert VAEConfig.from_hf(vae).scaling_factor == SCALING_FACTOR  # read from the file, not diffusers' 0.18215
    del vae["scaling_factor"]
    assert VAEConfig.from_hf(vae, "vae/config.json").scaling_factor == 0.18215  # absent: diffusers' default


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a MusicLDM checkpoint folder"):
        resolve(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve(tmp_path / "nothing-here")


def test_incomplete_checkpoint_folder(tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    shutil.rmtree(folder / "vocoder")
    with pytest.raises(CheckpointError, match="incomplete, missing vocoder/config.json"):
        resolve(folder)


def test_unknown_repo_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"nobody/nothing: not available: HF_HUB_OFFLINE=1 is set"):
        resolve("nobody/nothing")


def test_hub_id_resolves_from_cache_offline(hf_cache, monkeypatch):
    cache, rev = hf_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    folder = resolve("ucsd-reach/musicldm")
    assert folder.name == rev and (folder / "unet" / WEIGHTS).is_file()
    assert resolve("ucsd-reach/musicldm", revision=rev) == folder
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(cache.parent / "elsewhere"))
    with pytest.raises(CheckpointError, match="not in the cache"):
        resolve("ucsd-reach/musicldm")


def test_revision_on_a_folder_is_an_error(tiny_ckpt):
    with pytest.raises(CheckpointError, match="revision='main' applies to Hub repo ids"):
        resolve(tiny_ckpt, revision="main")


# --- the published files as they are ----------------------------------------------------------

_OPENED: list = []


def _record_bin_opens(event, args):
    if event == "open" and args and str(args[0]).endswith(".bin"):
        _OPENED.append(str(args[0]))


sys.addaudithook(_record_bin_opens)  # cannot be removed; it only records


def test_text_encoder_float64_tensors_load(tiny_ckpt):
    """The published text encoder stores float64 tensors (its config says so): the fixture does too."""
    from safetensors import safe_open
    from musicldm_core.clap import Clap

    with safe_open(str(tiny_ckpt / "text_encoder" / "model.safetensors"), "pt") as f:
        assert f.get_slice("logit_scale_t").get_dtype() == "F64"
    assert json.loads((tiny_ckpt / "text_encoder" / "config.json").read_text())["torch_dtype"] == "float64"
    clap = Clap.from_pretrained(tiny_ckpt / "text_encoder")
    assert clap.logit_scale_text.dtype == torch.float32  # cast while read, like every weight
    with safe_open(str(tiny_ckpt / "text_encoder" / "model.safetensors"), "pt") as f:
        assert clap.logit_scale_text.item() == pytest.approx(f.get_tensor("logit_scale_t").item(), rel=1e-7)


def test_hub_pickle_twins_are_never_downloaded_or_opened(hf_cache, monkeypatch, tmp_path):
    """The Hub repo has a .bin beside every safetensors file; the cache fixture too, each a trap
    pickle. Loading the whole pipeline by repo id opens none of them."""
    import fnmatch
    import tempfile

    from musicldm_core.hub import ALLOW_PATTERNS
    from musicldm_core.pipeline import MusicLDMPipeline
    from reference_checkpoints import TRAP_MARKER

    cache, rev = hf_cache
    snapshot = cache / "models--ucsd-reach--musicldm" / "snapshots" / rev
    bins = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.bin"))
    assert len(bins) == 4  # unet, vae, text_encoder, vocoder
    assert not [b for b in bins if any(fnmatch.fnmatch(b, pattern) for pattern in ALLOW_PATTERNS)]
    marker = Path(tempfile.gettempdir()) / TRAP_MARKER
    marker.unlink(missing_ok=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _OPENED.clear()
    MusicLDMPipeline.from_pretrained("ucsd-reach/musicldm")
    assert _OPENED == [] and not marker.exists()


def test_pickle_only_weights_are_refused_with_a_way_out(tiny_ckpt, tmp_path):
    """A folder whose UNet is published only as .bin: one clear line, then the converter fixes it."""
    from musicldm_core.pipeline import MusicLDMPipeline
    from weights_convert.to_safetensors import convert_folder

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    state = load_file(folder / "unet" / WEIGHTS)
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / "unet" / WEIGHTS).unlink()
    with pytest.raises(CheckpointError) as e:
        MusicLDMPipeline.from_pretrained(folder)
    message = str(e.value)
    assert "\n" not in message and "no safetensors weights for unet" in message
    assert "unet/diffusion_pytorch_model.bin" in message and "weights_convert.to_safetensors" in message
    _OPENED.clear()
    assert convert_folder(folder) == [folder / "unet" / WEIGHTS]
    assert _OPENED == [str(folder / "unet" / "diffusion_pytorch_model.bin")]  # read once, by the converter
    converted = load_file(folder / "unet" / WEIGHTS)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    MusicLDMPipeline.from_pretrained(folder)
