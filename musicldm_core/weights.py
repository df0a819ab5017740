"""Strict, pickle-free weight loading from safetensors (single file or sharded).

The model is first built on the `meta` device (no memory), then every tensor is read from the
memory-mapped file one at a time, cast to the target dtype and device, and *assigned* as the
parameter. So the full model never exists twice in memory, and nothing is unpickled.

Every mismatch is collected and reported in one error: published keys that map to no parameter,
parameters no published key fills, and shapes that differ — each with the file it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type, TypeVar

import torch
from safetensors import safe_open

from .errors import CheckpointError

M = TypeVar("M", bound=torch.nn.Module)
KeyMap = Callable[[str], Optional[str]]  # published key -> our key; None = a known non-weight


def weight_files(folder: Path, stem: str) -> List[Path]:
    """The safetensors file(s) of one component: `<stem>.safetensors` or a sharded index.

    `stem` is "diffusion_pytorch_model" (diffusers) or "model" (transformers).
    """
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard file(s) not found: {', '.join(missing)}")
        return [folder / s for s in shards]
    others = sorted(p.name for p in folder.glob(f"{stem}.*")) if folder.is_dir() else []
    hint = f" (found {', '.join(others)}: only safetensors is loaded, never pickle)" if others else ""
    raise CheckpointError(f"{single}: file not found, nor {index.name}{hint}")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own SafetensorError (header, truncation, ...)
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def read_shapes(files: Iterable[Path]) -> Dict[str, Tuple[Tuple[int, ...], Path]]:
    """Key -> (shape, file) from the headers alone; reads no tensor data."""
    shapes: Dict[str, Tuple[Tuple[int, ...], Path]] = {}
    for path in files:
        with _open(path) as f:
            for key in f.keys():
                if key in shapes:
                    raise CheckpointError(f"{path}: key {key!r} also appears in {shapes[key][1]}")
                shapes[key] = (tuple(f.get_slice(key).get_shape()), path)
    return shapes


def check_keys(
    expected: Dict[str, Tuple[int, ...]],
    found: Dict[str, Tuple[Tuple[int, ...], Path]],
    key_map: KeyMap,
    what: str,
) -> Dict[str, str]:
    """Match published keys to parameters; raise one error listing every problem.

    Returns {published key: our key} for the keys to load.
    """
    mapping: Dict[str, str] = {}
    unexpected, wrong_shape = [], []
    for key, (shape, path) in found.items():
        ours = key_map(key)
        if ours is None:
            continue
        if ours not in expected:
            unexpected.append(f"  unexpected key {key!r} {list(shape)} in {path}")
        elif tuple(expected[ours]) != shape:
            wrong_shape.append(
                f"  wrong shape for {key!r}: expected {list(expected[ours])}, found {list(shape)} in {path}"
            )
        else:
            mapping[key] = ours
    targets = {key_map(k) for k in found}
    missing = [f"  missing key {k!r} {list(s)}" for k, s in expected.items() if k not in targets]
    problems = missing + unexpected + wrong_shape
    if problems:
        files = sorted({str(p) for _, p in found.values()})
        raise CheckpointError(
            f"{what}: the checkpoint does not fit the model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong_shape)} of the wrong shape) in {', '.join(files) or 'no file'}:\n"
            + "\n".join(problems)
        )
    return mapping


def load_module(
    build: Callable[[], M],
    files: List[Path],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    key_map: KeyMap = lambda k: k,
    what: str = "model",
) -> M:
    """Build a module on the meta device and fill it from safetensors `files`, strictly.

    Floating-point tensors are cast to `dtype`; integer buffers keep theirs.
    """
    with torch.device("meta"):
        module = build()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = read_shapes(files)
    mapping = check_keys(expected, found, key_map, what)
    state: Dict[str, torch.Tensor] = {}
    for path in files:
        with _open(path) as f:
            for key in f.keys():
                if key not in mapping:
                    continue
                t = f.get_tensor(key)
                state[mapping[key]] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
