"""G.711 (ITU-T, 1988) expansion: 8-bit mu-law and A-law codes -> 16-bit linear PCM, by table lookup.

The tables are computed from the recommendation's decoder definition (Tables 1a and 2a), not copied:
each code holds a sign, a 3-bit segment ``e`` and a 4-bit step ``m``; the decoded magnitude is the middle of
that step's quantisation interval. Values are scaled to 16 bits the usual way (A-law's 13-bit output times 8,
mu-law's 14-bit output times 4), so they match other 16-bit decoders sample for sample.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LAWS = {"mulaw": "mulaw", "ulaw": "mulaw", "pcmu": "mulaw", "alaw": "alaw", "pcma": "alaw"}


@lru_cache(maxsize=2)
def expansion_table(law: str) -> np.ndarray:
    """int16 [256]: the linear value of every code of ``law`` ("mulaw" or "alaw")."""
    code = np.arange(256, dtype=np.int32)
    if law == "mulaw":
        # Codes are transmitted with every bit inverted; sign bit 1 means negative after inversion.
        u = ~code & 0xFF
        e, m = (u >> 4) & 0x7, u & 0xF
        magnitude = ((2 * m + 33) << e) - 33  # 14-bit, bias 33 removed
        value = np.where(u & 0x80, -magnitude, magnitude) * 4
    elif law == "alaw":
        # Even bits are inverted on the line (XOR 0x55); sign bit 1 means positive.
        a = code ^ 0x55
        e, m = (a >> 4) & 0x7, a & 0xF
        magnitude = np.where(e == 0, 2 * m + 1, (2 * m + 33) << np.maximum(e - 1, 0))  # 13-bit
        value = np.where(a & 0x80, magnitude, -magnitude) * 8
    else:
        raise ValueError(f"unknown G.711 law {law!r}; expected 'mulaw' or 'alaw'")
    return value.astype(np.int16)


def expand(data: bytes | bytearray | memoryview, law: str) -> np.ndarray:
    """G.711 codes -> int16 linear samples (one per byte). ``law``: mulaw/ulaw/pcmu or alaw/pcma."""
    key = LAWS.get(str(law).lower())
    if key is None:
        raise ValueError(f"unknown G.711 law {law!r}; expected one of {sorted(LAWS)}")
    return expansion_table(key)[np.frombuffer(data, dtype=np.uint8)]


__all__ = ["LAWS", "expand", "expansion_table"]
