"""Long form: time and peak memory of one generation at several lengths, one markdown table.

    python benchmarks/longform.py                     # CPU, full size, 10.24 / 40.96 / 163.84 s, 2 steps

Each length runs in a fresh process (peak RSS is the process's maximum resident set, model
included). Up to the trained 10.24 s the pipeline takes the reference's whole-latent path; beyond
it, the windowed path, whose memory should not grow with the length. `--whole` adds the
whole-latent path at every length for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from common import ROOT, default_weights, write_result

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from musicldm_core import MusicLDMPipeline
pipe = MusicLDMPipeline.from_pretrained({weights!r})
start = time.perf_counter()
out = pipe("techno with a fast beat", audio_length_in_s={seconds}, num_inference_steps={steps}, window={window!r},
           generator=torch.Generator().manual_seed(0)).audios
took = time.perf_counter() - start
trained = pipe.unet.config.sample_size * pipe.vae_scale_factor * pipe.vocoder.config.hop_length / pipe.sampling_rate
print(json.dumps({{"time": took, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "samples": out.shape[-1], "trained": trained}}))
"""


def run(weights: str, seconds: float, steps: int, threads: int, window: str) -> dict:
    code = CHILD.format(threads=threads, weights=weights, seconds=seconds, steps=steps, window=window)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the tests' full-size fixture)")
    p.add_argument("--seconds", type=float, nargs="+", default=[10.24, 40.96, 163.84])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--whole", action="store_true", help="also the whole-latent path at every length")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    weights = args.weights or default_weights()
    rows = []
    for seconds in args.seconds:
        for window in ("auto", "whole") if args.whole else ("auto",):
            r = run(weights, seconds, args.steps, args.threads, window)
            path = "whole latent" if window == "whole" or seconds <= r["trained"] else "windowed"
            rows.append((seconds, path, r["time"], r["rss"] / 2**30))
            print(f"{seconds:g} s, {path}: {r['time']:.1f} s, peak RSS {r['rss'] / 2**30:.2f} GiB", flush=True)
    base = rows[0][3]
    header = (f"# Long form, {datetime.date.today()}\n\n{platform.processor() or platform.machine()}, {args.threads} "
              f"threads, fp32, {args.steps} DDIM steps, guidance 2; random weights at the published shapes. Peak RSS "
              "includes the memory-mapped weights (about 2 GB).\n\n")
    table = ("| length | path | time | peak RSS | RSS vs first row |\n|---|---|---|---|---|\n"
             + "".join(f"| {s:g} s | {p} | {t:.1f} s | {m:.2f} GiB | {m / base:.2f} |\n" for s, p, t, m in rows))
    write_result(header + table, args.out, f"longform-cpu-{datetime.date.today()}")


if __name__ == "__main__":
    main()
