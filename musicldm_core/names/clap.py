"""transformers `ClapModel` keys (text_encoder/model.safetensors) <-> musicldm_core.clap.Clap keys.

One ordered table of (published, ours) templates; `{i}` and `{j}` stand for block indices.
Every published key maps to exactly one of our parameters or is a listed non-weight.
"""

from __future__ import annotations

import re
from typing import Optional

TEXT = "text_model."
AUDIO = "audio_model.audio_encoder."
LAYER = "text_model.encoder.layer.{i}."
BLOCK = "audio_model.audio_encoder.layers.{i}.blocks.{j}."

TABLE = [
    # text tower (RoBERTa)
    (TEXT + "embeddings.word_embeddings.weight", "text.token_embedding.weight"),
    (TEXT + "embeddings.position_embeddings.weight", "text.position_embedding.weight"),
    (TEXT + "embeddings.token_type_embeddings.weight", "text.token_type_embedding.weight"),
    (TEXT + "embeddings.LayerNorm.{p}", "text.embedding_norm.{p}"),
    (LAYER + "attention.self.query.{p}", "text.layers.{i}.attn.q.{p}"),
    (LAYER + "attention.self.key.{p}", "text.layers.{i}.attn.k.{p}"),
    (LAYER + "attention.self.value.{p}", "text.layers.{i}.attn.v.{p}"),
    (LAYER + "attention.output.dense.{p}", "text.layers.{i}.attn.out.{p}"),
    (LAYER + "attention.output.LayerNorm.{p}", "text.layers.{i}.attn_norm.{p}"),
    (LAYER + "intermediate.dense.{p}", "text.layers.{i}.fc1.{p}"),
    (LAYER + "output.dense.{p}", "text.layers.{i}.fc2.{p}"),
    (LAYER + "output.LayerNorm.{p}", "text.layers.{i}.mlp_norm.{p}"),
    (TEXT + "pooler.dense.{p}", "text.pooler.{p}"),
    ("text_projection.linear1.{p}", "text.projection.fc1.{p}"),
    ("text_projection.linear2.{p}", "text.projection.fc2.{p}"),
    # audio tower (HTSAT)
    (AUDIO + "batch_norm.{p}", "audio.mel_norm.{p}"),
    (AUDIO + "patch_embed.proj.{p}", "audio.patch_embed.proj.{p}"),
    (AUDIO + "patch_embed.norm.{p}", "audio.patch_embed.norm.{p}"),
    (BLOCK + "layernorm_before.{p}", "audio.stages.{i}.blocks.{j}.norm1.{p}"),
    (BLOCK + "attention.self.query.{p}", "audio.stages.{i}.blocks.{j}.attn.q.{p}"),
    (BLOCK + "attention.self.key.{p}", "audio.stages.{i}.blocks.{j}.attn.k.{p}"),
    (BLOCK + "attention.self.value.{p}", "audio.stages.{i}.blocks.{j}.attn.v.{p}"),
    (BLOCK + "attention.self.relative_position_bias_table",
     "audio.stages.{i}.blocks.{j}.attn.relative_position_bias_table"),
    (BLOCK + "attention.output.dense.{p}", "audio.stages.{i}.blocks.{j}.attn.out.{p}"),
    (BLOCK + "layernorm_after.{p}", "audio.stages.{i}.blocks.{j}.norm2.{p}"),
    (BLOCK + "intermediate.dense.{p}", "audio.stages.{i}.blocks.{j}.fc1.{p}"),
    (BLOCK + "output.dense.{p}", "audio.stages.{i}.blocks.{j}.fc2.{p}"),
    (AUDIO + "layers.{i}.downsample.norm.{p}", "audio.stages.{i}.downsample.norm.{p}"),
    (AUDIO + "layers.{i}.downsample.reduction.weight", "audio.stages.{i}.downsample.reduction.weight"),
    (AUDIO + "norm.{p}", "audio.norm.{p}"),
    ("audio_projection.linear1.{p}", "audio.projection.fc1.{p}"),
    ("audio_projection.linear2.{p}", "audio.projection.fc2.{p}"),
    # the learned temperatures of the contrastive logits
    ("logit_scale_t", "logit_scale_text"),
    ("logit_scale_a", "logit_scale_audio"),
]

# Published tensors that are not weights: recomputed by our modules, so not loaded.
NON_WEIGHTS = [
    "text_model.embeddings.position_ids",  # arange(max_position_embeddings); RoBERTa derives positions from ids
    "text_model.embeddings.token_type_ids",  # zeros; the single token type is added directly
    "audio_model.audio_encoder.layers.{i}.blocks.{j}.attention.self.relative_position_index",  # fixed Swin index
    "audio_model.audio_encoder.batch_norm.num_batches_tracked",  # a training counter
]

_FIELDS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "p": r"(?P<p>weight|bias|running_mean|running_var)"}


def _pattern(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w)\}", template):
        out += re.escape(template[pos:m.start()]) + _FIELDS[m.group(1)]
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


_FORWARD = [(_pattern(a), b) for a, b in TABLE]
_BACKWARD = [(_pattern(b), a) for a, b in TABLE]
_SKIP = [_pattern(t) for t in NON_WEIGHTS]


def _apply(table, key: str) -> Optional[str]:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def published_to_ours(key: str) -> Optional[str]:
    """Our parameter name for a published key; None for a listed non-weight.

    A key the table does not know is returned unchanged, so the strict loader reports it as
    unexpected, by its published name.
    """
    if any(p.match(key) for p in _SKIP):
        return None
    return _apply(_FORWARD, key) or key


def ours_to_published(key: str) -> str:
    """The published key of one of our parameter names (the inverse of published_to_ours)."""
    name = _apply(_BACKWARD, key)
    if name is None:
        raise KeyError(f"{key!r} has no published name")
    return name
