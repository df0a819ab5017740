"""The batch-composition error: how far an item made in a batch is from the same item made alone, when
the UNet runs batched (the default; `--exact-batches` makes it 0).

    python benchmarks/composition.py                    # full size, 8 mixed prompts, 2.56 s, 10 steps

Eight items of mixed prompts, each with its own seed, are made as batch mode makes them (batch.generate)
at batch sizes 1, 2, 4 and 8 and at 1 and 2 threads. Each item's audio is compared with the same item
made alone at 1 thread: the error of a row is the largest, over the items, of max |x - alone| / max |alone|.
"""

from __future__ import annotations

import argparse
import datetime
import platform

from common import default_weights, write_result

PROMPTS = ["techno with a fast beat", "a calm piano ballad", "jazz trio with brushed drums", "heavy metal riff",
           "ambient pad with rain", "a string quartet", "lo-fi hip hop", "a marching band"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the tests' full-size fixture)")
    p.add_argument("--seconds", type=float, default=2.56)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import numpy as np
    import torch

    from musicldm_core import MusicLDMPipeline
    from musicldm_core.app.batch import generate
    from musicldm_core.app.prompt_file import Item

    pipe = MusicLDMPipeline.from_pretrained(args.weights or default_weights())
    items = [Item(i, f"i{i}", prompt, None, args.seconds, 1000 + i, args.steps, 2.0, 1, None)
             for i, prompt in enumerate(PROMPTS)]

    def made(size: int, threads: int) -> list:
        torch.set_num_threads(threads)
        out = []
        for start in range(0, len(items), size):
            out += [a[0] for a in generate(pipe, items[start:start + size])[0]]
        return out

    alone = made(1, 1)
    rows = []
    for threads in args.threads:
        for size in args.sizes:
            got = alone if (size, threads) == (1, 1) else made(size, threads)
            errors = [float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(got, alone)]
            rows.append((threads, size, max(errors), sum(e == 0 for e in errors)))
            print(rows[-1], flush=True)
    worst = max(r[2] for r in rows)
    header = (f"# Batch-composition error, {datetime.date.today()}\n\n{platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}; full-size random weights; {len(items)} items of mixed prompts, "
              f"{args.seconds} s, {args.steps} DDIM steps, guidance 2, the UNet batched (no --exact-batches). "
              "Each item against the same item made alone at 1 thread: max |x - alone| / max |alone|, the "
              f"largest over the items.\n\nLargest of all: {worst:.2e}.\n\n")
    table = "| threads | batch size | max relative error | items bit-equal |\n|---|---|---|---|\n" + "".join(
        f"| {t} | {s} | {e:.2e} | {n} of {len(items)} |\n" for t, s, e, n in rows)
    write_result(header + table, args.out, f"composition-cpu-{datetime.date.today()}")


if __name__ == "__main__":
    main()
