"""The errors musicldm_core raises on bad requests, bad checkpoints and damaged outputs, and the output checks.

Importing this module imports nothing heavy (no torch): the command line's --help and --version use it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
    import torch

MARK = "\x1f"  # around an argument's name inside a RequestError's message (see arg)


def arg(name: str) -> str:
    """An argument's name as a RequestError's message holds it: shown as `pipe(...)` names it, or by the
    name of the surface that took the value once that edge renames the error (RequestError.renamed)."""
    return f"{MARK}{name}{MARK}"


class RequestError(ValueError):
    """An argument of a call that cannot be run: its value, what is allowed, and the argument by its
    `pipe(...)` name. The core never learns a surface's names: the command line, a batch line or the page
    renames the error once, where it took the value (`renamed(names)`: --seconds, seconds, ...).
    `argument`: the argument at fault when there is one (the page shows the error by its field)."""

    def __init__(self, message: str, argument: Optional[str] = None):
        super().__init__(message)
        self.argument = argument

    def __str__(self) -> str:
        return self.named({})

    def named(self, names: Mapping[str, str]) -> str:
        """The message, each marked argument by names.get(it, it)."""
        parts = str(self.args[0] if self.args else "").split(MARK)
        return "".join(names.get(p, p) if i % 2 else p for i, p in enumerate(parts))

    def renamed(self, names: Mapping[str, str]) -> "RequestError":
        """The same error (same class) in a surface's names for the arguments."""
        other = self.__class__.__new__(self.__class__)
        other.__dict__.update(self.__dict__)
        other.args = (self.named(names),)
        other.argument = names.get(self.argument, self.argument) if self.argument else None
        return other


class CheckpointError(ValueError):
    """A checkpoint folder, file, config or weight does not match what the model needs.

    The message always names the file (and the key or shape where one is at fault).
    """


class RequestTypeError(RequestError, TypeError):
    """A RequestError that diffusers raises as a TypeError (a negative prompt of another type than the prompt)."""


class InputTooLong(RequestError):
    """An input audio longer than audio-to-audio reads (audio_input.MAX_INPUT_SECONDS): the web page's
    server answers it with 413 (too large), every other bad input with 400."""


class TooMuchMemory(RequestError):
    """A request that cannot fit in the device's memory; `argument` is the length that would make it fit
    when smaller, so that the page shows it by that field."""


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
