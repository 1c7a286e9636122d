"""An fp8 Linear's activations made E4M3 in one kernel: each row read once, its scale and its bytes written.

Why: ``Fp8Linear`` quantizes its input before every ``_scaled_mm``. As torch operations that is a float32 copy
of the input, its absolute value, a row maximum, a division and a clamp before the cast: five or six passes over
the activations per Linear, which for the encoder's [positions, 1280] and [positions, 5120] inputs cost about as
much memory traffic as fp8 saves in the matrix products. Here one Triton program per row loads it once (in the
model's dtype), takes its amax (or the static scale), and stores the E4M3 row and its float32 scale.

On by default (``KERNEL``; VOXSERVE_FP8ROWS_KERNEL=0 keeps the torch operations) since its GPU test
(tests/gpu/test_quant_cuda.py, ``-k row_quantize``: bytes and scales bit for bit against the torch path, 24
cases) passed on an H100 on 2026-12-07 (its arithmetic up to the cast is checked on the CPU too, in Triton's
interpreter, tests/unit/test_triton_interpreted.py, where Triton is installed). Its values are the torch path's
on CUDA bit for bit: the same float32 amax; its scale as torch's CUDA kernel divides by a number (a product with
float32(1 / 448), not a division); an IEEE division of the row by it (``div_rn``, as torch divides a tensor by a
tensor); the clamp to +-448 and a round-to-nearest-even cast; NaN carried through as torch carries it. The torch
path stays for the CPU, for inputs that are not row-contiguous and where Triton is missing.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TINY = 1e-12  # floor for an all-zero row's amax, so its scale never divides by zero
_MAX_BLOCK = 16384  # one program holds a whole row: widths up to this (large-v3's widest input is 5,120)
# The Triton kernel by default; VOXSERVE_FP8ROWS_KERNEL=0 (read at import) keeps the torch operations
KERNEL = os.environ.get("VOXSERVE_FP8ROWS_KERNEL", "1") != "0"
_INV_MAX = float(
    torch.tensor(1 / FP8_MAX, dtype=torch.float32)
)  # what torch's CUDA division by 448 multiplies by


def quantize_rows(
    x: Tensor, static_scale: Tensor | None = None, *, kernel: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Activations [M, K] (any float dtype) -> (E4M3 [M, K], float32 scales [M, 1]): each row scaled by its own
    amax / 448, or all by ``static_scale`` ([1, 1] float32), then clamped to +-448 and cast. With ``kernel``
    (None: ``KERNEL``) one Triton program a row on CUDA; torch operations elsewhere."""
    m, k = x.shape
    if (
        (KERNEL if kernel is None else kernel)
        and x.is_cuda
        and triton is not None
        and x.stride(1) == 1
        and k <= _MAX_BLOCK
        and m > 0
    ):
        q = torch.empty(m, k, dtype=FP8, device=x.device)
        if static_scale is not None:
            scales = static_scale.expand(m, 1).contiguous()
        else:
            scales = torch.empty(m, 1, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(k)
        _quantize_rows_kernel[(m,)](
            x, q, scales, k, x.stride(0), _INV_MAX,
            STATIC=static_scale is not None, STORE_F32=False, BLOCK=block, num_warps=min(16, max(1, block // 512)),
        )  # fmt: skip
        return q, scales
    x = x.float()
    if static_scale is not None:
        scales = static_scale.expand(m, 1).contiguous()
    else:
        scales = x.abs().amax(dim=1, keepdim=True).clamp(min=TINY) / FP8_MAX
    return (x / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8), scales


if triton is not None:

    @triton.jit
    def _max_keeping_nan(a, b):  # noqa: ANN202
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _quantize_rows_kernel(
        X, Q, S, K, stride_x, inv_max, STATIC: tl.constexpr, STORE_F32: tl.constexpr, BLOCK: tl.constexpr
    ):  # fmt: skip
        """Row ``program_id`` of X to E4M3 in Q; its scale read from S (STATIC) or written there. STORE_F32
        stores the scaled, clamped row before the cast, in float32 (for tests in Triton's interpreter, whose fp8
        cast rounds wrongly where a mantissa carries into the exponent)."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        inside = cols < K
        x = tl.load(X + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
        if STATIC:
            scale = tl.load(S + row)
        else:
            amax = tl.reduce(tl.abs(x), 0, _max_keeping_nan)  # as torch's amax: a NaN makes the row NaN
            # inv_max is a float32 value, but Inductor passes a Python float as fp64 (seen under torch.compile
            # on an H100): cast, or the scale and the division below would be fp64
            scale = tl.maximum(amax, 1e-12, propagate_nan=tl.PropagateNan.ALL) * tl.cast(inv_max, tl.float32)
            tl.store(S + row, scale)
        y = tl.math.div_rn(x, scale)
        y = tl.minimum(
            tl.maximum(y, -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0, propagate_nan=tl.PropagateNan.ALL
        )
        if STORE_F32:
            tl.store(Q + row * K + cols, y, mask=inside)
        else:
            tl.store(Q + row * K + cols, y.to(tl.float8e4nv), mask=inside)
