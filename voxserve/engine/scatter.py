"""Rows written to scattered places of a cache: a packed encoder pass's cross-attention K/V into their slots, and
a packed prefill's self-attention K/V (engine/packed_prefill.py).

Why a kernel: a packed pass (engine/packed.py) writes every decoder layer's keys and values for each of its
positions into (slot, position) of the cross K/V caches. As ``cache[slot, position] = x`` PyTorch's index_put
runs one element per thread, reading both indices for every element: at 400 live streams (large-v3 fp16, H100,
bench/profile_streams.py --profile, stop 20) its 128 launches took 3.4 of an admission's 29 ms of device time,
~450 GB/s. Here each program copies whole rows, keys and values of a layer in one launch.

Used by ``Runner._write_cross_at`` for the model layout of the cross K/V (the int8 and per-head layouts keep
their own writes) and by ``Runner._prefill_packed``. On by default (``KERNEL``; VOXSERVE_SCATTER_KERNEL=0 makes
the writes index_put, as before it) since its GPU test (tests/gpu/test_engine_cuda.py, ``-k scatter``: bit for
bit against index_put) passed on an H100 on 2026-12-07. Its logic is checked on the CPU too, in Triton's
interpreter where Triton is installed (tests/unit/test_triton_interpreted.py).
"""

from __future__ import annotations

import os

from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

_BLOCK_P, _BLOCK_C = 16, 256
# The Triton kernel by default; VOXSERVE_SCATTER_KERNEL=0 (read at import) keeps index_put, e.g. for an A/B
KERNEL = os.environ.get("VOXSERVE_SCATTER_KERNEL", "1") != "0"


def scatter_rows(
    rows: tuple[Tensor, ...], to: Tensor, caches: tuple[Tensor, ...], *, kernel: bool | None = None
) -> None:
    """``cache[to[p]] = x[p]`` for each ``x`` [P, C] in ``rows`` and its ``cache`` [N, C] (a view of rows of a
    contiguous cache), ``to`` [P] int64 on the same device. With ``kernel`` (None: ``KERNEL``) one Triton kernel
    for every pair on CUDA; index_put elsewhere."""
    if len(rows) != len(caches) or not rows:
        raise ValueError("scatter_rows needs one cache per rows tensor")
    p, c = rows[0].shape
    use = KERNEL if kernel is None else kernel
    fast = (
        use
        and rows[0].is_cuda
        and triton is not None
        and len(rows) == 2
        and to.is_cuda
        and to.is_contiguous()
    )
    if (
        fast
        and all(x.shape == (p, c) and x.stride(1) == 1 and x.dtype == rows[0].dtype for x in rows)
        and all(
            y.dim() == 2 and y.shape[1] == c and y.stride(1) == 1 and y.dtype == rows[0].dtype for y in caches
        )
    ):
        grid = (triton.cdiv(p, _BLOCK_P), triton.cdiv(c, _BLOCK_C))
        _scatter_pair_kernel[grid](
            rows[0], rows[1], to, caches[0], caches[1], p, c,
            rows[0].stride(0), rows[1].stride(0), caches[0].stride(0), caches[1].stride(0),
            BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
        return
    for x, cache in zip(rows, caches, strict=True):
        cache[to] = x.to(cache.dtype)


if triton is not None:

    @triton.jit
    def _scatter_pair_kernel(
        A, B, To, CacheA, CacheB, P, C, stride_a, stride_b, stride_ca, stride_cb,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """BLOCK_P rows of A and B, BLOCK_C columns of each, to rows To[p] of their caches."""
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        col = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = (p < P)[:, None] & (col < C)[None, :]
        dst = tl.load(To + p, mask=p < P, other=0).to(tl.int64)[:, None]
        a = tl.load(A + p[:, None].to(tl.int64) * stride_a + col[None, :], mask=ok)
        tl.store(CacheA + dst * stride_ca + col[None, :], a, mask=ok)
        b = tl.load(B + p[:, None].to(tl.int64) * stride_b + col[None, :], mask=ok)
        tl.store(CacheB + dst * stride_cb + col[None, :], b, mask=ok)
