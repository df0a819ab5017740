"""The MusicLDM authors' own modules, built at chosen shapes with random weights, for parity.

MusicLDM (RetroCirce/MusicLDM, `interface/src`) runs on the latent-diffusion code it shares with
AudioLDM, and on LAION's CLAP:
- `audioldm` 0.1.1 (PyPI) ships the same UNet (`latent_diffusion/openaimodel.py`, with
  `extra_film_condition_dim`, `extra_film_use_concat`, `num_head_channels`; MusicLDM's copy only adds
  an unused `no_condition` flag and prints), the same KL autoencoder (`variational_autoencoder/
  modules.py` Encoder/Decoder, line for line MusicLDM's `diffusionmodules/model.py`) and the same
  HiFi-GAN (`hifigan/models.py`).
- `laion-clap` 1.1.7 (PyPI) ships the CLAP model (`clap_module/model.py` CLAP, HTSAT + RoBERTa) and
  `training/data.py`'s get_audio_features, which MusicLDM's CLAP conditioner calls.
- `torchaudio` (PyPI) ships `functional.resample`, which that conditioner calls to go from 16 to 48 kHz.

Neither can be installed beside the reference stack (audioldm pins numpy <= 1.23.5 and gradio;
laion-clap pins numpy < 2 and pulls wandb, webdataset and more), so their wheels are fetched once
with `pip download --no-deps` into the fixture cache, unpacked, and only the modules needed are
imported from there, untouched. Their small pure dependencies (einops, torchlibrosa) are in the
test extra; three imports that only training code uses (torchvision's FrozenBatchNorm2d, h5py,
progressbar) get empty stand-ins when absent. CLAP's text branch calls
`RobertaModel.from_pretrained('roberta-base')`, which needs the Hub: it gets a RobertaModel built
from roberta-base's config instead (random weights, as everywhere here), with roberta-base's
LayerNorm eps 1e-5.

Shapes: "full" is the authors' YAML (`interface/musicldm.yaml`) and HiFi-GAN config; "small" keeps
every convention (32 channels per UNet head, 64 per RoBERTa head, 32 per HTSAT head, GroupNorm of
32 groups, the vocoder's rates) at small widths, for the checkpoint-file tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import reference_checkpoints

WHEELS = {"audioldm": "audioldm-0.1.1-py3-none-any.whl", "laion_clap": "laion_clap-1.1.7-py3-none-any.whl"}
TORCHAUDIO = "torchaudio==2.9.0"  # a compiled wheel for another torch: only functional.py's pure resampler is read

SHAPES = {
    "full": {
        "unet": dict(image_size=64, extra_film_condition_dim=512, extra_film_use_concat=True, in_channels=8,
                     out_channels=8, model_channels=128, attention_resolutions=[8, 4, 2], num_res_blocks=2,
                     channel_mult=[1, 2, 3, 5], num_head_channels=32, use_spatial_transformer=True),
        "vae": dict(ch=128, ch_mult=[1, 2, 4], num_res_blocks=2, z_channels=8, embed_dim=8),
        "vocoder": dict(upsample_initial_channel=1024),
        "roberta": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072),
        "htsat": dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32]),
        "joint": 512,
        "latent": (256, 16),
    },
    "small": {
        "unet": dict(image_size=64, extra_film_condition_dim=32, extra_film_use_concat=True, in_channels=8,
                     out_channels=8, model_channels=32, attention_resolutions=[8, 4, 2], num_res_blocks=1,
                     channel_mult=[1, 2, 3, 5], num_head_channels=32, use_spatial_transformer=True),
        "vae": dict(ch=32, ch_mult=[1, 2, 4], num_res_blocks=1, z_channels=8, embed_dim=8),
        "vocoder": dict(upsample_initial_channel=64),
        # CLAP's text projection is Linear(768, joint) whatever the tower: the width stays RoBERTa-base's
        "roberta": dict(vocab_size=1000, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=256),
        "htsat": dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
        "joint": 32,
        "latent": (32, 16),
    },
}
# MusicLDM's HiFi-GAN (interface/src/hifigan/config_16k_64.json), less the channel width
HIFIGAN = dict(resblock="1", upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
               resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
               num_mels=64, sampling_rate=16000)


def _unpacked(name: str) -> Path:
    folder = reference_checkpoints.cache_root() / "authors"
    target = folder / name
    if (target / ".complete").is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEELS[name]
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                        WHEELS[name].split("-py3")[0].replace("-", "==", 1).replace("_", "-")], check=True)
    zipfile.ZipFile(wheel).extractall(target)
    (target / ".complete").write_text("")
    return target


def _functions(path: Path, names: tuple, namespace: dict) -> dict:
    """Top-level functions of a module's source, executed untouched in `namespace` (the names they use),
    without running the module itself (whose imports need the Hub, a compiled extension or training
    packages)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in nodes} == set(names), f"{path}: missing {set(names) - {n.name for n in nodes}}"
    exec(compile(ast.Module(nodes, []), str(path), "exec"), namespace)
    return namespace


