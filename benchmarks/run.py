"""musicldm_core beside diffusers' MusicLDMPipeline: one command, one markdown table.

    python benchmarks/run.py                      # CPU, fp32, full-size random-weight checkpoint
    python benchmarks/run.py --device cuda --dtype float16 --steps 200 --compile
    python benchmarks/run.py --seconds 5.12 --steps 20 --compile       # the compiled path on the CPU

Both sides load the same checkpoint (default: the tests' full-size fixture, built if needed) and
run with the same threads, inputs and seeds. Every figure is the median of --repeats runs, the two
sides run in turn (interleaved); cold start and peak memory are measured in fresh processes. GFLOP/s
of each stage is shown beside the machine's measured fp32 matmul rate, so the distance to the floor
shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, default_weights, write_result

# Stage workloads at 10.24 s (from torch.utils.flop_counter on the published shapes): GFLOP.
FLOPS = {"unet_forward_b1": 91.5, "vae_decode": 636.0, "vocoder": 1027.0}


def timed(fn, repeats: int, sync, warmup: bool = True) -> float:
    """Median wall time of fn() over `repeats` runs, after one warm-up run."""
    if warmup:
        fn()
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(ref_fn, our_fn, repeats: int, sync, warmup: bool = True) -> tuple:
    """Median wall times of ref_fn() and our_fn(), run in turn (ref, ours, ref, ours, ...) so that a
    machine whose speed drifts weighs on both alike; after one warm-up run of each."""
    ref, ours = [], []
    for _ in range(repeats):
        ref.append(timed(ref_fn, 1, sync, warmup))
        ours.append(timed(our_fn, 1, sync, warmup))
        warmup = False
    return statistics.median(ref), statistics.median(ours)


CHILD = r"""
import os, sys, time, json
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
side, folder, device, dtype, steps, seconds, low_memory = {args!r}
dtype = getattr(torch, dtype)
if side == "ours":
    from musicldm_core import MusicLDMPipeline
    pipe = MusicLDMPipeline.from_pretrained(folder, device=device, dtype=dtype)
    if low_memory:
        pipe.enable_low_memory()
else:
    import diffusers, transformers
    diffusers.utils.logging.set_verbosity_error(); transformers.utils.logging.set_verbosity_error()
    from diffusers import MusicLDMPipeline
    pipe = MusicLDMPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
loaded = time.perf_counter() - t0
out = {{"cold_start": loaded}}
if steps:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pipe("techno with a fast beat", num_inference_steps=steps, audio_length_in_s=seconds,
         generator=torch.Generator().manual_seed(0))
    out["peak_gpu"] = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
