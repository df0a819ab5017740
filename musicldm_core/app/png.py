"""A mel spectrogram as a PNG picture, for the page (numpy and zlib only)."""

from __future__ import annotations



def mel_png(mel) -> bytes:
    """A log-mel spectrogram (frames, bins) as an 8-bit RGB PNG, time left to right, low frequencies at the
    bottom, its own range mapped onto a dark-to-bright ramp. numpy and zlib only: PNG is a signature and
    three chunks (IHDR, IDAT: zlib of each row after a 0 filter byte, IEND), each with its CRC-32."""
    import struct
    import zlib

    import numpy as np

    m = np.asarray(mel, dtype=np.float64).T[::-1]  # (bins, frames), low bins at the bottom
    low, high = float(m.min()), float(m.max())
    level = (m - low) / (high - low) if high > low else np.zeros_like(m)
    ramp = np.array([[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64)
    at = level * (len(ramp) - 1)
    i = np.minimum(at.astype(int), len(ramp) - 2)
    rgb = ramp[i] + (ramp[i + 1] - ramp[i]) * (at - i)[..., None]
    pixels = np.round(rgb).astype(np.uint8)  # (height, width, 3)
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
