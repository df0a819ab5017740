"""What every benchmark script shares: the default checkpoint and where a result table goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_weights() -> str:
    """The tests' random-weight checkpoint at the published shapes, built (once) by its own script."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "reference_checkpoints.py"), "full"], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]


def write_result(text: str, out, default_name: str) -> Path:
    """Print a result table and write it to `out` or benchmarks/results/<default_name>.md."""
    print("\n" + text)
    path = Path(out) if out else ROOT / "benchmarks" / "results" / f"{default_name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")
    return path
