"""Batch mode throughput: items per minute at several --batch-size values, one markdown table.

    python benchmarks/batch.py                                  # CPU, full-size checkpoint
    python benchmarks/batch.py --device cuda --sizes 1 4 8 16   # per GPU

Each batch size runs the same prompt file in a fresh process (`python -m musicldm_core --prompts`)
into a fresh folder; the rate is items / the summed per-item generation time from the manifest
(model loading excluded), so it is the steady-state throughput of one process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, default_weights, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the tests' full-size fixture)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.56)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exact-batches", action="store_true", help="run the command with --exact-batches")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    weights = args.weights or default_weights()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("".join(f"a song number {i}\n" for i in range(args.items)))
        for size in args.sizes:
            out = Path(tmp) / f"out-{size}"
            cmd = [sys.executable, "-m", "musicldm_core", "--prompts", str(prompts), "--out-dir", str(out),
                   "--weights", weights, "--steps", str(args.steps), "--seconds", str(args.seconds), "--device",
                   args.device, "--threads", str(args.threads), "--batch-size", str(size)]
            if args.dtype:
                cmd += ["--dtype", args.dtype]
            if args.exact_batches:
                cmd += ["--exact-batches"]
            subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, cwd=ROOT)
            records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            seconds = sum(r["time"] for r in records)
            rows.append((size, len(records) / seconds * 60, seconds / len(records)))
            print(f"batch size {size}: {rows[-1][1]:.2f} items/min", flush=True)
    base = rows[0][1]
    header = (f"# Batch mode throughput, {args.device}, {datetime.date.today()}\n\n{platform.processor() or platform.machine()}"
              f", {args.threads} threads, {args.items} items of {args.seconds} s, {args.steps} DDIM steps, guidance 2 "
              f"(UNet rows = 2 x batch size), {'with' if args.exact_batches else 'without'} --exact-batches; random "
              "weights at the published shapes.\n\n")
    table = ("| --batch-size | items/min | s/item | vs batch 1 |\n|---|---|---|---|\n"
             + "".join(f"| {s} | {r:.2f} | {t:.2f} | {r / base:.2f}x |\n" for s, r, t in rows))
    exact = "-exact" if args.exact_batches else ""
    write_result(header + table, args.out, f"batch-{args.device}{exact}-{datetime.date.today()}")


if __name__ == "__main__":
    main()
