"""musicldm_core and weights_convert run without the reference stack: none of it is imported."""

import subprocess
import sys

FORBIDDEN = ["diffusers", "transformers", "librosa", "scipy"]
MODULES = ["musicldm_core", "musicldm_core.pipeline", "musicldm_core.app.cli", "musicldm_core.samplers",
           "musicldm_core.clap", "musicldm_core.clap_audio", "musicldm_core.clap_text", "musicldm_core.tokenizer",
           "musicldm_core.unet", "musicldm_core.vae", "musicldm_core.vocoder", "musicldm_core.hub",
           "musicldm_core.presets", "musicldm_core.app.serve", "musicldm_core.names", "weights_convert",
           "weights_convert.original"]


def test_no_reference_stack_imported():
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "import musicldm_core; musicldm_core.MusicLDMPipeline\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"forbidden modules imported: {out.stdout} {out.stderr}"
