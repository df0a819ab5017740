"""Offline tools that turn other checkpoint layouts into the published one musicldm_core loads. They depend
on musicldm_core (its models, and the name tables its loader uses: musicldm_core/names/), never the reverse.

`to_safetensors.py` is the one-off converter for uploads that ship only pickle
`.bin` weights (read with torch.load(weights_only=True)); musicldm_core itself never opens them.
`original.py` converts the MusicLDM authors' own Lightning checkpoints (their key layout, EMA twins, their
attention heads) to a folder in the published layout, reading the pickle without running it.
"""
