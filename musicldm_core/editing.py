"""Audio-to-audio: style transfer (SDEdit), inpainting and continuation of an input recording.

The input goes through MusicLDM's training front end (audio_frontend.log_mel) and the VAE encoder
(posterior mean) into the latent space the UNet denoises, windowed like any long signal. Then:

* strength s (Meng et al. 2022, SDEdit): the input's latent is noised to the level of step
  N - int(N s) of the schedule and denoised from there under the prompt, as diffusers' image-to-image
  pipelines do. s = 0 is the input's round trip (mel -> VAE -> vocoder), s = 1 ignores it.
* inpaint=(start, end) / extend=seconds: denoising starts from pure noise, and after every step the
  frames to keep are put back at the current noise level (the sampler's `add_noise`), so the new
  frames grow consistent with them; the mask rises over an eighth of the trained window inside the
  regenerated span. The decoded waveform is then blended with the input's round trip by the same
  mask, so the kept span is exactly the round trip.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .audio_frontend import log_mel, normalize_loudness
from .geometry import Geometry
from .longform import regenerate_mask, windowed
from .options import Options, Run
from .samplers import Timesteps


def encode_input(wave: torch.Tensor, run: Run, geometry: Geometry, vae,
                 progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """(samples,) 16 kHz input -> its scaled latent (1, 8, run.frames / 4, 16): loudness normalised as
    in training, its run.input_frames mel frames encoded by `vae` (posterior mean, in windows of the
    trained length), zeros after (an extension). progress(done, windows): before the first window and
    after each (a long input takes many; the page's cancel acts between them)."""
    hop, f, frames = geometry.hop, geometry.vae_factor, run.input_frames
    wave = F.pad(normalize_loudness(wave[None]), (0, max(0, frames * hop - len(wave))))[:, :frames * hop]
    mel = log_mel(wave, hop=hop, n_mels=geometry.mel_bins, sr=geometry.sampling_rate)[:, None, :frames]
    weight = next(vae.parameters())
    mel = mel.to(weight.device, weight.dtype)
    window, overlap = geometry.window("encoding")
    z = windowed(lambda m: vae.encode(m).mode(), mel, 2, window * f, overlap * f, den=f, progress=progress)
    return F.pad(z * vae.config.scaling_factor, (0, 0, 0, run.frames // f - z.shape[2]))


class AudioEdit:
    """One audio-to-audio request: the input's latent, the span to regenerate, the sampling.

    z_in: (B, 8, T', F') the input's scaled latent (encode_input), one row per take.
    """

    def __init__(self, z_in: torch.Tensor, options: Options, run: Run, geometry: Geometry):
        self.z_in, self.options, self.run, self.geometry, self.scheduler = z_in, options, run, geometry, run.scheduler
        self.mask = self.span = None
        if options.inpaint is not None or options.extend is not None:
            frame_s, f = geometry.frame_seconds, geometry.vae_factor  # one latent frame: 40 ms
            start, end = options.inpaint or (run.input_frames // f * frame_s, z_in.shape[2] * frame_s)
            self.span = (start / frame_s, end / frame_s)  # in latent frames
            self.mask = regenerate_mask(z_in.shape[2], *self.span, geometry.window("decoding")[1], z_in.device)

    def sampling(self, noise: torch.Tensor) -> Tuple[Optional[Timesteps], torch.Tensor, Optional[Callable]]:
        """(ts, init, constrain) for Scheduler.sample; ts None at strength 0 (init is then the result)."""
        ts, scheduler, z_in = self.run.sampling, self.scheduler, self.z_in
        if self.mask is None:  # SDEdit
            strength = 1.0 if self.options.strength is None else self.options.strength
            k = ts.steps - min(int(ts.steps * strength), ts.steps)
            if k == ts.steps:
                return None, z_in, None
            ts = ts.from_step(k)
            return ts, scheduler.add_noise(z_in, noise, ts), None
        mask = self.mask
        init = mask * noise * ts.init_scale + (1 - mask) * scheduler.add_noise(z_in, noise, ts)

        def constrain(i: int, x: torch.Tensor) -> torch.Tensor:
            return mask * x + (1 - mask) * scheduler.add_noise(z_in, noise, ts, i + 1)

        return ts, init, constrain

    def keep_input(self, audio: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(B, samples) generated -> the same with the kept span replaced by the input's round trip.
        decode: latents -> waveforms on the windowed path (what strength 0 decodes the input with)."""
        if self.mask is None:
            return audio
        g = self.geometry
        kept = decode(self.z_in[:1, :, :self.run.input_frames // g.vae_factor])
        kept = F.pad(kept, (0, max(0, audio.shape[-1] - kept.shape[-1])))[:, :audio.shape[-1]]
        per_frame = g.vae_factor * g.hop  # samples per latent frame
        start, end = (math.floor(self.span[0]) * per_frame, math.ceil(self.span[1]) * per_frame)
        edge = g.window("decoding")[1] * per_frame
        mask = regenerate_mask(audio.shape[-1], start, end, edge).reshape(1, -1)
        return mask * audio + (1 - mask) * kept
