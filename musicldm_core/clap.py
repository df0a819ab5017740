"""CLAP: the text tower that conditions MusicLDM and the audio tower that ranks its takes.

Both towers and the two learned temperatures live in one published file
(text_encoder/model.safetensors, transformers' ClapModel); `Clap.from_pretrained` loads it through
the key table in names/clap.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn


from .clap_audio import HTSAT
from .clap_text import ClapTextEncoder
from .clap_config import ClapConfig
from .weights import load_component


class Clap(nn.Module):
    def __init__(self, cfg: ClapConfig):
        super().__init__()
        self.config = cfg
        self.text = ClapTextEncoder(cfg.text_config)
        self.audio = HTSAT(cfg.audio_config)
        self.logit_scale_text = nn.Parameter(torch.zeros(()))
        self.logit_scale_audio = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device="cpu", dtype=torch.float32) -> "Clap":
        """Load `text_encoder/` of the checkpoint (transformers ClapModel config + safetensors)."""
        return load_component(cls, ClapConfig, folder, "model", device=device, dtype=dtype)

    def encode_texts(self, tokenizer, texts: List[str], max_length: Optional[int] = None) -> torch.Tensor:
        """Prompts -> (B, projection_dim) text features, each prompt tokenized (cut at `max_length`
        tokens, default the tokenizer's limit) and encoded alone, unpadded. The reference pads every
        prompt to 512 tokens; padding is masked out, so this gives the same vector (to float rounding,
        ~1e-7) at a fraction of the cost, and one that does not depend on the other prompts."""
        device = self.logit_scale_text.device
        return torch.cat([self.text_features(ids.to(device), mask.to(device)) for ids, mask in
                          (tokenizer([text], pad_to_max_length=False, max_length=max_length) for text in texts)])

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """transformers' get_text_features: (B, L) tokens -> (B, projection_dim), unit length."""
        return self.text.features(ids, mask)

    def audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        """transformers' get_audio_features: (B, 1, frames, mels) -> (B, projection_dim), unit length."""
        return F.normalize(self.audio(mel), dim=-1)

    def logits_per_text(self, ids: torch.Tensor, mask: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """(texts, audios) similarities scaled by exp(logit_scale_text), as ClapModel.forward."""
        t, a = self.text(ids, mask), self.audio(mel)
        t = t / t.norm(p=2, dim=-1, keepdim=True)
        a = a / a.norm(p=2, dim=-1, keepdim=True)
        return t @ a.t() * self.logit_scale_text.exp()
