"""Several takes of a prompt, best first: CLAP's text-audio similarity, as diffusers' pipeline ranks them.

The takes are resampled from the vocoder's 16 kHz to CLAP's 48 kHz, turned into CLAP's log-mel
(audio_frontend.LogMel, with its crop of takes longer than 10 s), embedded by the HTSAT audio tower
and scored against the prompts' text vectors (`logits_per_text`, clap_logits); each prompt keeps its
`takes` best-scored rows. `musicldm score` measures any audio file with the same clap_logits.

The reference scores every prompt against ALL takes of the batch, so with several prompts a prompt
can get another prompt's take back; `within_prompt` scores each prompt's own takes only (one prompt
at a time, so its ranking does not depend on the other prompts).
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from .audio_frontend import LogMel
from .resampler import resample
from .clap import Clap
from .tokenizer import ClapTokenizer


def rank(texts: List[str], audio: torch.Tensor, takes: int, *, tokenizer: ClapTokenizer, clap: Clap,
         logmel: LogMel, sampling_rate: int, dtype: torch.dtype, within_prompt: bool = False,
         crop: str = "random") -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, samples) takes at `sampling_rate`, `takes` per prompt in order -> which rows, best first (N,) and
    each one's score (N,). `clap` is on the device it runs on; `dtype` the pipeline's."""
    if within_prompt and len(texts) > 1:
        ranked = [rank([text], audio[i * takes:(i + 1) * takes], takes, tokenizer=tokenizer, clap=clap,
                       logmel=logmel, sampling_rate=sampling_rate, dtype=dtype, crop=crop)
                  for i, text in enumerate(texts)]
        return torch.cat([order + i * takes for i, (order, _) in enumerate(ranked)]), torch.cat([s for _, s in ranked])
    waves = resample(audio, sampling_rate, logmel.config.sampling_rate)
    logits = clap_logits(texts, list(waves.numpy()), tokenizer=tokenizer, clap=clap, logmel=logmel, dtype=dtype,
                         crop=crop)  # (P, N)
    order = torch.argsort(logits, dim=1, descending=True)[:, :takes]
    return order.reshape(-1), logits.gather(1, order).reshape(-1)


def clap_logits(texts: List[str], waves: List, *, tokenizer: ClapTokenizer, clap: Clap, logmel: LogMel,
                dtype: torch.dtype, crop: str = "start") -> torch.Tensor:
    """(texts, waves) CLAP similarities scaled by exp(logit_scale_text), ClapModel's `logits_per_text`; each
    wave a numpy array at CLAP's rate (logmel.config.sampling_rate), cropped or padded to CLAP's 10 s
    (LogMel). Divided by exp(logit_scale_text): the cosine, the relevance `musicldm score` reports."""
    ids, mask = tokenizer(texts, pad_to_max_length=False)
    mel = logmel(waves, crop=crop)  # (N, 1, frames, bins)
    device = clap.logit_scale_text.device
    return clap.logits_per_text(ids.to(device), mask.to(device), mel.to(device, dtype)).float().cpu()