def torchaudio_resample():
    """torchaudio.functional.resample from its wheel (the resampler and its two helpers)."""
    import math
    import warnings
    from typing import Optional

    import torch

    folder = reference_checkpoints.cache_root() / "authors" / "torchaudio"
    if not (folder / ".complete").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                        TORCHAUDIO], check=True)
        wheel = next(folder.glob("torchaudio-*.whl"))
        zipfile.ZipFile(wheel).extract("torchaudio/functional/functional.py", folder)
        (folder / ".complete").write_text("")
    namespace = {"math": math, "warnings": warnings, "torch": torch, "Tensor": torch.Tensor, "Optional": Optional,
                 "_CPU": torch.device("cpu")}
    return _functions(folder / "torchaudio/functional/functional.py",
                      ("_get_sinc_resample_kernel", "_apply_sinc_resample_kernel", "resample"), namespace)["resample"]


def get_audio_features():
    """laion-clap's training/data.py get_audio_features (the module itself loads three tokenizers from the Hub)."""
    from contextlib import suppress

    import numpy as np
    import torch
    import torch.nn.functional as F

    path = _unpacked("laion_clap") / "laion_clap/training/data.py"
    namespace = {"torch": torch, "np": np, "F": F, "suppress": suppress}
    return _functions(path, ("get_audio_features",), namespace)["get_audio_features"]


def clap_audio_condition(model, batch):
    """MusicLDM's CLAPAudioEmbeddingClassifierFreev2.forward with embed_mode="audio" (interface/src/latent_diffusion/
    modules/encoders/modules.py), at inference: sampling_rate 16000, no random mute, unconditional_prob 0.
    batch: (bs, samples) at 16 kHz -> (bs, 1, joint). Its steps, in its order: torchaudio's resample to 48 kHz,
    get_audio_features(480000 samples, "rand_trunc", "repeatpad") per waveform, model.get_audio_embedding."""
    import torch

    audio_cfg = dict(sample_rate=48000, window_size=1024, hop_size=480, mel_bins=64, fmin=50, fmax=14000)
    with torch.no_grad():
        batch = torchaudio_resample()(batch, orig_freq=16000, new_freq=48000)
        features = get_audio_features()
        dicts = [features({}, waveform, 480000, data_truncating="rand_trunc", data_filling="repeatpad",
                          audio_cfg=audio_cfg) for waveform in batch]
        embed = model.get_audio_embedding(dicts)
    return embed.unsqueeze(1)


def _package(name: str, root: Path) -> None:
    """An empty package whose submodules import from `root/<name as path>`: its __init__ never runs."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")))]
        sys.modules[name] = module


@contextlib.contextmanager
def _stand_ins(**modules):
    """Empty modules for imports only training code uses, present while the authors' modules import, then
    gone again (transformers probes for torchvision and must not find a stand-in)."""
    added = []
    missing = {name.split(".")[0] for name in modules if importlib.util.find_spec(name.split(".")[0]) is None}
    for name, attrs in modules.items():
        if name.split(".")[0] in missing:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def modules():
    """(openaimodel, vae modules, distributions, hifigan models, clap model, htsat) of the authors' code."""
    import torch
    import transformers  # noqa: F401  (imported before any stand-in exists)

    root = _unpacked("audioldm")
    for name in ("audioldm", "audioldm.latent_diffusion", "audioldm.variational_autoencoder", "audioldm.hifigan"):
        _package(name, root)
    clap_root = _unpacked("laion_clap")
    for name in ("laion_clap", "laion_clap.clap_module"):
        _package(name, clap_root)
    stand_ins = {"progressbar": {}, "h5py": {}, "torchvision": {}, "torchvision.ops": {},
                 "torchvision.ops.misc": {"FrozenBatchNorm2d": torch.nn.BatchNorm2d}}
    with _stand_ins(**stand_ins):
        return types.SimpleNamespace(
            openaimodel=importlib.import_module("audioldm.latent_diffusion.openaimodel"),
            vae=importlib.import_module("audioldm.variational_autoencoder.modules"),
            distributions=importlib.import_module("audioldm.variational_autoencoder.distributions"),
            hifigan=importlib.import_module("audioldm.hifigan.models"),
            clap=importlib.import_module("laion_clap.clap_module.model"),
            htsat=importlib.import_module("laion_clap.clap_module.htsat"),
        )


def unet(shape: str):
    return modules().openaimodel.UNetModel(**SHAPES[shape]["unet"]).eval()


