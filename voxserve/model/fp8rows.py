"""An fp8 Linear's activations made E4M3 in one kernel: each row read once, its scale and its bytes written;
optionally the layer norm or GELU before the Linear computed in the same pass.

Why: ``Fp8Linear`` quantizes its input before every ``_scaled_mm``. As torch operations that is a float32 copy
of the input, its absolute value, a row maximum, a division and a clamp before the cast: five or six passes over
the activations per Linear, which for the encoder's [positions, 1280] and [positions, 5120] inputs cost about as
much memory traffic as fp8 saves in the matrix products. Here one Triton program per ``ROWS`` rows loads them
once (in the model's dtype), takes each row's amax (or the static scale), and stores the E4M3 rows and their
float32 scales. Even as one kernel the quantization of the encoder's six Linear inputs a layer took 6.3 of
27.4 ms of an fp8 packed pass on an H100 (bench/profile_encoder.py, 2026-12-07), eating most of what fp8 saved
in the matrix products (20.3 -> 15.4 ms): the layer norm before the query / key / value and fc1 projections and
the GELU before fc2 each wrote their output for the quantization to read back. ``pre="norm"`` and
``pre="gelu"`` compute them here instead, in float32, rounded to the input's dtype as the torch operation would
round its output, so the result is what quantizing the torch operation's output gives up to the last bit of
that rounding (a layer norm's mean and variance summed in another order; Triton's erf against CUDA's).

On by default (``KERNEL``; VOXSERVE_FP8ROWS_KERNEL=0 keeps the torch operations) since its GPU test
(tests/gpu/test_quant_cuda.py, ``-k row_quantize``: bytes and scales bit for bit against the torch path, 24
cases) passed on an H100 on 2026-12-07 (its arithmetic up to the cast is checked on the CPU too, in Triton's
interpreter, tests/unit/test_triton_interpreted.py, where Triton is installed). The kernel as rewritten in stop
28 (several rows a program, ``pre``) passed its GPU tests (``-k "row_quantize or folds"``, with the rest of the
fp8 and packed-encoder ones: 67 passed) on an H100 on 2026-12-08. There the rewrite quantized a packed pass's
inputs in 5.17 ms without ``pre`` (6.3 before it), but 9.44 ms with the norms and GELU folded in, more than the
~3.3 ms the separate operations took, so qlinear.FOLD_INTO_FP8 leaves ``pre`` unused by default. Without a
``pre`` its values are
the torch path's on CUDA bit for bit: the same float32 amax; its scale as torch's CUDA kernel divides by a number
(a product with float32(1 / 448), not a division); an IEEE division of the row by it (``div_rn``, as torch
divides a tensor by a tensor); the clamp to +-448 and a round-to-nearest-even cast; NaN carried through as torch
carries it. The torch path stays for the CPU, for inputs that are not row-contiguous and where Triton is missing.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
TINY = 1e-12  # floor for an all-zero row's amax, so its scale never divides by zero
_MAX_BLOCK = 16384  # one program holds whole rows: widths up to this (large-v3's widest input is 5,120)
_PROGRAM_ELEMENTS = 8192  # narrow rows share a program up to this many elements (1,280-wide: 4 rows of 2,048)
# The Triton kernel by default; VOXSERVE_FP8ROWS_KERNEL=0 (read at import) keeps the torch operations
KERNEL = os.environ.get("VOXSERVE_FP8ROWS_KERNEL", "1") != "0"
_INV_MAX = float(
    torch.tensor(1 / FP8_MAX, dtype=torch.float32)
)  # what torch's CUDA division by 448 multiplies by
PRE = {None: 0, "norm": 1, "gelu": 2}  # what the kernel computes from a row before quantizing it

Norm = tuple[Tensor | None, Tensor | None, float]  # a layer norm's weight, bias and eps


def quantize_rows(
    x: Tensor,
    static_scale: Tensor | None = None,
    *,
    pre: str | None = None,
    norm: Norm | None = None,
    kernel: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Activations [M, K] (any float dtype) -> (E4M3 [M, K], float32 scales [M, 1]): each row scaled by its own
    amax / 448, or all by ``static_scale`` ([1, 1] float32), then clamped to +-448 and cast. ``pre``: first
    "norm" (a layer norm over each row with ``norm``'s weight, bias and eps) or "gelu" (exact, erf), their output
    rounded to x's dtype. With ``kernel`` (None: ``KERNEL``) one Triton program per few rows on CUDA; torch
    operations elsewhere."""
    if pre not in PRE:
        raise ValueError(f"pre must be one of {sorted(p for p in PRE if p)} or None, got {pre!r}")
    if (pre == "norm") != (norm is not None):
        raise ValueError("pre='norm' needs norm=(weight, bias, eps), and norm needs pre='norm'")
    m, k = x.shape
    if (
        (KERNEL if kernel is None else kernel)
        and x.is_cuda
        and triton is not None
        and x.stride(1) == 1
        and k <= _MAX_BLOCK
        and m > 0
        and all(t is None or (t.is_contiguous() and t.device == x.device) for t in (norm or (None, None))[:2])
    ):
        q = torch.empty(m, k, dtype=FP8, device=x.device)
        if static_scale is not None:
            scales = static_scale.expand(m, 1).contiguous()
        else:
            scales = torch.empty(m, 1, dtype=torch.float32, device=x.device)
        launch(x, q, scales, static=static_scale is not None, pre=pre, norm=norm)
        return q, scales
    if pre == "norm":
        assert norm is not None
        weight, bias, eps = norm
        x = F.layer_norm(x, (k,), weight, bias, eps)
    elif pre == "gelu":
        x = F.gelu(x)
    x = x.float()
    if static_scale is not None:
        scales = static_scale.expand(m, 1).contiguous()
    else:
        scales = x.abs().amax(dim=1, keepdim=True).clamp(min=TINY) / FP8_MAX
    return (x / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8), scales


