"""Reading a PyTorch (Lightning) checkpoint without running it.

`torch.load(weights_only=True)` first. Lightning's own objects (hyper-parameters, callbacks) and numpy values
stop it, so then a restricted unpickler reads the file: it rebuilds tensors and plain containers, turns the
objects of known data libraries into inert placeholders it names, and refuses any other global (a function
such as os.system) before anything runs. Before either, the archive's declared sizes and the pickle's
opcodes are walked (pickletools: nothing is built) so that a hostile length is refused by name."""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

Tensors = Dict[str, torch.Tensor]


class ConversionError(Exception):
    """One line that names the file and the key or object at fault."""


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
        archive = zipfile.ZipFile(path)
        declared = sum(info.file_size for info in archive.infolist())
    except Exception as e:  # BadZipFile, OSError, NotImplementedError (an unknown zip version), ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{path}: a damaged zip archive ({first})") from None
    with archive:
        size = path.stat().st_size
        if declared > size:
            raise ConversionError(f"{path}: its archive declares {declared} bytes inflated from a file of {size} "
                                  "(torch.save stores its entries uncompressed): refused unread")
        check_pickle(archive, path)


def check_pickle(archive: zipfile.ZipFile, path: Path) -> None:
    """The archive's pickle walked opcode by opcode (pickletools reads, runs nothing) before any unpickler
    sees it: an opcode that declares more bytes than the pickle holds (2**62 for a bytearray), or one that
    does not exist, is refused by name. Left to them, torch's weights-only unpickler fails on such a length
    in a way that leaves CPython printing "deallocated bytearray object has exported buffers"."""
    import pickletools

    try:
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
