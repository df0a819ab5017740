"""The errors musicldm_core raises on bad checkpoints and damaged outputs, and the output checks.

Importing this module imports nothing heavy (no torch): the command line's --help and --version use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class CheckpointError(ValueError):
    """A checkpoint folder, file, config or weight does not match what the model needs.

    The message always names the file (and the key or shape where one is at fault).
    """


class InputTooLong(ValueError):
    """An input audio longer than audio-to-audio reads (audio_frontend.MAX_INPUT_SECONDS): the web page's
    server answers it with 413 (too large), every other bad input with 400."""


class TooMuchMemory(ValueError):
    """A request that cannot fit in the device's memory; `argument` is the name (as its caller's user typed
    it) of the length that would make it fit when smaller, so that the page shows it by that field."""

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument


class DamagedOutputError(RuntimeError):
    """A stage of generation produced NaN or infinite values, or a constant waveform (half-precision
    overflow, a damaged weight): raised instead of returning or writing it."""


def check_finite(x: "torch.Tensor", what: str, component: str) -> None:
    """NaN or inf never leaves silently: name the stage and the likely causes."""
    if not x.isfinite().all():
        cause = (f"{x.dtype} overflowed (try float32)" if x.element_size() == 2  # float16, bfloat16
                 else f"a damaged (NaN or infinite) weight in {component}/ is the likely cause")
        raise DamagedOutputError(f"{what} contain NaN or infinite values: {cause}")


def check_waveforms(audio: "torch.Tensor") -> None:
    """(N, samples) waveforms: finite, and none constant (e.g. the tanh of an inf in the vocoder)."""
    check_finite(audio, "the waveform", "vocoder")
    if audio.shape[-1] > 1 and (audio.amax(dim=-1) == audio.amin(dim=-1)).any():
        raise DamagedOutputError("the waveform of a take is constant: a damaged weight in vocoder/ is the likely cause")
