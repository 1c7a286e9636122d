"""A decoder projection of a decode step's few rows as one kernel: layer norm, product, bias, GELU, residual.

A decode step at a small batch is bound by kernel launches, not arithmetic: each decoder layer ran ~25 kernels
(a layer norm, a GEMV and a bias copy per projection, a GELU, three residual adds, the cache writes), most of
them a few microseconds of almost no work, and the GPU idles between them even inside a CUDA graph.
``rows_linear`` folds everything around a projection into the product itself: the layer norm before it (each
program recomputes its rows' statistics: a few kilobytes, read from L2), and the bias, GELU and residual add
after it. The weight is streamed once per step for all rows (``tl.dot`` over rows padded to 16, the tensor
cores idle but the load is the cost). Tile sizes are autotuned per shape on the GPU at warm-up, outside graph
capture. Arithmetic follows the reference path's: statistics and accumulation in float32, the normalised input
rounded to the weight's dtype before the product, as the eager path's layer norm output is; the sum of product,
bias and residual is rounded once, where the eager path rounds after each (at most one unit in the last place).

Elsewhere (no CUDA, no Triton) ``rows_linear`` is the eager composition, which the CUDA kernel is tested against.

Measured on an H100 (torch 2.11, Triton 3.6), large-v3 random weights, fp16 (``python3 bench/profile_step.py
--projections --dims large-v3``, stop 14). All of a step's projections, GPU time from graph replays, rows_linear
against the eager ops (layer norm, cuBLAS, GELU, residual add): 1 row 1.38 against 1.58 ms, 8 rows 1.52 / 1.51,
16 rows 1.55 / 1.55, 32 rows 1.86 / 1.58, 64 rows 2.60 / 1.68. Split-K took the 1,280-output products from ~1 to
~1.7 TB/s where they have no layer norm; the layer-norm prologue (each program recomputes its rows' statistics in
two passes over the input) still costs ~2.5 us a call. The whole captured step, fused against unfused: 1 row 2.09
/ 2.91 ms, 8 rows 2.80 / 3.50, 16 rows 3.52 / 4.26, 32 rows 5.12 / 5.54, 64 rows 8.88 / 8.55; hence MAX_ROWS 32.
On Hopper, at up to pdl.MAX_ROWS rows, the kernel launches with programmatic dependent launch (engine/pdl.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

# The most rows the fused step takes (rows pad to a power of two >= 16 for tl.dot); above it cuBLAS's GEMMs and
# the separate kernels were faster (measured, module docstring).
MAX_ROWS = 32
# Split-K: a projection of few outputs (1,280: 80 tiles of 16 on 132 multiprocessors) also splits its inputs over
# up to MAX_SPLIT programs per tile, so that enough programs stream the weight; wider ones (the logits) need not.
MAX_SPLIT = 8
SPLIT_MAX_N = 4096


def available(x: Tensor) -> bool:
    """Whether ``rows_linear`` runs as the fused kernel for this input (CUDA, Triton, at most MAX_ROWS rows)."""
    return triton is not None and x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_ROWS


def rows_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    weight_scale: Tensor | None = None,
    *,
    ln: nn.LayerNorm | None = None,
    gelu: bool = False,
    residual: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    arrivals: Tensor | None = None,
    _config: object | None = None,
) -> Tensor:
    """``residual + act(linear(layer_norm(x), weight, bias))`` for x [M, K], weight [N, K]: each part optional
    (``ln`` the layer norm module, ``gelu`` the exact GELU, ``residual`` [M, N]). With ``weight_scale`` [N] the
    weight is int8 with per-output scales (int8 weight-only, model/qlinear.py), converted to x's dtype as it
    is read (half the bytes of a 16-bit weight) and each output sum scaled. Output [M, N] in ``out_dtype``
    (default x's dtype). ``arrivals`` (from ``arrival_counters``) are the split-K tiles' counters: calls that
    share them must not overlap in time, so each engine passes its own (its steps run one after another), and
    calls without them share one set per device. ``_config`` (a ``triton.Config``, for tests) launches that tile
    instead of the tuned one."""
    out_dtype = out_dtype or x.dtype
    if not available(x):
        return _reference(x, weight, bias, ln, gelu, residual, weight_scale).to(out_dtype)
    m, k = x.shape
    n = weight.shape[0]
    if weight.stride(1) != 1 or x.stride(1) != 1 or (residual is not None and residual.stride(1) != 1):
        raise ValueError("rows_linear needs the inner dimension of x, weight and residual contiguous")
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    # Split-K partial sums (fp32, [split, M, N]); nothing to initialise, the last program of a tile reads them.
    part = torch.empty(MAX_SPLIT * m * n if n <= SPLIT_MAX_N else 1, dtype=torch.float32, device=x.device)
    ln_w = ln.weight if ln is not None else weight
    ln_b = ln.bias if ln is not None else weight
    block_m = max(16, triton.next_power_of_2(m))

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    args = (
        x, weight, bias if bias is not None else weight, residual if residual is not None else y, y, ln_w, ln_b,
        part, arrivals if arrivals is not None else _shared_arrivals(x.device),
        weight_scale if weight_scale is not None else part, m, n, k, ln.eps if ln is not None else 0.0,
        x.stride(0), weight.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
    )  # fmt: skip
    launch = pdl.launch_options(x.device, m)
    flags = dict(
        HAS_LN=ln is not None, HAS_BIAS=bias is not None, GELU=gelu, HAS_RES=residual is not None,
        HAS_WSCALE=weight_scale is not None,
        IEEE=x.dtype == torch.float32, BLOCK_M=block_m, PDL=bool(launch), PREFETCH=bool(launch) and pdl.prefetching(), LINE=128 // weight.element_size(),
    )  # fmt: skip
    if _config is None:
        _rows_linear_kernel[grid](*args, **flags, **launch)
    else:
        meta = dict(_config.kwargs)
        if meta["SPLIT_K"] > 1 and (n > SPLIT_MAX_N or meta["SPLIT_K"] > MAX_SPLIT):
            raise ValueError(f"split-K takes at most {SPLIT_MAX_N} outputs and {MAX_SPLIT} splits")
        _rows_linear_kernel.fn[grid(meta)](
            *args, **flags, **meta, **launch, num_warps=_config.num_warps, num_stages=_config.num_stages
        )
    return y


def arrival_counters(device: torch.device) -> Tensor:
    """Split-K arrival counters for ``rows_linear``, one per output tile, zero between calls (the last program of
    a tile resets its own). Allocate them before any graph capture that uses them."""
    return torch.zeros(triton.cdiv(SPLIT_MAX_N, 16), dtype=torch.int32, device=device)


_SHARED_ARRIVALS: dict[torch.device, Tensor] = {}


def _shared_arrivals(device: torch.device) -> Tensor:
    counters = _SHARED_ARRIVALS.get(device)
    if counters is None:
        counters = _SHARED_ARRIVALS[device] = arrival_counters(device)
    return counters


def _reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ln: nn.LayerNorm | None,
    gelu: bool,
    residual: Tensor | None,
    weight_scale: Tensor | None = None,
) -> Tensor:
    """The eager composition the kernel computes (the runner's unfused step)."""
    if ln is not None:
        x = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    if weight_scale is not None:  # int8 weight-only, as Int8WeightOnlyLinear computes it
        y = F.linear(x, weight.to(x.dtype)) * weight_scale.to(x.dtype)
        return _finish(y if bias is None else y + bias.to(x.dtype), gelu, residual)
    return _finish(F.linear(x, weight, bias), gelu, residual)


def _finish(y: Tensor, gelu: bool, residual: Tensor | None) -> Tensor:
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


if triton is not None:
    # Tiles: a few output features per program, and split-K for projections of few outputs, so that even 1,280
    # outputs spread over all multiprocessors with enough bytes of the weight in flight.
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w, num_stages=s)
        for bn, bk, sk, w, s in (
            (16, 128, 1, 4, 4),
            (16, 256, 1, 4, 3),
            (32, 256, 1, 4, 3),
            (64, 256, 1, 8, 2),
            (16, 128, 2, 4, 4),
            (16, 256, 2, 4, 3),
            (16, 128, 4, 4, 4),
            (16, 256, 4, 4, 3),
            (32, 128, 4, 4, 4),
            (16, 128, 8, 4, 3),
        )
    ]

    def _prune(configs: list, named_args: dict, **kwargs: object) -> list:
        """Split-K only where there are few output tiles (and never past the counters' reach)."""
        return [c for c in configs if c.kwargs["SPLIT_K"] == 1 or named_args["N"] <= SPLIT_MAX_N]

    def _tuning_bench(fn, quantiles):  # noqa: ANN202 - Triton's do_bench signature
        """Short timing runs per tile at warm-up: the kernels take microseconds, and the default (25 ms of
        warm-up, 100 of repeats per config and shape) made warm-up and the GPU tests slow."""
        return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)

    @triton.autotune(
        configs=_CONFIGS,
        key=["N", "K", "BLOCK_M", "HAS_LN", "GELU", "HAS_RES", "HAS_WSCALE", "PDL", "PREFETCH"],
        prune_configs_by={"early_config_prune": _prune},
        do_bench=_tuning_bench,
    )
    @triton.jit
    def _rows_linear_kernel(
        X, W, Bias, Res, Y, LnW, LnB, Part, Arrivals, WScale,
        M, N, K, eps,
        stride_xm, stride_wn, stride_rm, stride_ym,
        HAS_LN: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr,
        HAS_WSCALE: tl.constexpr,
        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr,
    ):  # fmt: skip
        tile = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < M
        n_ok = rn < N
        out = m_ok[:, None] & n_ok[None, :]
        x_rows = X + rm[:, None] * stride_xm
        # This program's share of the inputs: whole K tiles, the last split taking what is left.
        per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
        k_start = tl.program_id(1) * per_split
        k_end = tl.minimum(k_start + per_split, K)
        if (
            PREFETCH
        ):  # while the previous kernel finishes: this program's weights into L2, one prefetch per line
            lines = tl.arange(0, BLOCK_K // LINE) * LINE
            for k0 in range(k_start, k_end, BLOCK_K):
                ok = n_ok[:, None] & (k0 + lines < k_end)[None, :]
                pdl.prefetch_l2(tl.where(ok, W + rn[:, None] * stride_wn + k0 + lines[None, :], W))
        if PDL:
            pdl.wait_for_previous()
        if HAS_LN:  # two passes over the rows (mean, then the centred variance), as the reference computes it
            total = tl.zeros((BLOCK_M,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ok = m_ok[:, None] & (k0 + rk < K)[None, :]
                total += tl.sum(tl.load(x_rows + k0 + rk[None, :], mask=ok, other=0.0).to(tl.float32), axis=1)
            mean = total / K
            total = tl.zeros((BLOCK_M,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ok = m_ok[:, None] & (k0 + rk < K)[None, :]
                xs = tl.load(x_rows + k0 + rk[None, :], mask=ok, other=0.0).to(tl.float32)
                centred = tl.where(ok, xs - mean[:, None], 0.0)
                total += tl.sum(centred * centred, axis=1)
            rstd = 1.0 / tl.sqrt(total / K + eps)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            k_ok = k0 + rk < k_end
            xs = tl.load(x_rows + k0 + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(
                W + rn[:, None] * stride_wn + k0 + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0
            )
            if HAS_LN:
                g = tl.load(LnW + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
                beta = tl.load(LnB + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
                xs = (xs.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
            w = w.to(X.dtype.element_ty)  # int8 weights: exact in any float dtype (|q| <= 127)
            if IEEE:
                acc += tl.dot(xs.to(w.dtype), tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(xs.to(w.dtype), tl.trans(w))
        if SPLIT_K == 1:
            _epilogue(
                acc, Bias, Res, Y, WScale, rm, rn, n_ok, out, stride_rm, stride_ym, HAS_BIAS, GELU, HAS_RES, HAS_WSCALE,
            )  # fmt: skip
        else:
            # Each split stores its partial sums; the last to arrive at the tile adds them in split order (the
            # same result whichever arrives last), finishes the tile and resets the tile's counter for the next
            # call. The barrier makes every thread's partial visible before the counter says it is there.
            part = Part + rm[:, None] * N + rn[None, :]
            tl.store(part + tl.program_id(1) * M * N, acc, mask=out)
            tl.debug_barrier()
            arrived = tl.atomic_add(Arrivals + tile, 1, sem="acq_rel")
            if arrived == SPLIT_K - 1:
                acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                for split in tl.static_range(SPLIT_K):
                    acc += tl.load(part + split * M * N, mask=out, other=0.0, cache_modifier=".cg")
                tl.atomic_xchg(Arrivals + tile, 0)
                _epilogue(
                    acc, Bias, Res, Y, WScale, rm, rn, n_ok, out, stride_rm, stride_ym, HAS_BIAS, GELU, HAS_RES, HAS_WSCALE,
                )  # fmt: skip

    @triton.jit
    def _epilogue(
        acc, Bias, Res, Y, WScale, rm, rn, n_ok, out, stride_rm, stride_ym,
        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RES: tl.constexpr, HAS_WSCALE: tl.constexpr,
    ):  # fmt: skip
        """Weight scales, bias, GELU and residual on a tile's sums, then the store in the output's dtype."""
        if HAS_WSCALE:
            acc *= tl.load(WScale + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(Bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        if HAS_RES:
            acc += tl.load(Res + rm[:, None] * stride_rm + rn[None, :], mask=out, other=0.0).to(tl.float32)
        tl.store(Y + rm[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty), mask=out)
