"""AudioLDM's own mel front end (`audioldm/audio/stft.py`, TacotronSTFT), MusicLDM's training front end.

The `audioldm` package on PyPI pins numpy <= 1.23.5, librosa 0.9.2 and gradio, which cannot sit
beside the reference stack, so its wheel is fetched once with `pip download --no-deps` into the
fixture cache and its two audio modules are loaded from it untouched. Two shims adapt the calls
it makes to today's librosa, which takes keyword arguments only: `librosa.filters.mel(sr, n_fft,
n_mels, fmin, fmax)` and `librosa.util.pad_center(data, size)`; the functions are the same.
"""

from __future__ import annotations

import subprocess
import sys
import types
import zipfile

import reference_checkpoints

WHEEL = "audioldm-0.1.1-py3-none-any.whl"


def tacotron_stft(n_fft=1024, hop=160, win=1024, n_mels=64, sr=16000, f_min=0, f_max=8000):
    folder = reference_checkpoints.cache_root() / "audioldm"
    wheel = folder / WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                        "audioldm==0.1.1"], check=True)
    import librosa

    archive = zipfile.ZipFile(wheel)
    for name in ("audioldm", "audioldm.audio"):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules.setdefault(name, package)
    for name in ("audio_processing", "stft"):
        module = types.ModuleType(f"audioldm.audio.{name}")
        sys.modules[module.__name__] = module
        exec(compile(archive.read(f"audioldm/audio/{name}.py").decode(), module.__name__, "exec"), module.__dict__)
    stft = sys.modules["audioldm.audio.stft"]
    stft.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    stft.pad_center = lambda data, size: librosa.util.pad_center(data, size=size)
    return stft.TacotronSTFT(n_fft, hop, win, n_mels, sr, f_min, f_max)
