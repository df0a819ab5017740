"""Step 2 of the procedure: the guided noise predictor eps(x_t, t | c).

Classifier-free guidance (Ho & Salimans 2022): the UNet predicts the noise twice, with the prompt's
CLAP vector and with the negative prompt's (an empty prompt by default), and the prediction is pushed
away from the second: eps = eps_uncond + g * (eps_cond - eps_uncond). MusicLDM's UNet takes the text
vector as a class embedding, concatenated to the time embedding; no text sequence is attended to.

Past the trained length the predictor runs on overlapping windows of the latent, blended
(longform.py), so the sampler sees one prediction for the whole latent.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from .longform import windowed
from .unet import UNet

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_eps(unet: UNet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               scale: Optional[float]) -> torch.Tensor:
    """A denoising step's whole model evaluation, as one function: what `pipe.compile()` compiles (on a
    GPU, captures as one CUDA graph).

    x: (k*B, 8, T', F'), k windows of the B latents stacked along the batch; t: () timestep;
    cond: (B, 512) text vectors, or with guidance (2B, 512) = [negative; positive] (each half (k*B, 512)
    when every window has its own: a schedule);
    scale: the guidance scale g, or None without guidance. With guidance both halves run as one
    batched UNet call. Returns (k*B, 8, T', F').
    """
    if scale is None:
        return unet(x, t, cond.repeat(x.shape[0] // cond.shape[0], 1))
    uncond, positive = cond.chunk(2)
    k = x.shape[0] // uncond.shape[0]
    eps_uncond, eps_cond = unet(torch.cat([x, x]), t, torch.cat([uncond.repeat(k, 1), positive.repeat(k, 1)])
                                ).chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def noise_predictor(eps: Callable, unet: UNet, cond: torch.Tensor, scale: Optional[float], *,
                    window: Optional[Tuple[int, int]] = None, loop: bool = False,
                    progress: Optional[Callable[[int, int], None]] = None,
                    per_window: Optional[torch.Tensor] = None) -> Denoiser:
    """(x_t, t) -> eps for the sampler. eps: guided_eps or its compiled stage; window: (window, overlap)
    in latent frames for the windowed path (two windows per UNet call; circular for a loop), whose
    windows within each step are told to progress(done, windows). per_window: (windows, B, 512) the
    positive vectors of each window (a schedule: conditioning.py), in place of cond's positive half."""

    def predict(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor = cond) -> torch.Tensor:
        return eps(unet, x, t, c, scale)

    if window is None:
        return predict
    if per_window is None:
        return lambda x, t: windowed(lambda w: predict(w, t), x, 2, *window, circular=loop, batch=2,
                                     progress=progress)
    uncond = cond.chunk(2)[0] if scale is not None else None

    def conditions(windows: List[int]) -> torch.Tensor:  # as guided_eps stacks them: [negatives; positives]
        positive = torch.cat([per_window[k] for k in windows])
        return positive if uncond is None else torch.cat([uncond.repeat(len(windows), 1), positive])

    return lambda x, t: windowed(lambda w, windows: predict(w, t, conditions(windows)), x, 2, *window,
                                 circular=loop, batch=2, progress=progress, indexed=True)
