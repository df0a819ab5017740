"""Mutation testing of one module with its own tests: how many planted bugs the tests catch.

    python benchmarks/mutation.py musicldm_core/longform.py
    python benchmarks/mutation.py musicldm_core/options.py --tests tests/test_pipeline_inputs.py

mutmut (from the test extra) rewrites the module into one mutant per small change (an operator, a
constant, a comparison, a dropped argument) and runs, for each, the tests that reach the mutated
function: a mutant they fail on is killed; one they pass on survived, and is either a missing test or
an equivalent mutant (a change that cannot alter behaviour), to be killed or explained. It works in a
copy of the repository in a temporary folder, so the working tree is never touched, and switches
mutants inside the test process: the tests' `musicldm` helper then runs the command line in that
process (MUSICLDM_TESTS_IN_PROCESS=1) instead of a subprocess, which would import the unmutated
package; the few tests that need a real process (kill -9, torchrun) count for nothing here. The test
command does not run this (a module takes minutes to an hour). Results are appended to
benchmarks/results/mutation-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT

TINY = ["-m", "not full_size"]  # the tiny checkpoint's cases of a test that runs both
# module -> the tests that guard it
TESTS = {
    # the stand-in denoiser's trajectories reach every line the tiny UNet's do, in a fifth of the time
    "musicldm_core/samplers/schedule.py": ["tests/parity/test_samplers.py", "tests/parity/test_config.py",
                                           "-k", "not tiny_unet_trajectories and not a_thousand_steps"],
    "musicldm_core/longform.py": ["tests/test_longform.py", "tests/test_editing.py", "tests/test_properties.py",
                                  *TINY],
    "musicldm_core/editing.py": ["tests/test_editing.py", "tests/test_longform.py", "tests/test_properties.py",
                                 *TINY],
    # every check called directly, without a model: milliseconds a mutant (the pipeline's and the command line's
    # refusal tests reach the same lines through a loaded checkpoint, in seconds)
    "musicldm_core/options.py": ["tests/test_options.py"],
    "musicldm_core/app/files.py": ["tests/test_outputs.py"],
    "musicldm_core/app/manifest.py": ["tests/test_outputs.py"],  # likewise: what the command line and batch mode write
    # its parts on their own, and whole runs of the tiny checkpoint in this process (not torchrun, kill -9 or the
    # full size: a subprocess runs the unmutated package)
    "musicldm_core/app/batch.py": ["tests/test_batch.py", "tests/test_editing.py", "-k", "(test_batch and not sigkill and "
                               "not torchrun and not full_size) or seed_zero_in_a_batch_line"],
    # its own contract, and its parity against transformers' extractor, AudioLDM's mel and librosa
    "musicldm_core/audio_frontend.py": ["tests/test_audio_frontend.py", "tests/test_longform.py",
                                        "tests/parity/test_clap.py", "tests/parity/test_clap_configs.py", "-k",
                                        "test_audio_frontend or log_mel or resample or feature_extractor or rand_trunc "
                                        "or fusion or mel_filters or crop_is"],
}
STATES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "segfault")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("module", help="the file to mutate, e.g. musicldm_core/longform.py")
    p.add_argument("--tests", nargs="+", default=None, help="the tests to run (default: TESTS[module])")
    p.add_argument("--children", type=int, default=os.cpu_count() or 1, help="mutants run in parallel")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="CPU seconds a mutant's tests may take beyond twice their measured time (their fixtures are "
                        "not in that measure) before it counts as timed out")
    p.add_argument("--only", nargs="+", default=(), metavar="PATTERN",
                   help="run only the mutants whose names match (fnmatch), e.g. '*NoiseSchedule*__init__*'")
    p.add_argument("--out", default=None, help="the results file (default: benchmarks/results/mutation-DATE.md)")
    args = p.parse_args()
    tests = args.tests or TESTS.get(args.module)
    if not tests:
        sys.exit(f"mutation.py: no tests known for {args.module}; give --tests")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp)
        for name in ("musicldm_core", "weights_convert", "tests"):
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        listed = lambda values: "".join(f"\n    {v}" for v in values)  # noqa: E731 - setup.cfg lists
        (work / "setup.cfg").write_text(
            f"[mutmut]\nsource_paths=musicldm_core/\nalso_copy={listed(['weights_convert/'])}\n"
            f"only_mutate={listed([args.module])}\npytest_add_cli_args_test_selection={listed(tests)}\n"
            # mutmut's limit is (measured + constant) * multiplier * 2 CPU seconds
            f"timeout_multiplier=1\ntimeout_constant={args.timeout / 2}\n"
            # torch's thread pool does not survive a fork from a process that has used it (the stats pass has):
            # mutants are forked from a server that has only collected the tests
            "process_isolation=forkserver\n")
        # one thread per mutant: the children share the cores, and CPU time is what the limit counts
        env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1",
               "MUSICLDM_TESTS_IN_PROCESS": "1"}
        subprocess.run(["mutmut", "run", "--max-children", str(args.children), *args.only], cwd=work, env=env,
                       stdout=subprocess.DEVNULL, check=True)
        results = subprocess.run(["mutmut", "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                                 text=True, check=True).stdout
        states = dict(re.findall(r"^\s*(\S+): (.+?)\s*$", results, re.M))
        survivors = sorted(name for name, state in states.items() if state == "survived")
        diffs = {name: subprocess.run(["mutmut", "show", name], cwd=work, env=env, capture_output=True,
                                      text=True).stdout for name in survivors}
    report(args.module, tests, states, diffs, args.only, Path(args.out or ROOT / "benchmarks" / "results" /
                                                   f"mutation-{datetime.date.today()}.md"))


def report(module: str, tests, states: dict, diffs: dict, only, out: Path) -> None:
    """One section per run: the counts, the share killed, each survivor's changed lines."""
    counts = {state: sum(1 for s in states.values() if s == state) for state in STATES}
    decided = counts["killed"] + counts["survived"] + counts["timeout"]
    share = counts["killed"] / max(1, decided)
    lines = [f"## {module}" + (f" (only {', '.join(only)})" if only else "") + "\n", f"Tests: `{shlex.join(tests)}`.\n",
             ", ".join(f"{n} {state}" for state, n in counts.items() if n) + f": **{share:.0%} killed** of those the "
             "tests reach (before equivalents are set apart).\n"]
    for name, diff in diffs.items():
        changed = [d[1:].strip() for d in diff.splitlines() if d[:1] in "-+" and not d.startswith(("---", "+++"))]
        lines.append(f"- survived `{name}`: " + " -> ".join(f"`{c}`" for c in changed[:2]))
    text = "\n".join(lines) + "\n\n"
    if not out.exists():
        text = f"# Mutation testing, {datetime.date.today()}\n\n`python benchmarks/mutation.py MODULE`\n\n" + text
    with open(out, "a", encoding="utf-8") as f:
        f.write(text)
    print(text + f"appended to {out}")


if __name__ == "__main__":
    main()
