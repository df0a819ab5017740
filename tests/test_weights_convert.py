"""The CLAP key table, checked without loading a weight: every published key maps to exactly one
of our parameters of the same shape (model built on the meta device), and back."""

from __future__ import annotations

import pytest
import torch

from musicldm_core.clap import Clap
from musicldm_core.config import ClapConfig
from musicldm_core.weights import read_shapes
from weights_convert.clap import NON_WEIGHTS, ours_to_published, published_to_ours


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_every_published_key_maps_to_one_parameter(variant, request):
    folder = request.getfixturevalue(f"{variant}_ckpt") / "text_encoder"
    published = read_shapes([folder / "model.safetensors"])  # headers only
    with torch.device("meta"):
        model = Clap(ClapConfig.from_json(folder / "config.json"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    targets = {}
    skipped = []
    for key, (shape, _) in published.items():
        name = published_to_ours(key)
        if name is None:
            skipped.append(key)
            continue
        assert name in ours, f"{key} -> {name}: no such parameter"
        assert ours[name] == shape, f"{key} -> {name}: {ours[name]} != {shape}"
        assert name not in targets, f"{key} and {targets[name]} both map to {name}"
        targets[name] = key
        assert ours_to_published(name) == key  # the table inverts
    assert set(targets) == set(ours), f"parameters no published key fills: {set(ours) - set(targets)}"
    # only the listed non-weights are skipped
    assert {k.split(".")[-1] for k in skipped} == {t.split(".")[-1] for t in NON_WEIGHTS}
    if variant == "full":
        assert sum(v.numel() for v in model.parameters()) == pytest.approx(193.9e6, rel=1e-3)
        text = sum(v.numel() for v in model.text.parameters())
        assert text == pytest.approx(125.3e6, rel=1e-3)


def test_unknown_key_passes_through_for_the_loader_to_report():
    assert published_to_ours("text_model.something_new.weight") == "text_model.something_new.weight"
    with pytest.raises(KeyError):
        ours_to_published("not.a.parameter")


@pytest.mark.parametrize("component, stem, count", [("unet", "diffusion_pytorch_model", 185.0e6),
                                                    ("vae", "diffusion_pytorch_model", 55.4e6),
                                                    ("vocoder", "model", 55.3e6)])
def test_published_names_are_our_names(full_ckpt, component, stem, count):
    """UNet, VAE and vocoder keep the published names: header keys and shapes equal our state dict."""
    from musicldm_core.unet import UNet
    from musicldm_core.vae import AutoencoderKL
    from musicldm_core.vocoder import HifiGan
    from musicldm_core.config import UNetConfig, VAEConfig, VocoderConfig

    cls, cfg_cls = {"unet": (UNet, UNetConfig), "vae": (AutoencoderKL, VAEConfig),
                    "vocoder": (HifiGan, VocoderConfig)}[component]
    folder = full_ckpt / component
    published = {k: s for k, (s, _) in read_shapes([folder / f"{stem}.safetensors"]).items()}
    with torch.device("meta"):
        model = cls(cfg_cls.from_json(folder / "config.json"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published
    assert sum(v.numel() for v in model.parameters()) == pytest.approx(count, rel=1e-3)
