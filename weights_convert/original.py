"""The MusicLDM authors' release (RetroCirce/MusicLDM) -> a diffusers-layout folder, without running pickle.

    python -m weights_convert.original musicldm-ckpt.ckpt OUT_DIR [--ema | --no-ema]
        [--vae vae-ckpt.ckpt] [--vocoder hifigan-ckpt.ckpt] [--clap clap-ckpt.pt]
        [--tokenizer-from ucsd-reach/musicldm] [--head-channels 32]

The authors publish PyTorch Lightning checkpoints. The main one holds the whole model:
  model.diffusion_model.*   the UNet (openaimodel.UNetModel)        -> unet/
  model_ema.*               its EMA twin, names without dots         -> unet/ by default (they sample with it)
  first_stage_model.*       the KL autoencoder                       -> vae/ (scale_factor -> scaling_factor)
  first_stage_model.vocoder.*  HiFi-GAN                              -> vocoder/
  cond_stage_model.model.*  LAION CLAP (HTSAT audio, RoBERTa text)   -> text_encoder/
  scale_factor, betas, ...  the learned latent scale, the schedule's buffers
The separate files replace a component: the VAE (`state_dict`, same names without the prefix), HiFi-GAN
(`generator`, weight-norm `weight_g`/`weight_v` pairs, fused here) and CLAP (`state_dict`, `module.` prefix).

Reading: `torch.load(weights_only=True)` first. Lightning's own objects (hyper-parameters, callbacks) and
numpy values stop it, so then a restricted unpickler reads the file: it rebuilds tensors and plain
containers, turns the objects of known data libraries into inert placeholders it names, and refuses any
other global (a function such as os.system) before anything runs.

What the folder gets, and why (each differs from diffusers' conversion script):
- unet/config.json: attention_head_dim = width // 32 per block (the authors' `num_head_channels: 32`:
  4, 8, 12, 20 heads at 128/256/384/640, and 20 in the mid block). diffusers' script sets nothing, so its
  UNet runs 8 heads everywhere: other attention than the authors' at three of the four widths.
- EMA weights by default (`--no-ema` for the trained ones); diffusers' script takes the trained ones.
- text_encoder/config.json: LayerNorm eps 1e-5 in the text tower (RoBERTa's; transformers' ClapConfig
  default is 1e-12).
- vae/config.json: scaling_factor = the checkpoint's learned scale_factor.
- scheduler: DDIM on the checkpoint's own beta buffer (checked to be the scaled-linear schedule).
What the weights do not say is MusicLDM's: latent length 256 frames (10.24 s), the HiFi-GAN's upsample
rates (5, 4, 2, 2, 2), RoBERTa's 64 channels a head; HTSAT's heads are read from its bias tables.
The tokenizer and feature extractor are RoBERTa's and CLAP's, copied from `--tokenizer-from` (a folder in
this layout, or a Hub id; default ucsd-reach/musicldm). Keys the model does not use (losses, STFT and
schedule buffers, EMA bookkeeping) are listed in the output and in OUT_DIR/conversion.json.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

Tensors = Dict[str, torch.Tensor]

HEAD_CHANNELS = 32  # the authors' num_head_channels (interface/musicldm.yaml)
LATENT_FRAMES = 256  # latent_t_size: 10.24 s at 16 kHz, hop 160, VAE factor 4
VAE_SAMPLE_SIZE = 1024  # the mel frames of one trained window (diffusers' vae sample_size)
VOCODER = dict(upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4], sampling_rate=16000)
ROBERTA_HEAD_WIDTH = 64
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195)  # linear_start/end, timesteps


class ConversionError(Exception):
    """One line that names the file and the key or object at fault."""


# --- 1. Reading a checkpoint without running it ----------------------------------------------------------

# Modules whose objects are data in a Lightning checkpoint (hyper-parameters, loop state): kept as inert
# placeholders. Any other global is refused: a pickle can name any callable, and only these are expected.
DATA_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric", "numpy", "omegaconf", "argparse",
                "pathlib", "collections", "typing", "enum", "datetime", "torch.optim", "torch.torch_version")
PLAIN = {("collections", "OrderedDict"): OrderedDict, ("builtins", "set"): set,
         ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice, ("builtins", "complex"): complex}
STORAGE_DTYPES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


class Placeholder:
    """Stands for an object of a data library; remembers what it was called with, runs nothing."""

    name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles spell bytes as _codecs.encode(text, "latin1") (numpy scalars do)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data, *rest):
    return data


def _short(text: str, limit: int = 80) -> str:
    """Text from a file, fit for a one-line message: newlines folded, cut at `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


class _Restricted(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        # the whole pickle in memory (its size is bounded by check_archive): read from a stream, a length
        # field of 2**62 made the C unpickler free a buffer still exported to the stream's readinto
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.skipped: Dict[str, int] = {}
        self.storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        # Python 2 names, as protocol 2 (torch.save's) spells them: __builtin__ -> builtins, copy_reg -> copyreg
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) in PLAIN:
            return PLAIN[(module, name)]
        if module.split(".")[0] in DATA_MODULES or module in DATA_MODULES:
            full = f"{module}.{name}"
            self.skipped[full] = self.skipped.get(full, 0) + 1
            return type(name, (Placeholder,), {"name": full})
        raise ConversionError(f"{self.path}: refused: its pickle calls {_short(f'{module}.{name}')}, which is not data; "
                              "nothing from the file was run (a weights file never needs to call code)")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise ConversionError(f"{self.path}: refused: an unknown persistent object {_short(repr(pid[:2]))}")
        if key not in self.storages:
            # copied into a tensor that owns its memory (no view of a Python buffer that may be freed first)
            raw = np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype=np.uint8)
            self.storages[key] = torch.from_numpy(raw.copy()).view(dtype)
        return self.storages[key]


LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch.save before 1.6: a pickled magic number


def what_file(path: Path) -> str:
    """What a file that is not a torch.save archive is, from its first bytes, for the refusal."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a bare pickle (protocol {head[1]}), not a torch.save archive of tensors"
    try:
        head.decode("utf-8")
        return "a text file, not a checkpoint"
    except UnicodeDecodeError:
        return f"not a checkpoint (its first bytes are {head[:8].hex(' ')})"


def check_archive(path: Path) -> None:
    """A zip archive's declared sizes against the file's own size, before anything is inflated: torch.save
    stores its entries uncompressed, so an archive that declares more than it holds is refused unread (a
    zip bomb would otherwise inflate gigabytes inside torch.load)."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception as e:  # BadZipFile, OSError, NotImplementedError (an unknown zip version), ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{path}: a damaged zip archive ({first})") from None
    size = path.stat().st_size
    if declared > size:
        raise ConversionError(f"{path}: its archive declares {declared} bytes inflated from a file of {size} "
                              "(torch.save stores its entries uncompressed): refused unread")
    check_pickle(path)


def check_pickle(path: Path) -> None:
    """The archive's pickle walked opcode by opcode (pickletools reads, runs nothing) before any unpickler
    sees it: an opcode that declares more bytes than the pickle holds (2**62 for a bytearray), or one that
    does not exist, is refused by name. Left to them, torch's weights-only unpickler fails on such a length
    in a way that leaves CPython printing "deallocated bytearray object has exported buffers"."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(names[0]) if len(names) == 1 else None
        if data is not None:
            with warnings.catch_warnings():  # (a STRING opcode's odd escapes: a DeprecationWarning)
                warnings.simplefilter("ignore")
                for _ in pickletools.genops(data):
                    pass
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{path}: a damaged pickle in the archive ({_short(first)})") from None


def read_checkpoint(path: Path) -> Tuple[Any, Dict[str, int]]:
    """The unpickled object and {placeholder class: count}; never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {}
        except Exception as e:  # safetensors' SafetensorError, or an OSError
            raise ConversionError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            legacy = f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC
        if not legacy:
            raise ConversionError(f"{path}: {what_file(path)}")
        try:  # tensors only: torch's own weights-only reader takes them; anything more is refused
            return torch.load(path, map_location="cpu", weights_only=True), {}
        except Exception:
            raise ConversionError(f"{path}: an old (non-zip) torch.save file that holds more than tensors; re-save "
                                  "it with torch >= 1.6, or export its state_dict") from None
    check_archive(path)
    try:
        with warnings.catch_warnings():  # torch's note on an odd pickle protocol: the refusal below says more
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError:
        pass  # Lightning or numpy objects: read it with the restricted unpickler below
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {first})") from None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise ConversionError(f"{path}: not a torch.save archive (no single data.pkl)")
            reader = _Restricted(archive, names[0][: -len("data.pkl")], path)
            obj = reader.load()
    except ConversionError:
        raise
    except Exception as e:  # a damaged archive or pickle: whatever zipfile, pickle or torch raised, one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConversionError(f"{path}: damaged or not a checkpoint ({type(e).__name__}: {first})") from None
    return obj, reader.skipped


def state_dict_of(obj: Any, path: Path, prefix: str = "") -> Tensors:
    """The tensors of a checkpoint (Lightning's `state_dict`, HiFi-GAN's `generator`, or bare)."""
    for key in ("state_dict", "generator"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    odd = next((k for k, v in obj.items() if torch.is_tensor(v) and not isinstance(k, str)), None)
    if odd is not None:
        raise ConversionError(f"{path}: a tensor is named {_short(repr(odd))}, not by text: not a state dict")
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in obj.items() if torch.is_tensor(v)}


# --- 2. The key tables: the authors' names -> the published (diffusers / transformers) names -------------

RESNET_UNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
               ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
RESNET_VAE = [("nin_shortcut.", "conv_shortcut.")]
ATTN_VAE = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
CLAP_BLOCK = [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."),
              ("mlp.fc2.", "output.dense."), ("attn.proj.", "attention.output.dense."),
              ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table")]


def _rename(rest: str, table) -> Optional[str]:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


class UNetLayout:
    """Block indices of openaimodel.UNetModel, read from its keys: levels, res blocks, attention levels."""

    def __init__(self, sd: Tensors):
        inputs = {int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")}
        downs = sorted(i for i in inputs if f"input_blocks.{i}.0.op.weight" in sd)
        self.per_level = downs[0] if downs else len(inputs)  # res blocks + 1 (the downsample's slot)
        self.res = self.per_level - 1
        self.levels = len(inputs) // self.per_level if downs else 1
        first = [1 + level * self.per_level for level in range(self.levels)]
        self.widths = [sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in first]
        self.attention = [f"input_blocks.{i}.1.proj_in.weight" in sd for i in first]

    def prefixes(self) -> List[Tuple[str, str, Optional[list]]]:
        """(authors' prefix, published prefix, sub-table or None for the same names)."""
        p = [("time_embed.0.", "time_embedding.linear_1.", None), ("time_embed.2.", "time_embedding.linear_2.", None),
             ("film_emb.", "class_embedding.", None), ("input_blocks.0.0.", "conv_in.", None),
             ("out.0.", "conv_norm_out.", None), ("out.2.", "conv_out.", None),
             ("middle_block.0.", "mid_block.resnets.0.", RESNET_UNET),
             ("middle_block.1.", "mid_block.attentions.0.", None),
             ("middle_block.2.", "mid_block.resnets.1.", RESNET_UNET)]
        n = self.levels
        for level in range(n):
            for j in range(self.res):
                i = 1 + level * self.per_level + j
                p.append((f"input_blocks.{i}.0.", f"down_blocks.{level}.resnets.{j}.", RESNET_UNET))
                p.append((f"input_blocks.{i}.1.", f"down_blocks.{level}.attentions.{j}.", None))
            if level < n - 1:
                p.append((f"input_blocks.{(level + 1) * self.per_level}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.",
                          None))
        for up in range(n):
            level = n - 1 - up
            for j in range(self.per_level):
                i = up * self.per_level + j
                p.append((f"output_blocks.{i}.0.", f"up_blocks.{up}.resnets.{j}.", RESNET_UNET))
                if self.attention[level]:
                    p.append((f"output_blocks.{i}.1.", f"up_blocks.{up}.attentions.{j}.", None))
            if up < n - 1:
                slot = 2 if self.attention[level] else 1
                p.append((f"output_blocks.{up * self.per_level + self.res}.{slot}.conv.",
                          f"up_blocks.{up}.upsamplers.0.conv.", None))
        return p


def _key_map(keys, prefixes) -> Dict[str, str]:
    """{authors' key: published key} for the keys a prefix claims; the others are not the model's."""
    out = {}
    for key in keys:
        for old, new, table in prefixes:
            if key.startswith(old):
                rest = key[len(old):]
                renamed = _rename(rest, table) if table else None
                out[key] = new + (renamed if renamed is not None else rest)
                break
    return out


def _by_prefix(sd: Tensors, prefixes) -> Tuple[Tensors, List[str]]:
    names = _key_map(sd, prefixes)
    return {names[k]: v for k, v in sd.items() if k in names}, [k for k in sd if k not in names]


def unet_key_map(sd: Tensors) -> Dict[str, str]:
    """{authors' UNet key (without `model.diffusion_model.`): diffusers' key}, from the keys' own layout."""
    return _key_map(sd, UNetLayout(sd).prefixes())


def convert_unet(sd: Tensors, path: Path, head_channels: int) -> Tuple[Tensors, dict, List[str], list]:
    layout = UNetLayout(sd)
    prefixes = layout.prefixes()
    weights, unused = _by_prefix(sd, prefixes)
    for key in ("film_emb.weight", "time_embed.0.weight", "out.2.weight", "input_blocks.0.0.weight"):
        if key not in sd:
            raise ConversionError(f"{path}: missing key 'model.diffusion_model.{key}'"
                                  + (" (MusicLDM's film conditioning)" if key.startswith("film") else ""))
    bad = [(i, c) for i, c in enumerate(layout.widths) if c % head_channels]
    if bad:
        raise ConversionError(f"{path}: UNet width {bad[0][1]} (level {bad[0][0]}) is not a multiple of "
                              f"--head-channels {head_channels}")
    time_dim = sd["time_embed.0.weight"].shape[0]
    concat = sd["input_blocks.1.0.emb_layers.1.weight"].shape[1] == 2 * time_dim
    kinds = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention]
    config = {
        "_class_name": "UNet2DConditionModel", "sample_size": LATENT_FRAMES,
        "in_channels": sd["input_blocks.0.0.weight"].shape[1], "out_channels": sd["out.2.weight"].shape[0],
        "down_block_types": kinds,
        "up_block_types": [k.replace("Down", "Up") for k in reversed(kinds)],
        "block_out_channels": layout.widths, "layers_per_block": layout.res,
        "cross_attention_dim": layout.widths,  # attn2 attends to the latent itself: its keys are width-wide
        "attention_head_dim": [c // head_channels for c in layout.widths],  # diffusers' name for the head COUNT
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": sd["film_emb.weight"].shape[1],
        "class_embeddings_concat": concat,
    }
    return weights, config, unused, prefixes


def convert_vae(sd: Tensors, path: Path, scale_factor: float) -> Tuple[Tensors, dict, List[str], list]:
    levels = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")), default=-1)
    res = 1 + max((int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block.")), default=-1)
    if levels == 0 or res == 0:
        raise ConversionError(f"{path}: no VAE encoder blocks (first_stage_model.encoder.down.*)")
    p = [(f"{side}.{old}", f"{side}.{new}", None) for side in ("encoder", "decoder")
         for old, new in [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out.")]]
    p += [("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None)]
    for side in ("encoder", "decoder"):
        p += [(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", RESNET_VAE),
              (f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", ATTN_VAE),
              (f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", RESNET_VAE)]
    for level in range(levels):
        up = levels - 1 - level  # the decoder's `up` list runs from the deepest level
        p += [(f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", RESNET_VAE)
              for j in range(res)]
        p += [(f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", RESNET_VAE)
              for j in range(res + 1)]
        p += [(f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv.", None),
              (f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv.", None)]
    weights, unused = _by_prefix(sd, p)
    for key, value in weights.items():  # 1x1 convolutions of the attention -> linear layers
        if ".mid_block.attentions." in key and key.endswith("weight") and value.dim() == 4:
            weights[key] = value[:, :, 0, 0]
    z = sd["post_quant_conv.weight"]
    if z.shape[0] != z.shape[1]:
        raise ConversionError(f"{path}: embed_dim {z.shape[1]} differs from z_channels {z.shape[0]} "
                              "(post_quant_conv.weight); diffusers' AutoencoderKL needs them equal")
    widths = [sd[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in range(levels)]
    config = {
        "_class_name": "AutoencoderKL", "sample_size": VAE_SAMPLE_SIZE,
        "in_channels": sd["encoder.conv_in.weight"].shape[1], "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths, "latent_channels": z.shape[0], "layers_per_block": res,
        "scaling_factor": scale_factor,
    }
    return weights, config, unused, p


def fuse_weight_norm(sd: Tensors) -> Tensors:
    """w = g * v / ||v||, the norm over every dimension but the first (torch's weight_norm, dim=0)."""
    out = {k: v for k, v in sd.items() if not k.endswith(("weight_g", "weight_v"))}
    for key in [k for k in sd if k.endswith("weight_g")]:
        stem = key[: -len("_g")]
        g, v = sd[key], sd[stem + "_v"]
        norm = v.double().flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[stem] = (g.double() * v.double() / norm).to(v.dtype)
    return out


VOCODER_PREFIXES = [("ups.", "upsampler.", None), ("conv_pre.", "conv_pre.", None), ("conv_post.", "conv_post.", None),
                    ("resblocks.", "resblocks.", None)]


def convert_vocoder(sd: Tensors, path: Path) -> Tuple[Tensors, dict, List[str], list]:
    sd = fuse_weight_norm(sd)
    pre = sd["conv_pre.weight"]
    weights, unused = _by_prefix(sd, VOCODER_PREFIXES)
    kernels = [sd[f"ups.{i}.weight"].shape[-1] for i in range(len([k for k in sd if re.fullmatch(r"ups\.\d+\.weight", k)]))]
    if kernels != VOCODER["upsample_kernel_sizes"]:
        raise ConversionError(f"{path}: HiFi-GAN upsample kernels {kernels} are not MusicLDM's "
                              f"{VOCODER['upsample_kernel_sizes']} (its rates are not in the weights)")
    n_res = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("resblocks."))
    per = n_res // len(kernels)
    resblock_kernels = [sd[f"resblocks.{i}.convs1.0.weight"].shape[-1] for i in range(per)]
    dilations = [[1, 3, 5]] * per  # HiFi-GAN ResBlock1's dilations (not in the weights)
    weights["mean"] = torch.zeros(pre.shape[1])  # unused: normalize_before is false, as in the authors' model
    weights["scale"] = torch.ones(pre.shape[1])
    config = {"model_in_dim": pre.shape[1], "sampling_rate": VOCODER["sampling_rate"],
              "upsample_initial_channel": pre.shape[0], "upsample_rates": VOCODER["upsample_rates"],
              "upsample_kernel_sizes": kernels, "resblock_kernel_sizes": resblock_kernels,
              "resblock_dilation_sizes": dilations, "normalize_before": False}
    return weights, config, unused, VOCODER_PREFIXES


def convert_clap(sd: Tensors, path: Path) -> Tuple[Tensors, dict, List[str]]:
    """LAION CLAP -> transformers' ClapModel names; the HTSAT's fused qkv split in three."""
    weights, unused = {}, []
    A, T = "audio_model.audio_encoder.", "text_model."
    for key, value in sd.items():
        m = re.match(r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if key.startswith("text_branch.") and "position_ids" not in key:
            weights[T + key[len("text_branch."):]] = value
        elif re.match(r"(text|audio)_projection\.[02]\.", key):
            side, index, rest = key.split(".", 2)
            weights[f"{side}.linear{1 if index == '0' else 2}.{rest}"] = value
        elif m and m.group(3).startswith("attn.qkv."):
            q, k, v = value.chunk(3, dim=0)
            stem = f"{A}layers.{m.group(1)}.blocks.{m.group(2)}.attention.self."
            for name, part in (("query", q), ("key", k), ("value", v)):
                weights[stem + name + m.group(3)[len("attn.qkv"):]] = part
        elif m and _rename(m.group(3), CLAP_BLOCK) is not None:
            weights[f"{A}layers.{m.group(1)}.blocks.{m.group(2)}.{_rename(m.group(3), CLAP_BLOCK)}"] = value
        elif re.match(r"audio_branch\.(patch_embed\.|norm\.|layers\.\d+\.downsample\.)", key):
            weights[A + key[len("audio_branch."):]] = value
        elif key.startswith("audio_branch.bn0.") and not key.endswith("num_batches_tracked"):
            weights[A + "batch_norm." + key[len("audio_branch.bn0."):]] = value
        elif key in ("logit_scale_a", "logit_scale_t"):
            weights[key] = value
        else:  # the transforms of training, the STFT and mel buffers, HTSAT's classifier head and masks
            unused.append(key)
    word = sd["text_branch.embeddings.word_embeddings.weight"]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_branch.encoder.layer."))
    hidden = word.shape[1]
    depths, heads = [], []
    stage = 0
    while f"audio_branch.layers.{stage}.blocks.0.attn.qkv.weight" in sd:
        depths.append(len({k.split(".")[4] for k in sd if k.startswith(f"audio_branch.layers.{stage}.blocks.")}))
        table = sd[f"audio_branch.layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        heads.append(table.shape[1])
        window = (math.isqrt(table.shape[0]) + 1) // 2
        stage += 1
    patch = sd["audio_branch.patch_embed.proj.weight"]
    projection = sd["text_projection.0.weight"].shape[0]
    config = {
        "architectures": ["ClapModel"], "model_type": "clap", "projection_dim": projection,
        "projection_hidden_act": "relu", "logit_scale_init_value": 14.285714285714285, "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clap_text_model", "vocab_size": word.shape[0], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": hidden // ROBERTA_HEAD_WIDTH,
            "intermediate_size": sd["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
            "max_position_embeddings": sd["text_branch.embeddings.position_embeddings.weight"].shape[0],
            "type_vocab_size": sd["text_branch.embeddings.token_type_embeddings.weight"].shape[0],
            "layer_norm_eps": 1e-5,  # RoBERTa's, as the authors' tower runs (ClapConfig's default is 1e-12)
            "hidden_act": "gelu", "position_embedding_type": "absolute", "projection_dim": projection,
            "projection_hidden_act": "relu", "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        },
        "audio_config": {
            "model_type": "clap_audio_model", "depths": depths, "num_attention_heads": heads,
            "num_hidden_layers": len(depths), "patch_embeds_hidden_size": patch.shape[0],
            "hidden_size": sd["audio_branch.norm.weight"].shape[0], "window_size": window, "spec_size": 256,
            "patch_size": patch.shape[-1], "patch_stride": [patch.shape[-1]] * 2,
            "num_mel_bins": sd["audio_branch.bn0.weight"].shape[0], "patch_embed_input_channels": patch.shape[1],
            "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
            "enable_fusion": False, "fusion_type": None, "enable_patch_layer_norm": True,
            "flatten_patch_embeds": True, "projection_dim": projection, "projection_hidden_act": "relu",
            "num_classes": sd["audio_branch.head.weight"].shape[0] if "audio_branch.head.weight" in sd else 527,
        },
    }
    return weights, config, unused, []


def scheduler_config(state: Tensors, path: Path) -> dict:
    """DDIM as the authors sample: their `betas` buffer, checked to be scaled-linear (sqrt-linear)."""
    config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "steps_offset": 1,
              "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon", **SCHEDULE}
    betas = state.get("betas")
    if betas is not None:
        betas = betas.double()
        n, start, end = len(betas), float(betas[0]), float(betas[-1])
        expected = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
        if not torch.allclose(betas, expected, rtol=1e-6, atol=0):
            raise ConversionError(f"{path}: the 'betas' buffer is not a scaled-linear schedule; only MusicLDM's "
                                  "schedule (linear_start..linear_end, sqrt-linear) is converted")
        # stored as float32: the ends to float32's 7 significant digits give back the YAML's values exactly
        config.update(num_train_timesteps=n, beta_start=float(f"{start:.7g}"), beta_end=float(f"{end:.7g}"))
    return config


# --- 3. The whole checkpoint -----------------------------------------------------------------------------

# where each component lives in the main checkpoint
PREFIXES = {"unet": "model.diffusion_model.", "vocoder": "first_stage_model.vocoder.", "vae": "first_stage_model.",
            "clap": "cond_stage_model.model."}


def split(state: Tensors, path: Path, ema: Optional[bool]) -> Tuple[Dict[str, Tensors], List[str], bool]:
    """{component: its tensors, authors' names}, the keys no component takes, and whether EMA was used."""
    parts: Dict[str, Tensors] = {part: {} for part in PREFIXES}
    unused = []
    for key, value in state.items():
        for part, prefix in PREFIXES.items():  # the vocoder's prefix before the VAE's, which holds it
            if key.startswith(prefix):
                parts[part][key[len(prefix):]] = value
                break
        else:
            unused.append(key)
    twins = {key: "model_ema." + ("diffusion_model." + key).replace(".", "") for key in parts["unet"]}
    present = [t for t in twins.values() if t in state]
    has_ema = bool(twins) and len(present) == len(twins)
    if (present and not has_ema) or (ema and not has_ema):
        key = next((k for k, t in twins.items() if t not in state), "")
        why = "--ema asks for the EMA weights, but" if ema and not present else "the EMA weights are incomplete:"
        raise ConversionError(f"{path}: {why} '{twins.get(key, 'model_ema.*')}' (the EMA twin of "
                              f"'model.diffusion_model.{key}') is missing" + ("; use --no-ema" if ema else ""))
    use_ema = has_ema if ema is None else ema
    ema_keys = set(twins.values()) if has_ema else set()
    if use_ema:
        parts["unet"] = {key: state[twins[key]] for key in parts["unet"]}
    unused = [k for k in unused if k not in ema_keys]
    return parts, unused, use_ema


def _unused_summary(keys: List[str]) -> List[str]:
    """Keys grouped by their first two names: 'first_stage_model.loss.* (3)'; a lone key in full."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        groups.setdefault(".".join(key.split(".")[:2]), []).append(key)
    return [members[0] if len(members) == 1 else f"{stem}.* ({len(members)})" for stem, members in sorted(groups.items())]


def convert(checkpoint: Path, out_dir: Path, *, ema: Optional[bool] = None, vae: Optional[Path] = None,
            vocoder: Optional[Path] = None, clap: Optional[Path] = None,
            tokenizer_from: str = "ucsd-reach/musicldm", head_channels: int = HEAD_CHANNELS,
            log=print) -> dict:
    """Write the folder; returns the report (also OUT_DIR/conversion.json). Checks everything before writing,
    and writes into a temporary folder renamed into place: OUT_DIR is whole or absent."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_out_dir(out_dir)
    if head_channels < 1:
        raise ConversionError(f"--head-channels must be a positive integer, got {head_channels}")
    obj, skipped = read_checkpoint(checkpoint)
    state = state_dict_of(obj, checkpoint)
    parts, unused, used_ema = split(state, checkpoint, ema)
    if "scale_factor" not in state:
        raise ConversionError(f"{checkpoint}: missing key 'scale_factor' (the learned latent scale)")
    scale_factor = float(state["scale_factor"])
    unused = [k for k in unused if k != "scale_factor"]
    sources = {"unet": checkpoint, "vae": checkpoint, "vocoder": checkpoint, "clap": checkpoint}
    for name, path, prefix in (("vae", vae, ""), ("vocoder", vocoder, ""), ("clap", clap, "module.")):
        if path is not None:
            extra, more = read_checkpoint(Path(path))
            skipped.update(more)
            parts[name] = state_dict_of(extra, Path(path), prefix)
            if name == "vae":
                parts[name] = {k: v for k, v in parts[name].items() if not k.startswith("vocoder.")}
            sources[name] = Path(path)
    for name in ("unet", "vae", "vocoder", "clap"):
        if not parts[name]:
            raise ConversionError(f"{sources[name]}: holds no {name} weights ({PREFIXES[name]}*)")
    # the authors' names, for messages and the report: the main file's prefixes, a separate file's own
    stems = {part: PREFIXES[part] if sources[part] == checkpoint else ("module." if part == "clap" else "")
             for part in PREFIXES}

    def run(fn, part, *args):  # a key a converter reads and does not find: named as the authors' file has it
        try:
            return fn(parts[part], sources[part], *args)
        except KeyError as e:
            raise ConversionError(f"{sources[part]}: missing key '{stems[part]}{e.args[0]}'") from None

    unet_w, unet_c, u1, unet_p = run(convert_unet, "unet", head_channels)
    vae_w, vae_c, u2, vae_p = run(convert_vae, "vae", scale_factor)
    voc_w, voc_c, u3, voc_p = run(convert_vocoder, "vocoder")
    clap_w, clap_c, u4, _ = run(convert_clap, "clap")
    unused += [stems["unet"] + k for k in u1] + [stems["vae"] + k for k in u2] + \
        [stems["vocoder"] + k for k in u3] + [stems["clap"] + k for k in u4]
    components = {"unet": (unet_w, unet_c, "diffusion_pytorch_model"), "vae": (vae_w, vae_c, "diffusion_pytorch_model"),
                  "vocoder": (voc_w, voc_c, "model"), "text_encoder": (clap_w, clap_c, "model")}
    names = {"unet": (unet_p, stems["unet"]), "vae": (vae_p, stems["vae"]), "vocoder": (voc_p, stems["vocoder"])}
    _check_fits(components, sources, names)
    report = {"source": str(checkpoint), "ema": used_ema, "scale_factor": scale_factor,
              "unet_heads": unet_c["attention_head_dim"], "text_layer_norm_eps": 1e-5,
              "unused_keys": sorted(unused), "skipped_objects": dict(sorted(skipped.items()))}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as e:
        raise ConversionError(f"{out_dir}: cannot write beside it ({e.strerror})") from None
    try:
        _write(tmp, components, scheduler_config(state, checkpoint), tokenizer_from, clap_c, report)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except OSError as e:  # a full disk, a folder made meanwhile
        raise ConversionError(f"{out_dir}: cannot write the folder ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out_dir}: UNet with {'EMA' if used_ema else 'trained (non-EMA)'} weights, heads "
        f"{unet_c['attention_head_dim']} ({head_channels} channels a head), scaling_factor {scale_factor:.6g}")
    if unused:
        log(f"not used by the model ({len(unused)} keys): " + ", ".join(_unused_summary(sorted(unused))))
    if skipped:
        log("not tensors, skipped: " + ", ".join(f"{k} ({n})" for k, n in sorted(skipped.items())))
    return report


def check_out_dir(out_dir: Path) -> None:
    """OUT_DIR can be made, before the checkpoint is read: it is new (or an empty folder), its parent a
    folder (made if missing) in which a probe folder can be made."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: exists and is not an empty folder; choose a new OUT_DIR")
    parent = out_dir.parent
    blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConversionError(f"{out_dir}: cannot be made: {blocker} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name}.probe.", dir=parent))
    except OSError as e:
        raise ConversionError(f"{out_dir}: cannot be made in {parent} ({e.strerror or e})") from None


def _authors_name(key: str, prefixes, stem: str) -> str:
    """The authors' name of a published key (the prefix tables read backwards), for error messages."""
    for old, new, table in prefixes:
        if key.startswith(new):
            rest = key[len(new):]
            for a, b in table or ():
                if rest.startswith(b):
                    rest = a + rest[len(b):]
                    break
            return stem + old + rest
    return key


def _check_fits(components, sources, names) -> None:
    """Every converted tensor fills exactly one parameter of our modules, at its shape; one line if not, with
    the key's name in the authors' file (the model is built from the checkpoint's own shapes, so a
    misshapen tensor shows as one that disagrees with the rest)."""
    from musicldm_core.clap import Clap
    from musicldm_core.clap_config import ClapConfig
    from musicldm_core.config import UNetConfig, VAEConfig, VocoderConfig
    from musicldm_core.errors import CheckpointError
    from musicldm_core.unet import UNet
    from musicldm_core.vae import AutoencoderKL
    from musicldm_core.vocoder import HifiGan

    from musicldm_core.names import clap as clap_names, diffusers as diffusers_names

    built = {"unet": (UNet, UNetConfig, diffusers_names, "unet"), "vae": (AutoencoderKL, VAEConfig, diffusers_names, "vae"),
             "vocoder": (HifiGan, VocoderConfig, None, "vocoder"), "text_encoder": (Clap, ClapConfig, clap_names, "clap")}
    for name, (weights, config, _) in components.items():
        cls, config_cls, table, part = built[name]
        prefixes, stem = names.get(name, ([], f"{name} (transformers' name) "))
        where = lambda key: repr(_authors_name(key, prefixes, stem)) if prefixes else f"{stem}{key!r}"  # noqa: E731
        try:
            cfg = config_cls.from_hf(config, f"{name}/config.json")
        except CheckpointError as e:
            raise ConversionError(f"{sources[part]}: the {name} weights make no valid model ({e})") from None
        with torch.device("meta"):
            module = cls(cfg)
        to_ours = table.published_to_ours if table else (lambda k: k)
        to_published = table.ours_to_published if table else (lambda k: k)
        expected = {to_published(k): tuple(v.shape) for k, v in module.state_dict().items()}
        for key, value in weights.items():
            if to_ours(key) is None:
                continue  # a known non-weight (position ids and the like)
            if key not in expected:
                raise ConversionError(f"{sources[part]}: key {where(key)} has no place in the {name}")
            if tuple(value.shape) != expected[key]:
                raise ConversionError(f"{sources[part]}: key {where(key)} has shape {list(value.shape)}; the {name} "
                                      f"the other weights describe needs {list(expected[key])}")
        missing = [key for key in expected if key not in weights]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConversionError(f"{sources[part]}: missing key {where(missing[0])}{more}")


def _write(folder: Path, components, scheduler: dict, tokenizer_from: str, clap_config: dict, report: dict) -> None:
    from safetensors.torch import save_file

    for name, (weights, config, stem) in components.items():
        (folder / name).mkdir()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / name / f"{stem}.safetensors"))
        (folder / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    source = _tokenizer_source(tokenizer_from)
    for sub in ("tokenizer", "feature_extractor"):
        shutil.copytree(source / sub, folder / sub)
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    if len(vocab) > clap_config["text_config"]["vocab_size"]:
        raise ConversionError(f"{source / 'tokenizer'}: {len(vocab)} tokens, but the text tower embeds "
                              f"{clap_config['text_config']['vocab_size']}: not this model's tokenizer")
    index = {"_class_name": "MusicLDMPipeline", "_diffusers_version": "0.36.0",
             "feature_extractor": ["transformers", "ClapFeatureExtractor"], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "ClapModel"], "tokenizer": ["transformers", "RobertaTokenizerFast"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "vocoder": ["transformers", "SpeechT5HifiGan"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")


def _tokenizer_source(source: str) -> Path:
    """A folder holding tokenizer/ and feature_extractor/, or a Hub id whose two folders are fetched."""
    path = Path(source)
    if path.is_dir():
        missing = [s for s in ("tokenizer", "feature_extractor") if not (path / s).is_dir()]
        if missing:
            raise ConversionError(f"--tokenizer-from {source}: no {missing[0]}/ folder in it")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["tokenizer/*", "feature_extractor/*"]))
    except Exception as e:
        raise ConversionError(f"--tokenizer-from {source}: not a folder, and the Hub did not give its tokenizer "
                              f"({type(e).__name__}); pass a local folder in the diffusers layout") from None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_convert.original",
                                     description="Convert the MusicLDM authors' checkpoint to a diffusers-layout "
                                                 "folder (safetensors), without running pickle.")
    parser.add_argument("checkpoint", type=Path, help="musicldm-ckpt.ckpt (or a fine-tune in its layout)")
    parser.add_argument("out_dir", type=Path, help="a new folder")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ema", dest="ema", action="store_true", default=None,
                       help="the UNet's EMA weights (the default when the checkpoint has them: the authors sample "
                            "with them)")
    group.add_argument("--no-ema", dest="ema", action="store_false", help="the UNet's trained (non-EMA) weights")
    parser.add_argument("--vae", type=Path, help="vae-ckpt.ckpt, in place of the main checkpoint's VAE")
    parser.add_argument("--vocoder", type=Path, help="hifigan-ckpt.ckpt (weight-norm generator)")
    parser.add_argument("--clap", type=Path, help="clap-ckpt.pt (LAION CLAP, `module.` names)")
    parser.add_argument("--tokenizer-from", default="ucsd-reach/musicldm",
                        help="where tokenizer/ and feature_extractor/ come from: a folder or Hub id")
    parser.add_argument("--head-channels", type=int, default=HEAD_CHANNELS,
                        help="channels per UNet attention head (the authors' num_head_channels)")
    args = parser.parse_args(argv)
    try:
        convert(args.checkpoint, args.out_dir, ema=args.ema, vae=args.vae, vocoder=args.vocoder, clap=args.clap,
                tokenizer_from=args.tokenizer_from, head_channels=args.head_channels)
    except ConversionError as e:
        print(f"weights_convert.original: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
