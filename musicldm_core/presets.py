"""Named sets of generation settings, each traced to where it comes from.

"authors": how the MusicLDM authors generate (RetroCirce/MusicLDM, interface/):
- sampler DDIM: `generate_sample(..., ddim_steps=...)` runs their DDIMSampler ("uniform" spacing, +1
  offset: diffusers' "leading" with steps_offset 1; alphas_cumprod[0] after the last step:
  set_alpha_to_one false), the published checkpoint's sampler too;
- steps 200: musicldm.yaml `evaluation_params.ddim_sampling_steps: 200`;
- guidance 2.0: `evaluation_params.unconditional_guidance_scale: 2.0`, the unconditional branch being
  the CLAP embedding of "" (`get_unconditional_condition`), as our default negative prompt;
- eta 1.0: `generate_sample`'s default `ddim_eta=1.0` (validation_step passes none): fresh noise at
  every step, where diffusers' default is 0;
- 5 candidates, the best kept: `evaluation_params.n_candidates_per_samples: 5`; the candidates are
  ranked by CLAP text-audio similarity and only the best one is saved. Here they rank through this
  package's CLAP audio front end (diffusers' feature extractor), not laion-clap's own.
The length is the checkpoint's default, 10.24 s (latent_t_size 256), as theirs.
"""

from __future__ import annotations

from typing import Dict

# How the UNet splits its attention into heads: "checkpoint", as its config says (exact to diffusers), or
# "authors", 32 channels a head (RetroCirce/MusicLDM interface/musicldm.yaml: num_head_channels 32).
ATTENTION_HEADS = ("checkpoint", "authors")
AUTHORS_HEAD_CHANNELS = 32

# each as `pipe(...)` keywords (the command line shows them under its own names: app/request.py)
PRESETS: Dict[str, Dict[str, object]] = {
    "authors": {"sampler": "ddim", "num_inference_steps": 200, "guidance_scale": 2.0, "eta": 1.0,
                "num_waveforms_per_prompt": 5},
}


def pipeline_kwargs(name: str) -> Dict[str, object]:
    """The preset as `pipe(...)` keywords. The takes come back ranked, best first: keep `.audios[:, 0]`
    (one prompt: `.audios[0]`) for the candidate the authors would keep."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {name!r}")
    return dict(PRESETS[name])
