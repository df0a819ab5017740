"""Progress through a generation's stages, for a person watching the command line.

The pipeline reports `(stage, done, total)` (pipeline.generate): "reading the input" (the resampling of
an audio-to-audio input, which the command line does before the model loads), "encoding the prompt", "denoising"
(steps), "decoding" and "vocoding" (windows), "ranking takes". On a terminal each stage gets its own
bar, drawn when the stage starts (never an empty one before). Elsewhere (logs, CI, torchrun ranks)
each stage is one plain line when it ends, with its elapsed time, and a long stage says where it is
every INTERVAL seconds meanwhile (so that a log never looks hung):

    musicldm: denoising 57/200 steps so far (60 s, about 151 s left)
    musicldm: denoising 200/200 steps (148.2 s)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

UNITS = {"denoising": "steps", "decoding": "windows", "vocoding": "windows", "encoding the input": "windows",
         "decoding the input": "windows", "vocoding the input": "windows"}  # (inpaint, extend: its round trip)
INTERVAL = float(os.environ.get("MUSICLDM_PROGRESS_INTERVAL", "30"))  # seconds between a long stage's lines


class StageProgress:
    """A `progress` callback for Options; `close()` ends the last stage. prefix: e.g. the batch's items."""

    def __init__(self, prefix: str = "", stream: Optional[TextIO] = None):
        self.prefix, self.stream = prefix, stream or sys.stderr
        self.bars = self.stream.isatty() and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "0") in ("", "0")
        self.stage: Optional[str] = None
        self.done = self.total = 0
        self.began = self.said = 0.0  # when the stage began, when a line last said where it is
        self.detail = ""  # inside a long step: ", window 37/150 of this step"
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if ": " in stage:  # a detail of the current stage ("denoising: windows" inside a long step)
            self.detail = f", {stage.split(': ', 1)[1][:-1]} {done}/{total} of this {UNITS.get(self.stage, 'it')[:-1]}"
            return self._say_where()
        if stage != self.stage:
            self.close()
            self.stage, self.began = stage, time.monotonic()
            if self.bars:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=f"{self.prefix}{stage}", unit=UNITS.get(stage, "it")[:-1],
                                file=self.stream, leave=False)
        self.done, self.total = done, total
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        else:
            self.detail = ""
            self._say_where()

    def _say_where(self) -> None:
        """Outside a terminal, every INTERVAL seconds of a stage: where it is, and about how long is left."""
        if self.bar is not None or self.stage is None or self.done >= self.total \
                or time.monotonic() - max(self.began, self.said) < INTERVAL:
            return
        self.said = time.monotonic()
        elapsed, unit, done, total = self.said - self.began, UNITS.get(self.stage, ""), self.done, self.total
        left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
        print(f"musicldm: {self.prefix}{self.stage} {done}/{total} {unit} so far{self.detail} ({elapsed:.0f} s{left})"
              .replace("  ", " "), file=self.stream, flush=True)

    def close(self) -> None:
        if self.stage is None:
            return
        seconds = time.monotonic() - self.began
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        unit = UNITS.get(self.stage)
        count = f" {self.done}/{self.total}{' ' + unit if unit else ''}" if unit else ""
        print(f"musicldm: {self.prefix}{self.stage}{count} ({seconds:.1f} s)", file=self.stream, flush=True)
        self.stage = None
