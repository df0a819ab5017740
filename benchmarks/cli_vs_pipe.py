"""A `musicldm` run against the equivalent `pipe()` call, each a whole process, interleaved.

    python benchmarks/cli_vs_pipe.py                    # full size, 5.12 s, 10 steps, 5 rounds

Each round runs, in turn: the command line; a Python process that loads the pipeline, calls it with
the same arguments and writes the WAV; and the command line with --exact-batches. The table gives each
one's median wall time and its ratio to the pipe() process; the audio of the first two must be equal
to the bit (checked, and said in the table).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, default_weights, write_result

PIPE = r"""
import sys, torch, soundfile as sf
from musicldm_core import MusicLDMPipeline
weights, out, steps, seconds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
pipe = MusicLDMPipeline.from_pretrained(weights)
audio = pipe("techno with a fast beat", num_inference_steps=steps, audio_length_in_s=seconds,
             generator=torch.Generator().manual_seed(0)).audios[0]
sf.write(out, audio, pipe.sampling_rate, subtype="FLOAT")
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the tests' full-size fixture)")
    p.add_argument("--seconds", type=float, default=5.12)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    weights = args.weights or default_weights()
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: str(Path(tmp) / f"{name}.wav") for name in ("cli", "pipe", "exact")}
        common = ["techno with a fast beat", "--weights", weights, "--steps", str(args.steps), "--seconds",
                  str(args.seconds), "--seed", "0", "--threads", str(args.threads)]
        commands = {
            "musicldm": [sys.executable, "-m", "musicldm_core", *common, "-o", files["cli"]],
            "pipe()": [sys.executable, "-c", PIPE, weights, files["pipe"], str(args.steps), str(args.seconds),
                       str(args.threads)],
            "musicldm --exact-batches": [sys.executable, "-m", "musicldm_core", *common, "-o", files["exact"],
                                         "--exact-batches"],
        }
        times = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
                times[name].append(time.perf_counter() - t0)
            print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
        import numpy as np
        import soundfile as sf

        equal = np.array_equal(sf.read(files["cli"], dtype="float32")[0], sf.read(files["pipe"], dtype="float32")[0])
    base = statistics.median(times["pipe()"])
    header = (f"# musicldm against pipe(), {datetime.date.today()}\n\n{platform.processor() or platform.machine()}, "
              f"{args.threads} threads; full-size random weights; {args.seconds} s, {args.steps} DDIM steps, "
              f"guidance 2, seed 0; each a whole process (import, load, generate, write), {args.rounds} rounds "
              f"interleaved. The command line's audio {'equals' if equal else 'DIFFERS from'} pipe()'s to the bit."
              "\n\n")
    table = "| process | median | min | max | vs pipe() |\n|---|---|---|---|---|\n" + "".join(
        f"| {name} | {statistics.median(v):.2f} s | {min(v):.2f} s | {max(v):.2f} s | "
        f"{statistics.median(v) / base:.3f}x |\n" for name, v in times.items())
    write_result(header + table, args.out, f"cli-vs-pipe-cpu-{datetime.date.today()}")
    if not equal:
        sys.exit("the command line's audio differs from pipe()'s")


if __name__ == "__main__":
    main()
