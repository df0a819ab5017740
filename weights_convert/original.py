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

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .layouts import HEAD_CHANNELS, Component, convert_clap, convert_unet, convert_vae, convert_vocoder, scheduler_config
from .reader import ConversionError, Tensors, read_checkpoint, state_dict_of

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


class Release(NamedTuple):
    """The authors' files as read: each component's tensors (under their names), the file each came from and
    the prefix that file gives its names, the main checkpoint's state, and what no component takes."""

    parts: Dict[str, Tensors]
    sources: Dict[str, Path]
    stems: Dict[str, str]
    state: Tensors
    unused: List[str]
    used_ema: bool
    skipped: Dict[str, int]


def read_release(checkpoint: Path, ema: Optional[bool], separate: Dict[str, Optional[Path]]) -> Release:
    """The main checkpoint split into its components, each replaced by its separate file when one is given
    (`separate`: vae, vocoder, clap -> a path or None)."""
    obj, skipped = read_checkpoint(checkpoint)
    state = state_dict_of(obj, checkpoint)
    parts, unused, used_ema = split(state, checkpoint, ema)
    sources = {part: checkpoint for part in PREFIXES}
    for name, path in separate.items():
        if path is not None:
            extra, more = read_checkpoint(Path(path))
            skipped.update(more)
            parts[name] = state_dict_of(extra, Path(path), "module." if name == "clap" else "")
            if name == "vae":
                parts[name] = {k: v for k, v in parts[name].items() if not k.startswith("vocoder.")}
            sources[name] = Path(path)
    for name in ("unet", "vae", "vocoder", "clap"):
        if not parts[name]:
            raise ConversionError(f"{sources[name]}: holds no {name} weights ({PREFIXES[name]}*)")
    # the authors' names, for messages and the report: the main file's prefixes, a separate file's own
    stems = {part: PREFIXES[part] if sources[part] == checkpoint else ("module." if part == "clap" else "")
             for part in PREFIXES}
    return Release(parts, sources, stems, state, unused, used_ema, skipped)


def convert_release(release: Release, head_channels: int, scale_factor: float) -> Tuple[Dict[str, Component],
                                                                                           List[str]]:
    """({folder: its Component}, the keys no component uses, in the authors' names)."""
    def run(fn, part, *args) -> Component:  # a key a converter reads and does not find: named as the file has it
        try:
            return fn(release.parts[part], release.sources[part], *args)
        except KeyError as e:
            raise ConversionError(f"{release.sources[part]}: missing key '{release.stems[part]}{e.args[0]}'") from None

    components = {"unet": run(convert_unet, "unet", head_channels), "vae": run(convert_vae, "vae", scale_factor),
                  "vocoder": run(convert_vocoder, "vocoder"), "text_encoder": run(convert_clap, "clap")}
    parts = {"unet": "unet", "vae": "vae", "vocoder": "vocoder", "text_encoder": "clap"}
    unused = [release.stems[parts[name]] + key for name, c in components.items() for key in c.unused]
    return components, unused


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
    release = read_release(checkpoint, ema, {"vae": vae, "vocoder": vocoder, "clap": clap})
    if "scale_factor" not in release.state:
        raise ConversionError(f"{checkpoint}: missing key 'scale_factor' (the learned latent scale)")
    scale_factor = float(release.state["scale_factor"])
    components, unused = convert_release(release, head_channels, scale_factor)
    unused = [k for k in release.unused if k != "scale_factor"] + unused
    _check_fits(components, release)
    heads = components["unet"].config["attention_head_dim"]
    report = {"source": str(checkpoint), "ema": release.used_ema, "scale_factor": scale_factor, "unet_heads": heads,
              "text_layer_norm_eps": 1e-5, "unused_keys": sorted(unused),
              "skipped_objects": dict(sorted(release.skipped.items()))}
    _write_whole(out_dir, components, scheduler_config(release.state, checkpoint), tokenizer_from, report)
    log(f"wrote {out_dir}: UNet with {'EMA' if release.used_ema else 'trained (non-EMA)'} weights, heads "
        f"{heads} ({head_channels} channels a head), scaling_factor {scale_factor:.6g}")
    if unused:
        log(f"not used by the model ({len(unused)} keys): " + ", ".join(_unused_summary(sorted(unused))))
    if release.skipped:
        log("not tensors, skipped: " + ", ".join(f"{k} ({n})" for k, n in sorted(release.skipped.items())))
    return report


def _write_whole(out_dir: Path, components: Dict[str, Component], scheduler: dict, tokenizer_from: str,
                 report: dict) -> None:
    """The folder written into a temporary one beside it, renamed into place: whole or absent."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as e:
        raise ConversionError(f"{out_dir}: cannot write beside it ({e.strerror})") from None
    try:
        _write(tmp, components, scheduler, tokenizer_from, report)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except OSError as e:  # a full disk, a folder made meanwhile
        raise ConversionError(f"{out_dir}: cannot write the folder ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _check_fits(components: Dict[str, Component], release: Release) -> None:
    """Every converted tensor fills exactly one parameter of our modules, at its shape; one line if not, with
    the key's name in the authors' file (the model is built from the checkpoint's own shapes, so a
    misshapen tensor shows as one that disagrees with the rest)."""
    from musicldm_core.clap import Clap
    from musicldm_core.clap_config import ClapConfig
    from musicldm_core.config import VAEConfig, VocoderConfig
    from musicldm_core.unet_config import UNetConfig
    from musicldm_core.errors import CheckpointError
    from musicldm_core.unet import UNet
    from musicldm_core.vae import AutoencoderKL
    from musicldm_core.vocoder import HifiGan

    from musicldm_core.names import clap as clap_names, diffusers as diffusers_names

    built = {"unet": (UNet, UNetConfig, diffusers_names, "unet"), "vae": (AutoencoderKL, VAEConfig, diffusers_names, "vae"),
             "vocoder": (HifiGan, VocoderConfig, None, "vocoder"), "text_encoder": (Clap, ClapConfig, clap_names, "clap")}
    sources = release.sources
    for name, (weights, config, _, prefixes) in components.items():
        cls, config_cls, table, part = built[name]
        stem = release.stems[part] if prefixes else f"{name} (transformers' name) "
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


def _write(folder: Path, components: Dict[str, Component], scheduler: dict, tokenizer_from: str,
           report: dict) -> None:
    from safetensors.torch import save_file

    clap_config = components["text_encoder"].config
    for name, (weights, config, _, _) in components.items():
        stem = "model" if name in ("vocoder", "text_encoder") else "diffusion_pytorch_model"
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
