"""Convert a component's pickle weights (`*.bin`) to safetensors, once, safely.

musicldm_core loads safetensors only. Some MusicLDM uploads (e.g. a repo with only
`pytorch_model.bin` / `diffusion_pytorch_model.bin`) ship pickle files; this reads each with
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only, never
arbitrary objects, and writes `<stem>.safetensors` beside it:

    python -m weights_convert.to_safetensors path/to/checkpoint [more folders ...]

Each folder is searched recursively; an existing safetensors file is left alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import List


def convert_folder(folder: Path) -> List[Path]:
    """Write `<stem>.safetensors` next to every `<stem>.bin` under `folder`; returns the new files."""
    import torch
    from safetensors.torch import save_file

    written = []
    for src in sorted(Path(folder).rglob("*.bin")):
        dst = src.with_suffix(".safetensors")
        if dst.exists():
            continue
        state = torch.load(src, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{src}: not a state dict of tensors")
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, dst)  # whole or not at all
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(dst)
    return written


def main(argv: List[str] | None = None) -> int:
    folders = sys.argv[1:] if argv is None else argv
    if not folders:
        print("usage: python -m weights_convert.to_safetensors FOLDER [FOLDER ...]", file=sys.stderr)
        return 2
    for folder in folders:
        if not Path(folder).is_dir():
            print(f"{folder}: no such folder", file=sys.stderr)
            return 1
        for path in convert_folder(Path(folder)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