def launch(
    x: Tensor,
    q: Tensor,
    scales: Tensor,
    *,
    static: bool,
    pre: str | None = None,
    norm: Norm | None = None,
    store_f32: bool = False,
) -> None:
    """Run the kernel over x [M, K] into q [M, K] (E4M3, or float32 with ``store_f32``: the scaled, clamped rows
    before the cast, for tests in Triton's interpreter) and scales [M, 1] (read when ``static``, else written)."""
    m, k = x.shape
    block = triton.next_power_of_2(k)
    rows = max(1, _PROGRAM_ELEMENTS // block)
    weight, bias, eps = norm if norm is not None else (None, None, 0.0)
    _quantize_rows_kernel[(triton.cdiv(m, rows),)](
        x, q, scales, x if weight is None else weight, x if bias is None else bias, m, k, x.stride(0), _INV_MAX,
        float(eps), PRE=PRE[pre], AFFINE_W=weight is not None, AFFINE_B=bias is not None, STATIC=static,
        STORE_F32=store_f32, ROWS=rows, BLOCK=block, num_warps=min(16, max(4, rows * block // 512)),
    )  # fmt: skip


if triton is not None:

    @triton.jit
    def _max_keeping_nan(a, b):  # noqa: ANN202
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _quantize_rows_kernel(
        X, Q, S, W, B, M, K, stride_x, inv_max, eps, PRE: tl.constexpr, AFFINE_W: tl.constexpr,
        AFFINE_B: tl.constexpr, STATIC: tl.constexpr, STORE_F32: tl.constexpr, ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Rows ``program_id * ROWS`` onward of X to E4M3 in Q, after PRE (0 none, 1 layer norm with W, B, eps,
        2 GELU); their scales read from S (STATIC) or written there. STORE_F32 stores the scaled, clamped rows
        before the cast, in float32 (Triton's interpreter's fp8 cast rounds wrongly where a mantissa carries
        into the exponent)."""
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        row_in = rows < M
        col_in = cols < K
        inside = row_in[:, None] & col_in[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=inside, other=0.0)
        dtype = x.dtype
        x = x.to(tl.float32)
        if PRE == 1:  # layer norm over each row, then the rounding of its output to the input's dtype
            mean = tl.sum(x, 1) / K
            centred = tl.where(inside, x - mean[:, None], 0.0)
            eps32 = tl.cast(eps, tl.float32)  # (a Python float comes as fp64 under Inductor)
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / K + eps32)
            x = centred * rstd[:, None]
            if AFFINE_W:
                x = x * tl.load(W + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
            if AFFINE_B:
                x = x + tl.load(B + cols, mask=col_in, other=0.0).to(tl.float32)[None, :]
            x = tl.where(inside, x.to(dtype).to(tl.float32), 0.0)
        elif PRE == 2:  # exact GELU (Whisper's), rounded likewise; GELU(0) = 0 past the row's end
            x = (0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))).to(dtype).to(tl.float32)
        if STATIC:
            scale = tl.load(S + rows, mask=row_in, other=1.0)
        else:
            amax = tl.reduce(tl.abs(x), 1, _max_keeping_nan)  # as torch's amax: a NaN makes the row NaN
            # inv_max is a float32 value, but Inductor passes a Python float as fp64 (seen under torch.compile
            # on an H100): cast, or the scale and the division below would be fp64
            scale = tl.maximum(amax, 1e-12, propagate_nan=tl.PropagateNan.ALL) * tl.cast(inv_max, tl.float32)
            tl.store(S + rows, scale, mask=row_in)
        y = tl.math.div_rn(x, scale[:, None])
        y = tl.minimum(
            tl.maximum(y, -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0, propagate_nan=tl.PropagateNan.ALL
        )
        out = Q + rows[:, None] * K + cols[None, :]
        if STORE_F32:
            tl.store(out, y, mask=inside)
        else:
            tl.store(out, y.to(tl.float8e4nv), mask=inside)
