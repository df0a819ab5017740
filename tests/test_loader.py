"""The strict safetensors loader, the configs and checkpoint resolution: every error names the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicldm_core.config import UNetConfig, VAEConfig
from musicldm_core.errors import CheckpointError
from musicldm_core.hub import resolve
from musicldm_core.unet import UNet
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
    assert set(model.state_dict()) == set(state)
    for k, v in model.state_dict().items():
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
        assert torch.equal(v, state[k]), k


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


def test_config_missing_required_key(unet_dir):
    cfg = json.loads((unet_dir / "config.json").read_text())
    del cfg["block_out_channels"]
    (unet_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: missing required key\(s\) 'block_out_channels'"):
        UNet.from_pretrained(unet_dir)


def test_config_not_json(unet_dir):
    (unet_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        UNet.from_pretrained(unet_dir)


def test_config_unknown_keys_kept_and_ignored(tiny_ckpt):
    data = json.loads((tiny_ckpt / "unet" / "config.json").read_text())
    cfg = UNetConfig.from_hf({**data, "some_future_option": 3})
    assert cfg.extra["some_future_option"] == 3
    assert cfg.heads == (4, 4, 4, 4)  # legacy attention_head_dim = number of heads
    assert cfg.resnet_temb_dim == 2 * 4 * 32  # CLAP projection concatenated to the time embedding


def test_config_rejects_unsupported_option(tiny_ckpt):
    data = json.loads((tiny_ckpt / "unet" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"unet/config.json: class_embed_type='timestep' is not supported"):
        UNetConfig.from_hf({**data, "class_embed_type": "timestep"}, "unet/config.json")
    vae = json.loads((tiny_ckpt / "vae" / "config.json").read_text())
    assert VAEConfig.from_hf(vae).scaling_factor == 0.6  # read from the file, not diffusers' 0.18215
    del vae["scaling_factor"]
    with pytest.raises(CheckpointError, match="missing required key.*'scaling_factor'"):
        VAEConfig.from_hf(vae, "vae/config.json")


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
