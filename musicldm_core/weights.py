"""Strict, pickle-free weight loading from safetensors (single file or sharded).

The model is first built on the `meta` device (no memory). Each file is memory-mapped
copy-on-write and every tensor becomes a view of the mapping: on the CPU in the stored dtype the
parameters *are* the file's pages (no copy at all, read lazily by the OS); otherwise each tensor is
cast to the target dtype/device one at a time and its pages are dropped from memory right after.
So the model never exists twice in memory, and nothing is unpickled.

Every mismatch is collected and reported in one error: published keys that map to no parameter,
parameters no published key fills, and shapes that differ — each with the file it came from.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

import torch
from safetensors import safe_open

from . import names as published_names
from .errors import CheckpointError

M = TypeVar("M", bound=torch.nn.Module)
KeyMap = Callable[[str], Optional[str]]  # published key -> our key; None = a known non-weight


def _same(key: str) -> str:
    return key


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
    others = sorted(p.name for p in folder.glob("*.bin")) if folder.is_dir() else []
    hint = (f" (found {', '.join(others)}: only safetensors is loaded, never pickle; convert once with "
            f"`python -m weights_convert.to_safetensors {folder}`)") if others else ""
    raise CheckpointError(f"{single}: file not found, nor {index.name}{hint}")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own SafetensorError (header, truncation, ...)
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


class MappedFile:
    """The tensors of one safetensors file as views of a copy-on-write memory map.

    The safetensors library validates the file (header, sizes); the byte offsets come from the
    header it validated. Parameters are never written, so no page is ever copied.
    """

    def __init__(self, path: Path):
        with _open(path) as f:  # validation: a corrupt or truncated file fails here, by name
            keys = set(f.keys())
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        start = 8 + n
        self.path = path
        self.entries = {}
        for key in keys:
            info = header[key]
            if info["dtype"] not in DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            self.entries[key] = (DTYPES[info["dtype"]], tuple(info["shape"]), start + begin, start + end)

    def tensor(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[key]
        count = end - begin
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if begin % itemsize:  # unaligned: a copy (safetensors does not promise alignment)
            return torch.frombuffer(bytearray(self.map[begin:end]), dtype=dtype).view(shape)
        return torch.frombuffer(self.map, dtype=dtype, count=count // itemsize, offset=begin).view(shape)

    def page_out(self) -> None:
        """Ask the kernel to reclaim every resident page of the mapping (MADV_PAGEOUT, Linux >= 5.4).

        Clean pages are simply dropped and read back from the page cache on next use; pages that
        were written (copy-on-write) are kept, so no change to a weight is ever lost. A no-op
        where the kernel or platform lacks it.
        """
        try:
            self.map.madvise(getattr(mmap, "MADV_PAGEOUT", 21))
        except (AttributeError, OSError, ValueError):
            pass

    def release(self, key: str) -> None:
        """Drop the pages of a tensor that was copied elsewhere (they reload from disk if read again)."""
        _, _, begin, end = self.entries[key]
        page = mmap.PAGESIZE
        first, last = begin // page * page, -(-end // page) * page
        if hasattr(self.map, "madvise") and last > first:
            self.map.madvise(mmap.MADV_DONTNEED, first, min(last, len(self.map)) - first)


def read_shapes(files: Iterable[Path]) -> Dict[str, Tuple[Tuple[int, ...], Path]]:
    """Key -> (shape, file) from the headers alone; reads no tensor data."""
    return _shapes([MappedFile(path) for path in files])


def _shapes(mapped: List[MappedFile]) -> Dict[str, Tuple[Tuple[int, ...], Path]]:
    shapes: Dict[str, Tuple[Tuple[int, ...], Path]] = {}
    for f in mapped:
        for key, (_, shape, _, _) in f.entries.items():
            if key in shapes:
                raise CheckpointError(f"{f.path}: key {key!r} also appears in {shapes[key][1]}")
            shapes[key] = (shape, f.path)
    return shapes


def check_keys(
    expected: Dict[str, Tuple[int, ...]],
    found: Dict[str, Tuple[Tuple[int, ...], Path]],
    key_map: KeyMap,
    what: str,
    published_name: Callable[[str], str] = _same,
) -> Dict[str, str]:
    """Match published keys to parameters; raise one error listing every problem, by published name.

    Returns {published key: our key} for the keys to load.
    """
    mapping: Dict[str, str] = {}
    targets = set()
    unexpected, wrong_shape = [], []
    for key, (shape, path) in found.items():
        ours = key_map(key)
        if ours is None:
            continue
        targets.add(ours)
        if ours not in expected:
            unexpected.append(f"  unexpected key {key!r} {list(shape)} in {path}")
        elif tuple(expected[ours]) != shape:
            wrong_shape.append(
                f"  wrong shape for {key!r}: expected {list(expected[ours])}, found {list(shape)} in {path}"
            )
        else:
            mapping[key] = ours
    missing = [f"  missing key {published_name(k)!r} {list(s)}" for k, s in expected.items() if k not in targets]
    problems = missing + unexpected + wrong_shape
    if problems:
        files = sorted({str(p) for _, p in found.values()})
        first = "; ".join(p.strip() for p in problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
        raise CheckpointError(  # the first line stands alone (the command line shows only it); then every problem
            f"{what}: the checkpoint does not fit the model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong_shape)} of the wrong shape; {first}) in {', '.join(files) or 'no file'}:\n"
            + "\n".join(problems)
        )
    return mapping


def load_module(
    build: Callable[[], M],
    files: List[Path],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    names: Optional[ModuleType] = None,
    what: str = "model",
) -> M:
    """Build a module on the meta device and fill it from safetensors `files`, strictly.

    names: the table that maps published keys onto ours (`published_to_ours`, `ours_to_published`);
    by default the built module's own (names.of), none where they are equal. Floating-point tensors are cast to `dtype`;
    integer buffers keep theirs.
    """
    with torch.device("meta"):
        module = build()
    names = names or published_names.of(module)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    mapped = [MappedFile(path) for path in files]  # each header validated and parsed once
    mapping = check_keys(expected, _shapes(mapped), names.published_to_ours if names else _same, what,
                         names.ours_to_published if names else _same)
    floating = {k for k, v in module.state_dict().items() if v.is_floating_point()}
    wrong = [f"{key!r} is {f.entries[key][0]} in {f.path}, where the model needs floating-point values"
             for f in mapped for key in f.entries if mapping.get(key) in floating and not f.entries[key][0].is_floating_point]
    if wrong:  # the first line names a key and its file on its own (the command line shows only it)
        more = f" (and {len(wrong) - 1} more weight(s) of an integer or boolean dtype:)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{what}: weight {wrong[0]}{more}" + "".join(f"\n  {w}" for w in wrong[1:]))
    state: Dict[str, torch.Tensor] = {}
    device = torch.device(device)
    for f in mapped:
        for key in f.entries:
            if key not in mapping:
                continue
            view = f.tensor(key)
            target = dtype if view.is_floating_point() else view.dtype
            if device.type == "cpu" and view.dtype == target:
                state[mapping[key]] = view  # zero-copy: the parameter is the mapped file
            else:
                state[mapping[key]] = view.to(device=device, dtype=target, copy=True)
                f.release(key)
    module.load_state_dict(state, strict=True, assign=True)
    module._mapped_files = mapped  # for page_out(); keeps nothing alive that the parameters do not
    return module.eval().requires_grad_(False)


def load_component(cls: Callable[..., M], config_cls, folder: str | Path, stem: str, *,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   names: Optional[ModuleType] = None) -> M:
    """`folder/config.json` and `folder/<stem>.safetensors` (or its shards) -> `cls(config)`, loaded."""
    folder = Path(folder)
    cfg = config_cls.from_json(folder / "config.json")
    return load_module(lambda: cls(cfg), weight_files(folder, stem), device=device, dtype=dtype, names=names,
                       what=str(folder))


def page_out(module: torch.nn.Module) -> None:
    """Drop the resident pages of a module's memory-mapped weights (see MappedFile.page_out)."""
    for f in getattr(module, "_mapped_files", ()):
        f.page_out()