class VAE:
    """The authors' AutoencoderKL at inference (latent_encoder/autoencoder.py, subband 1): encoder +
    quant_conv -> a diagonal Gaussian; post_quant_conv + decoder. Their keys, in one state dict."""

    def __init__(self, shape: str):
        import torch

        m = modules()
        p = SHAPES[shape]["vae"]
        dd = dict(ch=p["ch"], out_ch=1, ch_mult=p["ch_mult"], num_res_blocks=p["num_res_blocks"], attn_resolutions=[],
                  dropout=0.0, in_channels=1, resolution=256, z_channels=p["z_channels"], double_z=True)
        self.parts = torch.nn.ModuleDict(dict(
            encoder=m.vae.Encoder(**dd), decoder=m.vae.Decoder(**dd),
            quant_conv=torch.nn.Conv2d(2 * p["z_channels"], 2 * p["embed_dim"], 1),
            post_quant_conv=torch.nn.Conv2d(p["embed_dim"], p["z_channels"], 1))).eval()
        self.gaussian = m.distributions.DiagonalGaussianDistribution

    def encode(self, x):
        return self.gaussian(self.parts.quant_conv(self.parts.encoder(x)))

    def decode(self, z):
        return self.parts.decoder(self.parts.post_quant_conv(z))


def hifigan(shape: str):
    """The authors' Generator with weight norm, as training saves it (`weight_g`/`weight_v`)."""

    class AttrDict(dict):
        __getattr__ = dict.__getitem__

    return modules().hifigan.Generator(AttrDict(HIFIGAN, **SHAPES[shape]["vocoder"])).eval()


def clap(shape: str):
    """LAION's CLAP as MusicLDM builds it (HTSAT-base audio, RoBERTa text, no fusion)."""
    from transformers import RobertaConfig, RobertaModel

    m = modules()
    s = SHAPES[shape]
    roberta = RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, **s["roberta"])
    original = m.clap.RobertaModel.from_pretrained
    m.clap.RobertaModel.from_pretrained = classmethod(lambda cls, name: RobertaModel(roberta))
    make_htsat = m.htsat.HTSAT_Swin_Transformer
    h = s["htsat"]

    def create_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
        return make_htsat(spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=audio_cfg.class_num,
                          embed_dim=h["embed_dim"], depths=h["depths"], num_heads=h["num_heads"], window_size=8,
                          config=audio_cfg, enable_fusion=enable_fusion, fusion_type=fusion_type)

    original_create = m.clap.create_htsat_model
    m.clap.create_htsat_model = create_htsat
    try:
        audio = m.clap.CLAPAudioCfp(audio_length=1024, clip_samples=480000, mel_bins=64, sample_rate=48000,
                                    window_size=1024, hop_size=480, fmin=50, fmax=14000, class_num=527,
                                    model_type="HTSAT", model_name="base")
        text = m.clap.CLAPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                                  model_type="roberta")
        model = m.clap.CLAP(embed_dim=h["embed_dim"] * 8, audio_cfg=audio, text_cfg=text, quick_gelu=False,
                            enable_fusion=False, fusion_type="None", joint_embed_shape=s["joint"], mlp_act="relu")
    finally:
        m.clap.RobertaModel.from_pretrained = original
        m.clap.create_htsat_model = original_create
    return model.eval()


# --- A synthetic release: the authors' modules, random weights, saved in their Lightning layout ----------

