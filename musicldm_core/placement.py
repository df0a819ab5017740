"""Where the components live and in what precision: devices, dtypes, offload, memory.

The precision policy, in one place (`component_dtype`): every component computes in the pipeline's
dtype, except the HiFi-GAN vocoder, which always stays float32. In float16 its residual sums
overflow with real weights (inf/NaN, or clipped silence); in bfloat16 its 8-bit mantissa would put
rounding noise into the waveform itself (about -48 dB); and it runs once per generation, so float32
costs little.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .errors import TooMuchMemory, arg
from .weights import page_out

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """A torch device that exists here; a clear error otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: unknown device {device!r} (use 'cpu', 'cuda', 'cuda:1', 'mps')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: {device!r} is not supported (use 'cpu', 'cuda' or 'mps')")
    return dev


def default_device() -> str:
    """The best device here: cuda, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype: {dtype!r} is not supported (use float32, float16 or bfloat16)")


def component_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype component `name` is held and computed in when the pipeline runs in `dtype`."""
    return torch.float32 if name == "vocoder" else dtype


class Placement:
    """The components' device and dtype, and which of them is resident while another runs.

    Three modes: all on one device (default); model CPU offload (GPU: each component moved to the
    device only while it runs); low memory (CPU: the memory-mapped weights of the components not
    running are handed back to the kernel, to be read again from the page cache when next used).
    """

    def __init__(self, components: Callable[[], Dict[str, torch.nn.Module]]):
        self.components = components  # the pipeline's current name -> module map
        self.offload_device: Optional[torch.device] = None
        self.low_memory = False

    @property
    def device(self) -> torch.device:
        return self.offload_device or next(self.components()["unet"].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.components()["unet"].parameters()).dtype

    def to(self, device: Optional[torch.device], dtype: Optional[torch.dtype]) -> None:
        for name, module in self.components().items():
            module.to(device=device, dtype=component_dtype(name, dtype) if dtype is not None else None)
        if device is not None:
            self.offload_device = None

    def offload(self, device: torch.device) -> None:
        for module in self.components().values():
            module.to("cpu")
        self.offload_device = device

    def ready(self, name: str) -> torch.nn.Module:
        """Component `name`, ready to run: on the execution device (with offload: it alone there)
        and, in low-memory mode, the only one whose weights stay resident."""
        components = self.components()
        if self.offload_device is not None:
            for other, m in components.items():
                m.to(self.offload_device if other == name else "cpu")
        if self.low_memory:
            for other, m in components.items():
                if other != name:
                    page_out(m)
        return components[name]


def check_memory(configs: tuple, device: torch.device, takes: int, frames: int, guided: bool, seconds: float,
                 vae_slicing: bool, window: Optional[int] = None, way_out: Optional[Tuple[int, str]] = None,
                 input_samples: int = 0, length: str = "audio_length_in_s") -> None:
    """Refuse a request whose activations cannot fit in the memory available on `device`, from the
    (UNet, VAE, vocoder) configs alone: callable before the weights load.

    A coarse estimate (estimate_memory: activations of the largest stage, the latents, the waveforms
    and an input's spectrogram; the weights come on top), meant to stop what cannot possibly run (an
    hour of audio, a million takes) with a clear line instead of an allocator error.
    way_out: (window, words): the windowed path's window in mel frames, named in the refusal by `words`
    when it would fit. length: the
    argument that sets the length (audio-to-audio: "extend" or "audio", whose length it takes).
    """
    need, stage = estimate_memory(*configs, takes, frames, guided, vae_slicing, window, input_samples)
    available = available_memory(device)
    if available is not None and need > 0.9 * available:
        sliced, _ = estimate_memory(*configs, takes, frames, guided, True, window, input_samples)
        windowed = way_out and estimate_memory(*configs, takes, frames, guided, vae_slicing, way_out[0],
                                               input_samples)[0]
        hint = ("; enable_vae_slicing() would make it fit" if sliced <= 0.9 * available else
                f", or {way_out[1]} (the memory of one window)" if windowed and windowed <= 0.9 * available else "")
        raise TooMuchMemory(f"{takes} take(s) of {seconds:g} s need about {need / 2**30:.1f} GiB of memory in the "
                         f"{stage}, but {available / 2**30:.1f} GiB is available on {device}: ask for a smaller "
                         f"{arg('num_waveforms_per_prompt')} or {arg(length)}{hint}", length)


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for new tensors on `device` (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def estimate_memory(u, v, h, takes: int, frames: int, guided: bool, vae_slicing: bool,
                    window: Optional[int] = None, input_samples: int = 0) -> tuple[int, str]:
    """(bytes, stage): activations of the stage that needs most, plus latents and waveforms, for the
    UNet, VAE and vocoder configs u, v, h.

    window: the windowed path's window in mel frames; activations then scale with it (times the
    two windows stacked per UNet call), latents and waveforms still with the whole length.
    UNet: every resolution level holds its skip connections and a few temporaries (2L + 4 maps of
    C x T x F per row, twice the rows with guidance). VAE decoder: about four maps per level at
    the mel resolution of that level. Vocoder: each upsampling stage holds its input, output and
    the residual branches. An input of audio-to-audio (input_samples at 16 kHz): its STFT, the
    real and imaginary halves of n_fft / 2 + 1 bins a mel frame (n_fft at most 8 hops), then its mel;
    and its encoding, one trained window at a time (about four maps per VAE encoder level).
    Counted in float32 (the widest the models compute in).
    """
    f, bins = v.scale_factor, h.model_in_dim
    rows = takes * (2 if guided else 1)
    whole, frames = frames, frames if window is None else min(frames, window)
    unet_bytes = sum(c * (frames // f >> i) * (bins // f >> i) * (2 * n + 4)
                     for i, (c, n) in enumerate(zip(u.block_out_channels, u.layers_per_block))) * rows
    chans = list(reversed(v.block_out_channels))
    vae_bytes = sum(c * (frames >> (len(chans) - 1 - i)) * (bins >> (len(chans) - 1 - i)) * 4
                    for i, c in enumerate(chans)) * (1 if vae_slicing else takes)
    length, vocoder_bytes = frames, 0
    for i, rate in enumerate(h.upsample_rates):
        length *= rate
        vocoder_bytes = max(vocoder_bytes, (h.upsample_initial_channel >> (i + 1)) * length
                            * (len(h.resblock_kernel_sizes) + 3))
    input_frames = input_samples // h.hop_length + 1
    encoded = min(input_frames, (u.sample_size or input_frames) * f) if input_samples else 0  # one trained window
    encoder_bytes = sum(c * (encoded >> i) * (bins >> i) * 4 for i, c in enumerate(v.block_out_channels))
    stages = {"UNet": unet_bytes * (1 if window is None else 2), "VAE decoder": vae_bytes,
              "vocoder": vocoder_bytes * takes, "input's spectrogram": (8 * h.hop_length + 2 + bins) * input_frames,
              "VAE encoder": encoder_bytes}
    stage = max(stages, key=stages.get)
    # the waveforms and their 3x resampled copy when ranking; the latents, the noise and their copies
    buffers = takes * whole * h.hop_length * 8 + rows * u.in_channels * (whole // f) * (bins // f) * 3
    return 4 * (stages[stage] + buffers), stage if stages[stage] >= buffers else "latents and waveforms"
