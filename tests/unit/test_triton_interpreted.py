"""The Triton kernels (engine/scatter.py, model/fp8rows.py) run on the CPU in Triton's interpreter.

Their GPU tests (tests/gpu) are the word on whether they can be on (they passed on an H100, stop 23); this checks their index and arithmetic logic
wherever Triton is installed (the GPU machine's torch brings it; the CPU build and CI lack it, so the test skips
there: ``pip install triton`` to run it). The interpreter must be chosen before the kernels are defined, so the
checks run in a child process with TRITON_INTERPRET=1. Its fp8 cast rounds wrongly where a mantissa carries into
the exponent (124.3 became 64, not 128), so the fp8 kernel is checked up to its cast (``STORE_F32``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")


def check_scatter() -> None:
    from voxserve.engine import scatter

    torch.manual_seed(0)
    for p, c, n in [(5, 300, 9), (33, 1280, 40), (1, 7, 3)]:
        for dtype in (torch.float16, torch.float32):
            a, b = torch.randn(p, c).to(dtype), torch.randn(p, c).to(dtype)
            to = torch.randperm(n)[:p].contiguous()
            got_a, got_b = torch.zeros(n, c, dtype=dtype), torch.zeros(n, c, dtype=dtype)
            want_a, want_b = got_a.clone(), got_b.clone()
            want_a[to], want_b[to] = a, b
            grid = (scatter.triton.cdiv(p, scatter._BLOCK_P), scatter.triton.cdiv(c, scatter._BLOCK_C))
            scatter._scatter_pair_kernel[grid](
                a, b, to, got_a, got_b, p, c, a.stride(0), b.stride(0), got_a.stride(0), got_b.stride(0),
                BLOCK_P=scatter._BLOCK_P, BLOCK_C=scatter._BLOCK_C,
            )  # fmt: skip
            assert torch.equal(got_a, want_a) and torch.equal(got_b, want_b), (p, c, dtype)


def check_fp8rows() -> None:
    from voxserve.model import fp8rows

    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for m, k in [(3, 1280), (5, 1000), (4, 5120), (9, 1280)]:  # 9 rows: programs of 4 rows, a tail of 1
            for static in (False, True):
                x = (torch.randn(m, k) * 3).to(dtype)
                x[m // 2] = 0
                if not static:
                    x[0, 3] = float("nan")  # a NaN makes its row's scale and values NaN, as torch's amax
                fixed = torch.tensor([[1.5 / fp8rows.FP8_MAX]]) if static else None
                got = torch.empty(m, k)
                scales = fixed.expand(m, 1).contiguous() if static else torch.empty(m, 1)
                fp8rows.launch(x, got, scales, static=static, store_f32=True)
                want_s, want = _fp8_rows_as_torch(x.float(), fixed)
                assert torch.equal(scales.nan_to_num(-1), want_s.nan_to_num(-1)), (dtype, m, k, static)
                assert torch.equal(got.nan_to_num(-1), want.nan_to_num(-1)), (dtype, m, k, static)
                assert got[0].isnan().all() != static
            # the layer norm and GELU computed in the pass: the torch operation's output, rounded to the dtype,
            # quantized (equal up to that rounding's last bit: the sums' order, Triton's erf against torch's)
            x = (torch.randn(m, k) * 3 + 0.5).to(dtype)
            x[1] = (0.25 + 1e-3 * torch.randn(k)).to(dtype)  # a near-constant row: the norm's eps matters
            weight, bias = (torch.randn(k) * 0.5 + 1).to(dtype), (torch.randn(k) * 0.1).to(dtype)
            for pre, norm, before in [
                ("norm", (weight, bias, 1e-5), torch.nn.functional.layer_norm(x, (k,), weight, bias, 1e-5)),
                ("norm", (None, None, 1e-5), torch.nn.functional.layer_norm(x, (k,), None, None, 1e-5)),
                ("gelu", None, torch.nn.functional.gelu(x)),
            ]:
                got, scales = torch.empty(m, k), torch.empty(m, 1)
                fp8rows.launch(x, got, scales, static=False, pre=pre, norm=norm, store_f32=True)
                want_s, want = _fp8_rows_as_torch(before.float(), None)
                # one rounding step of the dtype (floored for float32's sums in another order)
                step = max(torch.finfo(dtype).eps, 1e-5)
                assert torch.allclose(scales, want_s, rtol=2 * step, atol=0), (dtype, m, k, pre)
                assert (got - want).abs().max() <= 2 * step * fp8rows.FP8_MAX, (dtype, m, k, pre)


def _fp8_rows_as_torch(xf: torch.Tensor, fixed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's CUDA path before the cast: scale = amax * float32(1 / 448), an IEEE division, the clamp."""
    from voxserve.model import fp8rows

    m = xf.shape[0]
    if fixed is not None:
        scales = fixed.expand(m, 1)
    else:
        scales = xf.abs().amax(1, keepdim=True).clamp(min=fp8rows.TINY) * torch.tensor(fp8rows._INV_MAX)
    return scales, (xf / scales).clamp(-fp8rows.FP8_MAX, fp8rows.FP8_MAX)


@pytest.mark.parametrize("check", ["check_scatter", "check_fp8rows"])
def test_kernel_in_triton_interpreter(check: str) -> None:
    code = f"from tests.unit.test_triton_interpreted import {check}; {check}()"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
