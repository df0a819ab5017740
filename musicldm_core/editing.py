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
from .longform import regenerate_mask, window_frames, windowed


class AudioEdit:
    """One audio-to-audio request against a pipeline: the input's latent, the mask, the sampling."""

    def __init__(self, pipe, request, run, shape: Tuple[int, ...]):
        self.pipe, self.request, self.run = pipe, request, run
        f = pipe.vae_scale_factor
        self.z_in = self.encode(request.wave, run.input_frames, run.frames).expand(shape)
        self.mask = self.span = None
        if request.inpaint is not None or request.extend is not None:
            frame_s = f * pipe.vocoder.config.hop_length / pipe.sampling_rate  # one latent frame: 40 ms
            start, end = request.inpaint or (run.input_frames // f * frame_s, shape[2] * frame_s)
            self.span = (start / frame_s, end / frame_s)  # in latent frames
            self.mask = regenerate_mask(shape[2], *self.span, window_frames(pipe, "vae")[1], self.z_in.device)

    def encode(self, wave: torch.Tensor, frames: int, total_frames: int) -> torch.Tensor:
        """(samples,) 16 kHz input -> its scaled latent (1, 8, total_frames / 4, 16): loudness normalised
        as in training, `frames` mel frames encoded (VAE posterior mean), zeros after (an extension)."""
        pipe = self.pipe
        hop, f = pipe.vocoder.config.hop_length, pipe.vae_scale_factor
        wave = F.pad(normalize_loudness(wave[None]), (0, max(0, frames * hop - len(wave))))[:, :frames * hop]
        mel = log_mel(wave, hop=hop, n_mels=pipe.vocoder.config.model_in_dim, sr=pipe.sampling_rate)[:, None, :frames]
        mel = mel.to(pipe.device, pipe.dtype)
        vae = pipe.placement.ready("vae")
        window, overlap = window_frames(pipe, "vae")
        z = windowed(lambda m: vae.encode(m).mode(), mel, 2, window * f, overlap * f, den=f)
        return F.pad(z * pipe.vae.config.scaling_factor, (0, 0, 0, total_frames // f - z.shape[2]))

    def sampling(self, noise: torch.Tensor) -> Tuple[Optional[object], torch.Tensor, Optional[Callable]]:
        """(plan, init, constrain) for Scheduler.sample; plan None at strength 0 (init is then the result)."""
        plan, scheduler, z_in = self.run.sampling, self.pipe.scheduler, self.z_in
        if self.mask is None:  # SDEdit
            strength = 1.0 if self.request.strength is None else self.request.strength
            k = plan.steps - min(int(plan.steps * strength), plan.steps)
            if k == plan.steps:
                return None, z_in, None
            plan = plan.from_step(k)
            return plan, scheduler.add_noise(z_in, noise, plan), None
        mask = self.mask
        init = mask * noise * plan.init_scale + (1 - mask) * scheduler.add_noise(z_in, noise, plan)

        def constrain(i: int, x: torch.Tensor) -> torch.Tensor:
            return mask * x + (1 - mask) * scheduler.add_noise(z_in, noise, plan, i + 1)

        return plan, init, constrain

    def keep_input(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) generated -> the same with the kept span replaced by the input's round trip."""
        if self.mask is None:
            return audio
        f = self.pipe.vae_scale_factor  # the input alone, decoded as strength 0 decodes it
        kept = self.pipe.decode_latents(self.z_in[:1, :, :self.run.input_frames // f], True, False)
        kept = F.pad(kept, (0, max(0, audio.shape[-1] - kept.shape[-1])))[:, :audio.shape[-1]]
        per_frame = self.pipe.vae_scale_factor * self.pipe.vocoder.config.hop_length  # samples per latent frame
        start, end = (math.floor(self.span[0]) * per_frame, math.ceil(self.span[1]) * per_frame)
        edge = window_frames(self.pipe, "vae")[1] * per_frame
        mask = regenerate_mask(audio.shape[-1], start, end, edge).reshape(1, -1)
        return mask * audio + (1 - mask) * kept