class AuthorsModel:
    """The authors' components at one shape, randomised from fixed seeds (a different seed per `seed`)."""

    def __init__(self, shape: str, seed: int = 0):
        import torch

        self.shape = shape
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the modules' own default init draws from the global generator
            self.unet = unet(shape)
            self.vae = VAE(shape)
            self.vocoder = hifigan(shape)
            self.clap = clap(shape)
            self.ema = unet(shape)
        reference_checkpoints.randomize_(self.unet, 100 + seed)
        reference_checkpoints.randomize_(self.vae.parts, 200 + seed)
        fixed = {k: v.clone() for k, v in self.clap.named_buffers()
                 if k.endswith("attn_mask") or "_extractor." in k}  # computed, not learned: keep them
        reference_checkpoints.randomize_(self.clap, 300 + seed)
        self.clap.load_state_dict(fixed, strict=False)
        _signal_preserving_weight_norm_(self.vocoder, 400 + seed)
        # the EMA twin: the same network with other values, so a test can tell which one was converted
        self.ema.load_state_dict(self.unet.state_dict())
        reference_checkpoints.randomize_(self.ema, 500 + seed)
        self.scale_factor = torch.tensor(0.8715 + 0.01 * seed)

    def plain_vocoder(self):
        """The generator as inference runs it: weight norm removed (`get_vocoder` does it at load)."""
        plain = hifigan(self.shape)
        plain.load_state_dict(self.vocoder.state_dict())
        plain.remove_weight_norm()
        return plain

    def state_dict(self, junk: bool = True) -> dict:
        """`state_dict` of the authors' LatentDiffusion (MusicLDM class) as Lightning saves it."""
        import numpy as np
        import torch

        sd = {}
        sd.update({f"model.diffusion_model.{k}": v for k, v in self.unet.state_dict().items()})
        sd.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v
                   for k, v in self.ema.state_dict().items()})
        sd.update({f"first_stage_model.{k}": v for k, v in self.vae.parts.state_dict().items()})
        sd.update({f"first_stage_model.vocoder.{k}": v for k, v in self.plain_vocoder().state_dict().items()})
        sd.update({f"cond_stage_model.model.{k}": v for k, v in self.clap.state_dict().items()})
        sd["scale_factor"] = self.scale_factor
        betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2  # make_beta_schedule("linear")
        alphas_cumprod = np.cumprod(1.0 - betas)
        sd["betas"] = torch.tensor(betas, dtype=torch.float32)
        sd["alphas_cumprod"] = torch.tensor(alphas_cumprod, dtype=torch.float32)
        sd["sqrt_alphas_cumprod"] = torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32)
        if junk:  # what training leaves in the file: EMA bookkeeping, the loss networks, logvar
            g = torch.Generator().manual_seed(7)
            sd["model_ema.decay"] = torch.tensor(0.9999)
            sd["model_ema.num_updates"] = torch.tensor(123456, dtype=torch.int32)
            sd["logvar"] = torch.zeros(1000)
            sd["first_stage_model.loss.logvar"] = torch.zeros(())
            sd["first_stage_model.loss.discriminator.main.0.weight"] = torch.randn(64, 1, 4, 4, generator=g)
            sd["first_stage_model.loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3, generator=g)
        return sd


def _signal_preserving_weight_norm_(generator, seed: int) -> None:
    """Weights with std 1/sqrt(fan-in) (as reference_checkpoints.signal_preserving_init_), then each
    weight-norm gain moved off ||v|| by ~10%, so fusing g and v is not the identity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in generator.modules():
            if not hasattr(m, "weight_v"):
                continue
            m.weight_v.copy_(torch.randn(m.weight_v.shape, generator=g) / reference_checkpoints.fan_in(m) ** 0.5)
            norm = m.weight_v.flatten(1).norm(dim=1).view(m.weight_g.shape)
            m.weight_g.copy_(norm * (1 + 0.1 * torch.randn(m.weight_g.shape, generator=g)))
            if m.bias is not None:
                m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=g))


def save_release(model: AuthorsModel, folder: Path, separate: AuthorsModel = None) -> dict:
    """The authors' files: musicldm-ckpt.ckpt (Lightning: state_dict + its own top-level entries, with a
    Lightning object and numpy values that stop `weights_only`), vae-ckpt.ckpt, hifigan-ckpt.ckpt
    (weight-norm generator) and clap-ckpt.pt (`module.` names), these three from `separate` when given
    (other weights, so a test can tell which file a component came from). Returns {name: path}."""
    import numpy as np
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    lightning = types.ModuleType("pytorch_lightning.utilities.parsing")

    AttributeDict = type("AttributeDict", (dict,), {"__module__": lightning.__name__, "__qualname__": "AttributeDict"})
    lightning.AttributeDict = AttributeDict
    saved = {name: sys.modules.get(name) for name in ("pytorch_lightning", "pytorch_lightning.utilities",
                                                      "pytorch_lightning.utilities.parsing")}
    for name in saved:
        sys.modules[name] = lightning if name.endswith("parsing") else types.ModuleType(name)
    try:
        main = {
            "epoch": 41, "global_step": 250000, "pytorch-lightning_version": "1.9.0",
            "state_dict": model.state_dict(),
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.01), "monitor": "val/loss"}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                                  "param_groups": [{"lr": 3e-5, "betas": (0.9, 0.999)}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": AttributeDict(base_learning_rate=3e-5, scale_by_std=True, mixup=np.float64(0.0),
                                              latent_t_size=np.int64(256)),
        }
        paths = {"main": folder / "musicldm-ckpt.ckpt"}
        torch.save(main, paths["main"])
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    model = separate or model
    paths["vae"] = folder / "vae-ckpt.ckpt"
    torch.save({"state_dict": {**model.vae.parts.state_dict(), "loss.logvar": torch.zeros(()),
                               **{f"vocoder.{k}": v for k, v in model.plain_vocoder().state_dict().items()}},
                "epoch": np.int64(3)}, paths["vae"])
    paths["vocoder"] = folder / "hifigan-ckpt.ckpt"
    torch.save({"generator": model.vocoder.state_dict()}, paths["vocoder"])
    paths["clap"] = folder / "clap-ckpt.pt"
    torch.save({"epoch": 45, "state_dict": {f"module.{k}": v for k, v in model.clap.state_dict().items()}},
               paths["clap"])
    return paths
