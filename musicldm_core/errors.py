"""The errors musicldm_core raises on bad checkpoints and bad arguments."""


class CheckpointError(ValueError):
    """A checkpoint folder, file, config or weight does not match what the model needs.

    The message always names the file (and the key or shape where one is at fault).
    """


class DamagedOutputError(RuntimeError):
    """A stage of generation produced NaN or infinite values, or a constant waveform (half-precision
    overflow, a damaged weight): raised instead of returning or writing it."""
