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

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

DTYPE = torch.int8
_LEVELS = 127.0
# Scales are the largest magnitude times this reciprocal, in both forms: PyTorch divides a tensor by a Python
# number as a product with its reciprocal, which differs from a true division in the last bit now and then, and
# the kernel must round exactly as the eager form does.
_INV_LEVELS = 1.0 / _LEVELS
_TINY = 2.0**-100  # a floor for all-zero vectors, so their scale is never 0


def quantize(x: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """x [n, s, C] -> (int8 [n, s, C], float32 scales [n, n_head, s]) with x ~= q * scale per (position, head)."""
    n, s, c = x.shape
    heads = x.float().view(n, s, n_head, c // n_head)
    scale = heads.abs().amax(dim=3).clamp_min(_TINY) * _INV_LEVELS  # [n, s, n_head]
    q = torch.floor(heads / scale[..., None] + 0.5).to(DTYPE)  # ties up, as the kernel rounds
    return q.view(n, s, c), scale.transpose(1, 2).contiguous()


def quantize_into(x: Tensor, slots: Tensor, cache: Tensor, scales: Tensor) -> None:
    """``quantize`` x [n, s, C] straight into the slots ``slots`` [n] of a layer's cache [S, T, C] and its scales
    [S, H, T] (positions [0, s)). On CUDA one kernel reads x once (the eager form is ~10 passes over it, which
    cost more at admission than the 8-bit reads saved in the steps); elsewhere the eager form."""
    n, s, c = x.shape
    h = scales.shape[1]
    if not (x.is_cuda and triton is not None):
        q, scale = quantize(x, h)
        cache[:, :s].index_copy_(0, slots, q)
        scales[:, :, :s].index_copy_(0, slots, scale)
        return
    if x.stride(2) != 1 or cache.stride(2) != 1 or scales.stride(2) != 1:
        raise ValueError("quantize_into needs the last dimension of x, cache and scales contiguous")
    block_s = 32
    _quantize_kernel[(n, triton.cdiv(s, block_s), h)](
        x, slots, cache, scales, s, x.stride(0), x.stride(1), cache.stride(0), cache.stride(1),
        scales.stride(0), scales.stride(1), _TINY, _INV_LEVELS, D=c // h, BLOCK_S=block_s,
    )  # fmt: skip


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


if triton is not None:

    @triton.jit
    def _quantize_kernel(
        X, Slots, Q, Scale, S, stride_xn, stride_xs, stride_qslot, stride_qs, stride_sslot, stride_sh, tiny,
        inv_levels,
        D: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        """One head of BLOCK_S positions of one row: each position's head vector to int8 against its own
        largest magnitude, written into the row's slot with its scale."""
        i = tl.program_id(0)
        pos = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
        h = tl.program_id(2)
        slot = tl.load(Slots + i).to(tl.int64)
        ok = (pos < S)[:, None]
        d = tl.arange(0, D)
        x = tl.load(X + i * stride_xn + pos[:, None] * stride_xs + h * D + d[None, :], mask=ok, other=0.0)
        x = x.to(tl.float32)
        # the scale as ``quantize`` forms it, and an IEEE division (Triton's "/" on float32 is approximate), so
        # the kernel rounds exactly as ``quantize``
        scale = tl.maximum(tl.max(tl.abs(x), axis=1), tiny) * inv_levels
        q = tl.floor(tl.math.div_rn(x, scale[:, None]) + 0.5)
        tl.store(
            Q + slot * stride_qslot + pos[:, None] * stride_qs + h * D + d[None, :], q.to(tl.int8), mask=ok
        )
        tl.store(Scale + slot * stride_sslot + h * stride_sh + pos, scale, mask=pos < S)
