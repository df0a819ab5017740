"""CLAP's text tower: a RoBERTa encoder, its pooler and the projection to the joint space.

Wu et al. 2023 (CLAP, arXiv 2211.06687) as transformers' `ClapTextModel` + `ClapProjectionLayer`
implements it. MusicLDM conditions on `features(ids, mask)`: the projection of the pooled
`<s>` token, L2-normalised, (B, 512).

Names are ours (token_embedding, layers.3.attn.q, ...); names/clap.py maps the
published BERT-style names (text_model.encoder.layer.3.attention.self.query, ...) onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .clap_config import ClapTextConfig
from .layers import ACTIVATIONS, MLP


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding table left uninitialised: its values always come from the checkpoint.

    (nn.Embedding's random init on the meta device pulls in torch._dynamo: a second of start-up.)
    """
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (p(x).view(B, L, self.heads, C // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, L, d)
        return self.out(y.transpose(1, 2).reshape(B, L, C))


class EncoderLayer(nn.Module):
    """Post-LayerNorm BERT layer: x = LN(x + attn(x)); x = LN(x + fc2(act(fc1(x)))), act = GELU as published."""

    def __init__(self, cfg: ClapTextConfig):
        super().__init__()
        d = cfg.hidden_size
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.attn = SelfAttention(d, cfg.num_attention_heads)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, d)
        self.mlp_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, bias))
        return self.mlp_norm(x + self.fc2(self.act(self.fc1(x))))


class ClapTextEncoder(nn.Module):
    def __init__(self, cfg: ClapTextConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_size
        self.token_embedding = _embedding(cfg.vocab_size, d)
        self.position_embedding = _embedding(cfg.max_position_embeddings, d)
        self.token_type_embedding = _embedding(cfg.type_vocab_size, d)
        self.embedding_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.pooler = nn.Linear(d, d)
        self.projection = MLP(d, cfg.projection_dim, cfg.projection_hidden_act)  # into the joint space

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, L) -> unnormalised joint-space embedding (B, projection_dim)."""
        B, L = ids.shape
        if L > self.config.max_position_embeddings - self.config.pad_token_id - 1:
            raise ValueError(f"input_ids: {L} tokens exceed the text tower's "
                             f"{self.config.max_position_embeddings - self.config.pad_token_id - 1} positions")
        # RoBERTa positions count non-padding tokens from pad_token_id + 1; padding keeps pad_token_id.
        not_pad = ids.ne(self.config.pad_token_id).int()
        positions = torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad + self.config.pad_token_id
        x = self.token_embedding(ids) + self.token_type_embedding.weight[0] + self.position_embedding(positions.long())
        x = self.embedding_norm(x)
        dtype = x.dtype
        # additive mask (B, 1, 1, L): 0 where attended, the dtype's minimum where padded
        bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.projection(pooled)

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The conditioning vector: projected pooled output, L2-normalised, (B, projection_dim)."""
        return F.normalize(self(ids, mask), dim=-1)
