"""The name mappings of musicldm_core/names/, checked without loading a weight: for every component,
every published key maps to exactly one of our parameters of the same shape (model built on the
meta device), and back; only the listed non-weights are skipped; no placeholder name is left."""

from __future__ import annotations

import re

import pytest
import torch

from musicldm_core.clap import Clap
from musicldm_core.clap_config import ClapConfig
from musicldm_core.config import VAEConfig, VocoderConfig
from musicldm_core.unet_config import UNetConfig
from musicldm_core.unet import UNet
from musicldm_core.vae import AutoencoderKL
from musicldm_core.vocoder import HifiGan
from musicldm_core.weights import read_shapes
from musicldm_core.names import clap, diffusers

# component -> (our class, its config, weight file, the mapping module (None: names are equal), parameters)
COMPONENTS = {
    "text_encoder": (Clap, ClapConfig, "model", clap, 193.9e6),
    "unet": (UNet, UNetConfig, "diffusion_pytorch_model", diffusers, 185.0e6),
    "vae": (AutoencoderKL, VAEConfig, "diffusion_pytorch_model", diffusers, 55.4e6),
    "vocoder": (HifiGan, VocoderConfig, "model", None, 55.3e6),
}
PLACEHOLDER = re.compile(r"\.(to_out|downsamplers|upsamplers|net)\.\d+\.|mid_block\.attentions\.|linear_\d")


@pytest.mark.parametrize("variant", ["tiny", "full"])
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_every_published_key_maps_to_one_parameter(component, variant, request):
    cls, config_cls, stem, names, count = COMPONENTS[component]
    folder = request.getfixturevalue(f"{variant}_ckpt") / component
    published = read_shapes([folder / f"{stem}.safetensors"])  # headers only
    with torch.device("meta"):
        model = cls(config_cls.from_json(folder / "config.json"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    to_ours = names.published_to_ours if names else (lambda k: k)
    to_published = names.ours_to_published if names else (lambda k: k)
    targets, skipped = {}, []
    for key, (shape, _) in published.items():
        name = to_ours(key)
        if name is None:
            skipped.append(key)
            continue
        assert name in ours, f"{key} -> {name}: no such parameter"
        assert ours[name] == shape, f"{key} -> {name}: {ours[name]} != {shape}"
        assert name not in targets, f"{key} and {targets[name]} both map to {name}"
        targets[name] = key
        assert to_published(name) == key  # the mapping inverts
    assert set(targets) == set(ours), f"parameters no published key fills: {set(ours) - set(targets)}"
    # only the listed non-weights are skipped
    listed = {t.split(".")[-1] for t in clap.NON_WEIGHTS} if names is clap else set()
    assert {k.split(".")[-1] for k in skipped} == listed
    assert not [k for k in ours if PLACEHOLDER.search("." + k)], "placeholder names left in our modules"
    if variant == "full":
        assert sum(v.numel() for v in model.parameters()) == pytest.approx(count, rel=1e-3)
        if component == "text_encoder":
            assert sum(v.numel() for v in model.text.parameters()) == pytest.approx(125.3e6, rel=1e-3)


def test_unknown_key_passes_through_for_the_loader_to_report():
    assert clap.published_to_ours("text_model.something_new.weight") == "text_model.something_new.weight"
    assert diffusers.published_to_ours("conv_new.weight") == "conv_new.weight"
    with pytest.raises(KeyError):
        clap.ours_to_published("not.a.parameter")


def test_the_loader_names_a_missing_key_by_its_published_name(tmp_path, tiny_ckpt):
    import shutil

    from safetensors.torch import load_file, save_file

    from musicldm_core.errors import CheckpointError

    shutil.copytree(tiny_ckpt / "unet", tmp_path / "unet")
    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    key = next(k for k in state if ".to_out.0." in k)
    del state[key]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=re.escape(f"missing key {key!r}")):
        UNet.from_pretrained(tmp_path / "unet")
