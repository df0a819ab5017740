"""Mappings from published checkpoint layouts onto musicldm_core's modules.

The key tables are pure data and functions: they build no model and read no weight. The UNet,
VAE and vocoder keep the published names (no mapping); CLAP's deep BERT/Swin nesting is renamed
in `clap.py`. `to_safetensors.py` is the one-off converter for uploads that ship only pickle
`.bin` weights (read with torch.load(weights_only=True)); musicldm_core itself never opens them.
"""