out["peak_rss"] = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print("RESULT" + json.dumps(out))
"""


def fresh_process(side, folder, device, dtype, steps, seconds, threads, low_memory=False) -> dict:
    code = CHILD.format(threads=threads, args=(side, str(folder), device, dtype, steps, seconds, low_memory))
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    if r.returncode or not line:
        raise RuntimeError(f"{side} process failed:\n{r.stderr[-2000:]}")
    return json.loads(line[0][len("RESULT"):])


def fresh_process_rows(folder, args) -> list:
    """Cold start (median of --repeats) and peak memory of load + 2 steps, each side in new processes."""
    def run(side, steps, low_memory=False):
        return fresh_process(side, folder, args.device, args.dtype, steps, args.seconds, args.threads, low_memory)

    cold = {side: statistics.median(run(side, 0)["cold_start"] for _ in range(args.repeats))
            for side in ("reference", "ours")}
    key = "peak_gpu" if args.device.startswith("cuda") else "peak_rss"
    peak = {side: run(side, 2)[key] / 2**30 for side in ("reference", "ours")}
    a, b = cold["reference"], cold["ours"]
    rows = [("cold start (import + load)", f"{a:.2f} s", f"{b:.2f} s", f"{b / a:.2f}", "")]
    a, b = peak["reference"], peak["ours"]
    what = "max_memory_allocated" if key == "peak_gpu" else "RSS"
    rows.append((f"peak memory ({what}, load + 2 steps)", f"{a:.2f} GiB", f"{b:.2f} GiB", f"{b / a:.2f}", ""))
    if key == "peak_rss":
        b = run("ours", 2, low_memory=True)[key] / 2**30
        rows.append(("peak memory, ours with enable_low_memory()", f"{a:.2f} GiB", f"{b:.2f} GiB", f"{b / a:.2f}",
                     ""))
    return rows


GUIDANCE = 2.0  # the pipelines' default guidance scale, so the step compiled by the generation is reused


def matmul_rate(device, dtype, sync) -> float:
    import torch

    n = 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 3, sync) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the full-size test fixture)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--steps", type=int, default=10, help="steps of the whole-generation row")
    p.add_argument("--seconds", type=float, default=10.24, help="audio length of every row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="add rows for ours after pipe.compile()")
    p.add_argument("--generation-only", action="store_true",
                   help="only the whole-generation rows (eager, compiled): no stage rows, no fresh processes")
    p.add_argument("--channels-last", action="store_true", help="add rows for our UNet and VAE in channels_last")
    p.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/<device>-<date>.md)")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if args.weights:
        folder = Path(args.weights)
    else:
        folder = Path(default_weights())
    device, dtype = args.device, getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    # first, while this process is still small
    fresh_rows = [] if args.generation_only else fresh_process_rows(folder, args)

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    from diffusers import MusicLDMPipeline as Reference

    from musicldm_core import MusicLDMPipeline
    from musicldm_core.guidance import guided_eps

    ref = Reference.from_pretrained(folder, torch_dtype=dtype).to(device)
    ref.set_progress_bar_config(disable=True)
    ours = MusicLDMPipeline.from_pretrained(folder, device=device, dtype=dtype)

    frames = int(np.ceil(int(args.seconds / 0.01) / 4))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, frames, 16, generator=g).to(device, dtype)
    c = torch.randn(2, 512, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    mel = torch.randn(1, frames * 4, 64, generator=g).to(device, dtype)
    rows = []

    def row(name, ref_fn, our_fn, gflop=None, repeats=args.repeats, warmup=True):
        with torch.inference_mode():
            a, b = interleaved(ref_fn, our_fn, repeats, sync, warmup)
        rate = f"{gflop / a:.0f} / {gflop / b:.0f}" if gflop else ""
        rows.append((name, f"{a:.3f} s", f"{b:.3f} s", f"{b / a:.2f}", rate))
        print(rows[-1], flush=True)
        return a, b

    prompt = ["techno with a fast beat"]
    stage_row = (lambda *a, **k: None) if args.generation_only else row
    stage_row("text encoding (prompt + negative)",
        lambda: ref._encode_prompt(prompt, device, 1, True),
        lambda: torch.cat([ours.encode_prompt([""], None, device), ours.encode_prompt(prompt, None, device)]))
    stage_row("UNet forward, batch 2", lambda: ref.unet(z, t, encoder_hidden_states=None, class_labels=c),
        lambda: ours.unet(z, t, c), 2 * FLOPS["unet_forward_b1"] * frames / 256)
    stage_row("VAE decode", lambda: ref.vae.decode(z[:1]), lambda: ours.vae.decode(z[:1]),
        FLOPS["vae_decode"] * frames / 256)
    stage_row("vocoder", lambda: ref.vocoder(mel), lambda: ours.vocoder(mel), FLOPS["vocoder"] * frames / 256)
    gen_kw = dict(prompt=prompt[0], num_inference_steps=args.steps, audio_length_in_s=args.seconds)
    # a generation's FLOPs: the guided UNet (batch 2) every step, one VAE decode, one vocoder pass
    gen_gflop = (args.steps * 2 * FLOPS["unet_forward_b1"] + FLOPS["vae_decode"] + FLOPS["vocoder"]) * frames / 256
    generations = {}  # name -> (diffusers, ours) seconds, set against the compute floor at the end
    generations["eager"] = row(
        f"generation, {args.steps} steps", lambda: ref(**gen_kw, generator=torch.Generator().manual_seed(0)),
        lambda: ours(**gen_kw, generator=torch.Generator().manual_seed(0)), gen_gflop,
        repeats=max(1, args.repeats - 1), warmup=args.generation_only)  # else the stage rows warmed both sides up
    if args.compile:
        ours.compile()
        ours(**gen_kw, generator=torch.Generator().manual_seed(0))  # compiles for this shape
        compiled = ours.compile_seconds()
        # the compiled stage is a step's whole model evaluation: both guidance halves, one batch-2 UNet call
        ref_unet = lambda x, step, cond: ref.unet(x, step, encoder_hidden_states=None, class_labels=cond).sample  # noqa: E731
        stage_row("UNet step (guided, batch 2), ours compiled", lambda: guided_eps(ref_unet, z[:1], t, c, GUIDANCE),
            lambda: ours.compiled["unet"](ours.unet, z[:1], t, c, GUIDANCE),
            2 * FLOPS["unet_forward_b1"] * frames / 256)
        generations["ours compiled"] = row(
            f"generation, {args.steps} steps, ours compiled (after a warm-up call)",
            lambda: ref(**gen_kw, generator=torch.Generator().manual_seed(0)),
            lambda: ours(**gen_kw, generator=torch.Generator().manual_seed(0)), gen_gflop,
            repeats=max(1, args.repeats - 1), warmup=False)
        rows.append(("compile time, ours (once per shape)", "", ", ".join(f"{k} {v:.0f} s" for k, v in compiled.items()),
                     "", ""))
        ours.compiled = {}
    if device == "cpu" and not args.generation_only:
        ours.enable_low_memory()
        row(f"generation, {args.steps} steps, ours with enable_low_memory()",
            lambda: ref(**gen_kw, generator=torch.Generator().manual_seed(0)),
            lambda: ours(**gen_kw, generator=torch.Generator().manual_seed(0)),
            repeats=max(1, args.repeats - 1), warmup=False)
    if args.channels_last:  # last: it changes our modules' layout for good
        ours.unet.to(memory_format=torch.channels_last)
        ours.vae.to(memory_format=torch.channels_last)
        zc = z.contiguous(memory_format=torch.channels_last)
        row("UNet forward, batch 2, ours channels_last", lambda: ref.unet(z, t, encoder_hidden_states=None,
                                                                          class_labels=c),
            lambda: ours.unet(zc, t, c), 2 * FLOPS["unet_forward_b1"] * frames / 256)
        row("VAE decode, ours channels_last", lambda: ref.vae.decode(z[:1]), lambda: ours.vae.decode(zc[:1]),
            FLOPS["vae_decode"] * frames / 256)
    rows += fresh_rows
    rate = matmul_rate(device, dtype, sync)
    rows.append((f"compute floor of the {args.steps}-step generation ({gen_gflop:.0f} GFLOP at the matmul rate)",
                 "", f"{gen_gflop / rate:.3f} s", "", ""))
    for name, (a, b) in generations.items():
        rows.append((f"generation time over the compute floor ({name})", f"{a * rate / gen_gflop:.2f}x",
                     f"{b * rate / gen_gflop:.2f}x", "", ""))
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{cpu}, {args.threads} threads"
    header = (f"## {datetime.date.today()} — {name}, {args.dtype}, {args.seconds} s audio\n\n"
              f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
              f"{transformers.__version__}; checkpoint: random weights at the published shapes. Median of "
              f"{args.repeats}. Measured {args.dtype} matmul rate: {rate:.0f} GFLOP/s.\n\n")
    table = ("| stage | diffusers | musicldm_core | ratio | GFLOP/s (diffusers / ours) |\n"
             "|---|---|---|---|---|\n" + "".join(f"| {' | '.join(r)} |\n" for r in rows))
    kind = "cpu" if device == "cpu" else torch.cuda.get_device_name().replace(" ", "-").lower()
    write_result(header + table, args.out, f"{kind}-{args.dtype}-{datetime.date.today()}")


if __name__ == "__main__":
    main()
