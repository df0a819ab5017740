"""Where a generation's time goes, stage by stage, against the compute floor (FLOPs / matmul rate).

    python benchmarks/stages.py                         # CPU, full size, 10.24 s, 200 steps
    python benchmarks/stages.py --steps 10              # a draft: decode and vocode weigh more

Each model stage is timed alone (median of --repeats after a warm-up) on the published shapes, its
FLOPs counted by torch.utils.flop_counter on the same call, and set against the machine's fp32 matmul
rate; the denoising row is one guided UNet step (batch 2) times the steps. The command line's own
work (import, load, open and plan the request, write the file with its tag) is timed in-process the
way `musicldm` does it, so a gap there shows beside the models'.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import default_weights, write_result


def timed(fn, repeats: int) -> float:
    """Median wall seconds of fn() after a warm-up call."""
    return timed_with_kernel(fn, repeats)[0]


def timed_with_kernel(fn, repeats: int) -> tuple:
    """(median wall seconds, median kernel (system) CPU seconds) of fn() after a warm-up call: the kernel
    time is mostly page faults, the price of memory mapped afresh for each new activation."""
    import resource

    fn()
    times, kernel = [], []
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0)
    return statistics.median(times), statistics.median(kernel)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the tests' full-size fixture)")
    p.add_argument("--seconds", type=float, default=10.24)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--plain-malloc", action="store_true",
                   help="leave glibc's malloc as it is (the command line keeps freed memory: cli.keep_freed_memory)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    weights = args.weights or default_weights()
    if not args.plain_malloc:
        from musicldm_core.app.cli import keep_freed_memory

        keep_freed_memory()

    t0 = time.perf_counter()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from musicldm_core import MusicLDMPipeline
    from musicldm_core.app.batch import item_options
    from musicldm_core.app.prompt_file import Item
    from musicldm_core.guidance import guided_eps
    from musicldm_core.load import open_checkpoint
    from musicldm_core.app.files import check_outputs, output_paths, write_audio
    from musicldm_core.options import plan_call
    imported = time.perf_counter() - t0
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    pipe = MusicLDMPipeline.from_pretrained(weights)
    loaded = time.perf_counter() - t0

    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    rate = 2 * n**3 / timed(lambda: a @ b, 3) / 1e9  # GFLOP/s

    frames = pipe.geometry.frames(args.seconds)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 8, frames // 4, 16, generator=g)
    c = torch.randn(2, 512, generator=g)
    t = torch.tensor(500)
    mel = torch.randn(1, 1, frames, 64, generator=g)

    def gflop(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / 1e9

    stages = {
        "text encoding (prompt + negative)": lambda: pipe.encode_prompt(["", "techno with a fast beat"], None, pipe.device),
        "denoising: one guided UNet step (batch 2)": lambda: guided_eps(pipe.unet, z, t, c, 2.0),
        "VAE decode": lambda: pipe.decode_mel(z),
        "vocoder": lambda: pipe.vocode(mel),
    }
    rows = []
    with torch.inference_mode():
        for name, fn in stages.items():
            (seconds, kernel), work = timed_with_kernel(fn, args.repeats), gflop(fn)
            rows.append([name, seconds, work, kernel])
            print(rows[-1], flush=True)
    rows[1] = [f"denoising: {args.steps} guided UNet steps (batch 2)", rows[1][1] * args.steps,
               rows[1][2] * args.steps, rows[1][3] * args.steps]

    checkpoint = open_checkpoint(weights)
    item = Item(0, "cli", "techno with a fast beat", None, args.seconds, 0, args.steps, 2.0, 1, None)
    plan = lambda: plan_call(item_options([item]), checkpoint.configs, checkpoint.scheduler, pipe.device)  # noqa: E731
    audio = torch.randn(1, int(args.seconds * 16000)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = output_paths(str(Path(tmp) / "music.wav"), 1)
        write = lambda: (check_outputs(path), write_audio(path, audio, 16000, comments=["musicldm x" * 40]))  # noqa
        overhead = {"import torch and musicldm_core": imported, "load the weights (from_pretrained)": loaded,
                    "open the checkpoint and plan the request": timed(lambda: (open_checkpoint(weights), plan()),
                                                                       args.repeats),
                    "check the output and write the WAV with its tag": timed(write, args.repeats)}
    model_total = sum(r[1] for r in rows)
    total = model_total + sum(overhead.values())
    table = ("| stage | time | of which kernel (page faults) | share | GFLOP | compute floor | over the floor |\n"
             "|---|---|---|---|---|---|---|\n")
    for name, seconds, work, kernel in rows:
        floor = work / rate
        table += (f"| {name} | {seconds:.2f} s | {kernel:.2f} s | {100 * seconds / total:.1f}% | {work:.0f} | "
                  f"{floor:.2f} s | {seconds / floor:.2f}x |\n")
    for name, seconds in overhead.items():
        table += f"| {name} | {seconds:.3f} s |  | {100 * seconds / total:.2f}% |  |  |  |\n"
    table += f"| total | {total:.1f} s | {sum(r[3] for r in rows):.2f} s | 100% | {sum(r[2] for r in rows):.0f} | " \
             f"{sum(r[2] for r in rows) / rate:.1f} s | {model_total / (sum(r[2] for r in rows) / rate):.2f}x |\n"
    cpu = platform.processor() or platform.machine()
    header = (f"# Where the time goes, {datetime.date.today()}\n\n{cpu}, {args.threads} threads, torch "
              f"{torch.__version__}; full-size random weights; {args.seconds} s of audio, {args.steps} DDIM steps, "
              f"guidance 2. Measured fp32 matmul rate: {rate:.0f} GFLOP/s. Median of {args.repeats}. glibc malloc "
              f"{'as it is' if args.plain_malloc else 'keeping freed memory (as the command line runs)'}. The "
              "FLOPs are torch.utils.flop_counter's: convolutions and matrix products (attention's are not "
              "counted, so its time shows as distance from the floor).\n\n")
    write_result(header + table, args.out, f"stages-cpu-{datetime.date.today()}")


if __name__ == "__main__":
    sys.exit(main())
