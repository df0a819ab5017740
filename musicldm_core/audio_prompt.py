"""An audio prompt, "music like this clip": the CLAP audio embedding MusicLDM was trained on.

MusicLDM's UNet learned its class embedding from CLAP *audio* vectors of the training clips (the authors'
conditioner, CLAPAudioEmbeddingClassifierFreev2 with embed_mode="audio"); only at inference does it switch
to CLAP's text tower, which lands in the same joint space. An audio prompt gives it its native input,
computed as training computed it, with our own towers:

  read (`read_audio_prompt`): the clip as 16 kHz mono (channels averaged), resampled with torchaudio's
     default filter (resampler.resample_hann) as the training data loader read its files, then given
     AudioLDM's training loudness (mean removed, peak 0.5: audio_frontend.normalize_loudness);
  embed (`audio_embedding`), the conditioner's audio branch:
  1. 16 -> 48 kHz with torchaudio's default filter (resample_hann);
  2. to CLAP's 10 s window as their get_audio_features does: a shorter clip repeated whole and then
     zero-padded ("repeatpad"); a longer one cropped to 10 s. Their crop ("rand_trunc") starts at a random
     sample; ours is deterministic: the centred 10 s, starting at (length - 10 s) / 2 (in 48 kHz samples,
     rounded down), so a prompt always means the same vector;
  3. CLAP's log-mel (audio_frontend.LogMel: the 1024-point STFT, hop 480, 64 Slaney bands 50 Hz-14 kHz, dB:
     laion-clap's band, CONDITIONER_FRONT_END)
     and the HTSAT audio tower, projected and made unit length (Clap.audio_features).

The unconditional side of guidance stays the empty text's vector, as in the authors' training
(get_unconditional_condition).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import torch

from .audio_frontend import LogMel, normalize_loudness
from .audio_input import load_audio
from .clap import Clap
from .resampler import resample_hann

READ_RATE = 16000  # the training clips' rate, which the conditioner resamples from
MIN_SECONDS = 0.04  # the shortest audio prompt read (40 ms, one latent frame)
# The conditioner's CLAP front end (HTSAT-base's audio_cfg in laion-clap: 50 Hz .. 14 kHz), cut and padded as
# its get_audio_features call asks. The published feature_extractor config says 0 Hz (diffusers ranks takes
# with it): a vector from that band is another vector (measured in the tests).
CONDITIONER_FRONT_END = dict(frequency_min=50.0, frequency_max=14000.0, truncation="rand_trunc", padding="repeatpad")


def read_audio_prompt(audio, sampling_rate: Optional[int], name: str) -> torch.Tensor:
    """A file path or an array at `sampling_rate` -> (samples,) float32 at 16 kHz, at training loudness.
    Refused by name (`name`) when unreadable, empty, shorter than 40 ms, longer than the input limit,
    non-finite or silent (audio_input.load_audio)."""
    wave = load_audio(audio, sampling_rate, READ_RATE, name, MIN_SECONDS, method="hann")
    return normalize_loudness(wave[None])[0]


def crop_start(samples: int, rate: int = READ_RATE, window_seconds: float = 10.0) -> Optional[float]:
    """Where the conditioner's 10 s window starts in a clip of `samples` at `rate` (as read: 16 kHz), in seconds:
    the centred crop of a longer clip, on the 48 kHz samples (rounded down); None for a clip no longer than the
    window (it is repeated and padded whole)."""
    wide = samples * 3 if rate == READ_RATE else math.ceil(samples * 48000 / rate)
    window = int(window_seconds * 48000)
    return None if wide <= window else (wide - window) // 2 / 48000


def audio_embedding(clap: Clap, logmel: LogMel, waves: Sequence[torch.Tensor]) -> torch.Tensor:
    """N clips (samples,) at 16 kHz, as read -> (N, projection_dim) unit CLAP audio vectors, on clap's device
    in its dtype. logmel: the checkpoint's CLAP front end, with the conditioner's band and window handling
    (CONDITIONER_FRONT_END) whatever its own config says."""
    param = clap.logit_scale_audio
    logmel = LogMel(replace(logmel.config, **CONDITIONER_FRONT_END))
    wide = [resample_hann(w.float(), READ_RATE, logmel.config.sampling_rate).numpy() for w in waves]  # 48 kHz
    mel = logmel(wide, crop="center")  # (N, 1, frames, mels): each cut or repeat-padded to 10 s
    return clap.audio_features(mel.to(param.device, param.dtype))
