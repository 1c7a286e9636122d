"""What the fused decode step takes from a model (engine/runner.py's ``_rows_args``) and the eager definition of an
int8 weight-only projection in ``fused._reference``, which the CUDA kernel is tested against
(tests/gpu/test_fused_cuda.py). The kernel itself needs CUDA."""

from __future__ import annotations

import torch
from torch import nn

from voxserve.engine import fused
from voxserve.engine.runner import _rows_args
from voxserve.model.qlinear import Fp8Linear, Int8WeightOnlyLinear


def test_rows_args_take_float_and_int8_weight_only_projections_only():
    linear = nn.Linear(16, 8)
    assert _rows_args(linear) == (linear.weight, linear.bias, None)
    int8 = Int8WeightOnlyLinear(linear)
    weight, bias, scale = _rows_args(int8)
    assert weight.dtype == torch.int8 and weight is int8.weight and bias is int8.bias and scale is int8.scale
    assert _rows_args(Fp8Linear(nn.Linear(16, 16))) is None
    assert _rows_args(None) is None


def test_int8_reference_is_the_weight_only_modules_product():
    """fused._reference with a weight scale computes what Int8WeightOnlyLinear's own forward computes (its float
    path; the bf16 CPU path is another rounding), then GELU and the residual add."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 32)
    int8 = Int8WeightOnlyLinear(linear)
    int8.cpu_bf16 = False
    x = torch.randn(3, 64, generator=g)
    residual = torch.randn(3, 32, generator=g)
    with torch.no_grad():
        want = residual + torch.nn.functional.gelu(int8(x))
        got = fused._reference(x, int8.weight, int8.bias, None, True, residual, int8.scale)
        torch.testing.assert_close(got, want)
        # and it is close to the float layer it quantizes
        assert (
            fused._reference(x, int8.weight, int8.bias, None, False, None, int8.scale) - linear(x)
        ).abs().max() < 0.05
