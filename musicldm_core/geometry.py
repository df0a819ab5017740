"""Lengths, once: seconds <-> mel frames <-> latent frames, the trained window, the latent shape.

Every stage that needs a length (the plan of a request, long form, editing, the memory estimate,
batch mode) asks here, so the arithmetic is written once. With the published configs:

    waveform   16000 samples/s  --(hop 160: the vocoder's upsampling)-->  mel   100 frames/s, 64 bins
    mel        --(VAE factor 4 along both axes)-->  latent  25 frames/s (40 ms each), 16 columns, 8 channels
    trained    UNet sample_size 256 latent frames = 1024 mel frames = 10.24 s

The float expressions are the reference's own (`hop / rate` seconds per mel frame, times the factor),
so a length rounds to the same frame count as in diffusers' pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple


STAGES = ("encoding", "denoising", "decoding", "vocoding")  # the windowed stages, in the order a request runs them


@dataclass(frozen=True)
class Geometry:
    sampling_rate: int  # waveform samples per second (the vocoder's)
    hop: int  # waveform samples per mel frame: the product of the vocoder's upsampling rates
    mel_bins: int  # the vocoder's mel bins (the VAE's input width)
    vae_factor: int  # mel frames (and bins) per latent frame (and column): 2 ** (VAE blocks - 1)
    latent_channels: int  # the UNet's input channels
    sample_size: Optional[int]  # the UNet's trained length in latent frames (None: the config gives none)

    @classmethod
    def from_configs(cls, unet, vae, vocoder) -> "Geometry":
        """From the UNet, VAE and vocoder configs (config.py)."""
        return cls(vocoder.sampling_rate, vocoder.hop_length, vocoder.model_in_dim, vae.scale_factor,
                   unet.in_channels, unet.sample_size)

    @property
    def hop_seconds(self) -> float:
        """Seconds per mel frame (0.01)."""
        return self.hop / self.sampling_rate

    @property
    def frame_seconds(self) -> float:
        """Seconds per latent frame (0.04)."""
        return self.vae_factor * self.hop / self.sampling_rate

    @property
    def min_seconds(self) -> float:
        """The shortest length: one latent frame, as the reference computes it."""
        return self.hop_seconds * self.vae_factor

    @property
    def trained_frames(self) -> Optional[int]:
        """The UNet's trained length in mel frames (1024), or None."""
        return self.sample_size * self.vae_factor if self.sample_size else None

    def default_seconds(self) -> float:
        """The reference's default length: the trained one (10.24 s)."""
        if self.sample_size is None:
            raise ValueError("audio_length_in_s must be given: unet/config.json has no sample_size to take the "
                             "default length from")
        return self.sample_size * self.vae_factor * self.hop_seconds

    def frames(self, seconds: float) -> int:
        """Mel frames generated for `seconds`: rounded up to whole latent frames, as the reference."""
        return math.ceil(int(seconds / self.hop_seconds) / self.vae_factor) * self.vae_factor

    def input_frames(self, samples: int) -> int:
        """Mel frames that hold an input of `samples` samples, rounded up to whole latent frames."""
        return math.ceil(samples / self.hop / self.vae_factor) * self.vae_factor

    def latent_shape(self, takes: int, frames: int) -> Tuple[int, int, int, int]:
        """(takes, channels, frames / f, mel bins / f): the latent of `frames` mel frames."""
        f = self.vae_factor
        return takes, self.latent_channels, frames // f, self.mel_bins // f

    def window(self, stage: str, loop: bool = False) -> Tuple[int, int]:
        """(window, overlap) of the windowed path in the frames of `stage` ("denoising", "decoding" or
        "encoding": the VAE's, "vocoding"): the trained length in latent frames for the UNet and the VAE,
        in mel frames for the vocoder; overlaps of a quarter (denoising) and an eighth (the others). A
        loop uses the UNet's overlap at every stage, so that all stages are rotation-equivariant together."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        window = self.sample_size or 256
        overlap = window // 4 if stage == "denoising" or loop else window // 8
        scale = self.vae_factor if stage == "vocoding" else 1
        return window * scale, overlap * scale
