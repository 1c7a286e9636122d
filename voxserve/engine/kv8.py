"""8-bit cross-attention K/V (``EngineConfig.cross_kv="int8"``): the encoder's keys and values, as each decoder
layer projects them, stored as int8 with one float32 scale per (position, head), i.e. per 64 values at Whisper's
head size.

Why: every decode step reads each active row's whole cross K/V (large-v3: 7.7 MB a row a layer in fp16, 246 MB
a row a step), which is most of a batched step's memory traffic (an H100 at 64 rows: 5.6 of 8.9 ms, stop 13).
Int8 with its scales reads 53% of that, and a slot's memory drops by ~36%, so more fit.

Why int8 with a scale per (position, head) rather than float8 E4M3 with a scale per head (tried first): E4M3 keeps
3 mantissa bits, a relative rounding error of up to 2^-4 on every value, and attention that is peaked on a few
positions passed it on (5.4% relative error of the output in tests/unit/test_kv8.py's case); int8 against each
head vector's own largest magnitude rounds within 1/254 of it. The kernel folds the key scales into the scores and
the value scales into the softmax weights, so the dequantized cache is never materialised.
"""

from __future__ import annotations

import torch
from torch import Tensor

DTYPE = torch.int8
_LEVELS = 127.0
_TINY = 2.0**-100  # a floor for all-zero vectors, so their scale is never 0


def quantize(x: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """x [n, s, C] -> (int8 [n, s, C], float32 scales [n, n_head, s]) with x ~= q * scale per (position, head)."""
    n, s, c = x.shape
    heads = x.float().view(n, s, n_head, c // n_head)
    scale = heads.abs().amax(dim=3).clamp_min(_TINY) / _LEVELS  # [n, s, n_head]
    q = torch.round(heads / scale[..., None]).to(DTYPE)
    return q.view(n, s, c), scale.transpose(1, 2).contiguous()


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """(int8 [..., s, C], scales [..., n_head, s]) -> [..., s, C] in ``dtype``."""
    *lead, s, c = q.shape
    h = scale.shape[-2]
    heads = q.float().view(*lead, s, h, c // h) * scale.transpose(-1, -2)[..., None]
    return heads.view(*lead, s, c).to(dtype)


def supported(device: torch.device) -> str | None:
    """Why 8-bit cross K/V cannot run on ``device``, or None when it can: the decode step's Triton kernel reads
    it; the CPU step's attention (per-head layout, engine/runner.py) has no 8-bit form."""
    if device.type != "cuda":
        return f"cross_kv='int8' needs a CUDA GPU (the engine is on {device.type})"
    return None
