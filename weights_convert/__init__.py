"""Mappings from published checkpoint layouts onto musicldm_core's modules.

The key tables are pure data and functions: they build no model and read no weight. One rule:
our modules are named for their reader, and every difference from a published name lives here.
`diffusers.py` drops the UNet's and VAE's placeholders (`to_out.0`, `downsamplers.0`); `clap.py`
renames CLAP's deep BERT/Swin nesting; the vocoder's names are the published ones. `to_safetensors.py` is the one-off converter for uploads that ship only pickle
`.bin` weights (read with torch.load(weights_only=True)); musicldm_core itself never opens them.
`original.py` converts the MusicLDM authors' own Lightning checkpoints (their key layout, EMA twins, their
attention heads) to a folder in the published layout, reading the pickle without running it.
"""
