"""Mappings from published checkpoint layouts onto musicldm_core's modules.

Pure data and key functions: nothing here builds a model or reads a weight. The UNet, VAE and
vocoder keep the published names (no mapping); CLAP's deep BERT/Swin nesting is renamed in
`clap.py`.
"""
