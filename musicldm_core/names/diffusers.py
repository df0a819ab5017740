"""diffusers `UNet2DConditionModel` / `AutoencoderKL` keys <-> musicldm_core.unet / .vae keys.

The published names are readable and kept, less their placeholders: indices into containers that
hold one module (`downsamplers.0`, the mid block's `attentions.0`) or a parameter-free one
(`to_out.1` is a Dropout, so `to_out.0` is the only weight; `ff.net.1` likewise), and diffusers'
generic names for modules we name for what they are. Each rule is one (published, ours) pair of
dotted fragments; the rules never overlap, so the mapping is one-to-one in both directions.
"""

from __future__ import annotations

from typing import Optional

RULES = [
    (".to_out.0.", ".to_out."),  # attention output projection (to_out.1 is a Dropout)
    (".ff.net.0.proj.", ".ff.proj_in."),  # GEGLU's input projection (to 2 x 4d: value and gate)
    (".ff.net.2.", ".ff.proj_out."),  # its output projection (net.1 is a Dropout)
    (".downsamplers.0.", ".downsample."),
    (".upsamplers.0.", ".upsample."),
    (".mid_block.attentions.0.", ".mid_block.attention."),  # the mid block's single attention
    (".time_embedding.linear_1.", ".time_embedding.fc1."),  # layers.MLP
    (".time_embedding.linear_2.", ".time_embedding.fc2."),
]


def _rewrite(key: str, rules) -> str:
    dotted = "." + key
    for a, b in rules:
        dotted = dotted.replace(a, b)
    return dotted[1:]


def published_to_ours(key: str) -> Optional[str]:
    """Our parameter name for a published key (an unknown key comes back for the loader to report)."""
    return _rewrite(key, RULES)


def ours_to_published(key: str) -> str:
    """The published key of one of our parameter names."""
    return _rewrite(key, [(b, a) for a, b in RULES])
