"""Linear layers over a few rows on the CPU, in the BLAS call that streams the weight fastest.

A decode step multiplies a handful of rows by every weight matrix once. On the CPU that is memory-bound, and how
fast torch's BLAS streams a weight depends on the call's form, not on the arithmetic: ``x @ W.T`` with a few rows
of ``x`` (what ``F.linear`` runs) is markedly slower than the same product as ``W @ x.T``, a GEMM over the weight's
rows with a few columns, and a single row is faster padded to two (a two-column GEMM instead of a GEMV).
Measured on the 2-core AVX512 bench machine (MKL, torch 2.13) over base's 36 decoder matrices (84 MB, read
cold as in a step), ms for the lot at 1 / 2 / 4 / 8 rows, two threads: ``F.linear`` 9.0 / 13.4 / 10.7 / 12.3,
``W @ x.T`` 6.6 (one row padded) / 6.6 / 5.5 / 8.3. The forms are the same float32 arithmetic up to summation
order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Above this many rows the product is a regular GEMM and F.linear's form is as good (measured up to 32).
MAX_ROWS = 32


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x [..., in], weight [out, in]; on the CPU in float32 (what was
    measured) with at most ``MAX_ROWS`` rows computed as ``weight @ x.T``. Returns a contiguous [..., out]."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (
        x.device.type != "cpu"
        or not 0 < rows <= MAX_ROWS
        or x.dtype != torch.float32
        or weight.dtype != x.dtype
    ):
        return F.linear(x, weight, bias)
    columns = x.reshape(rows, x.shape[-1])
    if rows == 1:  # a two-column GEMM streams the weight faster than the one-column GEMV
        columns = torch.cat([columns, torch.zeros_like(columns)])
    if bias is None:
        y = torch.mm(weight, columns.t())
    else:
        y = torch.addmm(bias[:, None], weight, columns.t())
    return y[:, :rows].t().contiguous().view(*x.shape[:-1], weight.shape[0])
