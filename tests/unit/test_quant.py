"""Linear swaps: each quantized Linear against its float original, whole models against the fp32 reference,
handler selection and its errors, dtype casts and state dicts of quantized modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import TINY
from voxserve.model.load import init_random
from voxserve.model.qlinear import (
    FP8_MAX,
    Fp8Linear,
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
    quantize_fp8,
    quantize_int8,
)
from voxserve.model.quant import (
    PRECISIONS,
    CalibrationError,
    CalibrationStats,
    LinearStats,
    QuantizationError,
    get_handler,
    quantizable_linears,
    quantize_model,
    swap_linears,
    weights_hash,
)


def _cpu_scaled_mm() -> bool:
    """torch 2.13's CPU build runs _scaled_mm (slowly): enough to test the fp8 math without a GPU."""
    try:
        a = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_cpu_fp8 = pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch has no CPU _scaled_mm")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return init_random(TINY, seed=0)


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return torch.randn(2, TINY.n_mels, 3000, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50000, (2, 24), generator=torch.Generator().manual_seed(2))


def logits(m: nn.Module, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return m.decoder.forward_full(tokens, m.encoder(mel))


# ----------------------------------------------------------------------------------------- single Linears


def _linear(k: int = 384, n: int = 1536, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    nn.init.normal_(lin.weight, std=0.02)
    return lin


def test_weight_quantizers_are_per_channel_and_exact_at_the_row_max():
    w = torch.randn(8, 64) * torch.logspace(-3, 1, 8)[:, None]  # rows spanning four orders of magnitude
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and s.shape == (8,)
    assert torch.allclose((q.float() * s[:, None]).abs().amax(1), w.abs().amax(1), rtol=1e-6)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-9).all()  # half a step at most
    f, fs = quantize_fp8(w)
    assert f.dtype == torch.float8_e4m3fn and torch.allclose(
        f.float().abs().amax(1), torch.full((8,), FP8_MAX)
    )
    assert rel_err(f.float() * fs[:, None], w) < 0.04  # 3 mantissa bits: ~2.5% rms
    z = torch.zeros(4, 32)  # an all-zero row must not produce NaN scales
    assert torch.isfinite(quantize_int8(z)[1]).all() and (quantize_int8(z)[0] == 0).all()


@pytest.mark.parametrize(
    ("cls", "bound"),
    [(Int8WeightOnlyLinear, 0.01), (Int8DynamicLinear, 0.03)],
)
@pytest.mark.parametrize("shape", [(1, 384), (3, 7, 384), (1500, 384)])
def test_int8_linear_matches_float(cls, bound, shape):
    lin = _linear()
    x = torch.randn(*shape)
    ref = lin(x)
    y = cls(lin)(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    # Measured: weight-only 0.5% (bf16 compute on AVX512-BF16 CPUs), dynamic 1.0% (VNNI) / 1.9% (7-bit range).
    assert rel_err(y, ref) < bound


def test_int8_dynamic_fallback_kernel_matches_float():
    lin = _linear()
    x = torch.randn(5, 384)
    assert rel_err(Int8DynamicLinear(lin)._int_mm(x), lin(x)) < 0.015  # per-row scales: ~0.8%


def test_int8_dynamic_refuses_non_cpu_input():
    m = Int8DynamicLinear(_linear(64, 64))
    with pytest.raises(RuntimeError, match="CPU only"):
        m(torch.zeros(1, 64, device="meta"))


@needs_cpu_fp8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_float_dynamic_and_static(dtype):
    lin = _linear().to(dtype)
    x = torch.randn(3, 5, 384, dtype=dtype)
    ref = copy.deepcopy(lin).float()(x.float())
    dyn = Fp8Linear(lin)(x)
    static = Fp8Linear(lin, input_scale=2 * float(x.abs().max()) / FP8_MAX)(x)
    assert dyn.dtype == dtype and static.dtype == dtype and dyn.shape == ref.shape
    assert rel_err(dyn, ref) < 0.06  # E4M3 weights and activations: ~3.7% measured
    assert rel_err(static, ref) < 0.06


@needs_cpu_fp8
def test_fp8_static_scale_saturates_instead_of_overflowing():
    lin = _linear(64, 64)
    m = Fp8Linear(lin, input_scale=1.0 / FP8_MAX)  # calibrated amax of 1
    y = m(torch.full((2, 64), 50.0))  # 50x beyond it
    assert torch.isfinite(y).all()
    assert torch.allclose(y, lin(torch.ones(2, 64)), rtol=0.1, atol=0.05)  # clipped to the scale's limit, 1


def test_fp8_needs_dims_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(nn.Linear(40, 64))
    with pytest.raises(ValueError, match="positive"):
        Fp8Linear(nn.Linear(64, 64), input_scale=0.0)


@pytest.mark.parametrize("cls", [Int8WeightOnlyLinear, Int8DynamicLinear, Fp8Linear])
def test_dtype_casts_leave_quantized_weights_and_scales_alone(cls):
    m = cls(_linear(64, 64)).to(torch.bfloat16)
    fixed = {name: b.dtype for name, b in m.named_buffers() if name != "bias"}
    assert all(d in (torch.int8, torch.float8_e4m3fn, torch.float32) for d in fixed.values()), fixed
    assert m.bias.dtype == torch.bfloat16  # the bias follows the model


@pytest.mark.parametrize("cls", [Int8WeightOnlyLinear, Int8DynamicLinear])
def test_state_dict_round_trip(cls):
    a, b = cls(_linear(64, 64, seed=0)), cls(_linear(64, 64, seed=1))
    x = torch.randn(4, 64)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())  # Int8DynamicLinear repacks its FBGEMM weights on load
    assert torch.equal(a(x), b(x))
    assert torch.equal(copy.deepcopy(a)(x), a(x))


# -------------------------------------------------------------------------------------------- whole models


@pytest.mark.parametrize(("precision", "bound"), [("int8", 0.02), ("int8-dynamic", 0.03)])
def test_int8_model_logits_match_fp32(model, mel, tokens, precision, bound):
    ref = logits(model, mel, tokens)
    q = quantize_model(copy.deepcopy(model), precision)
    out = logits(q, mel, tokens)
    assert rel_err(out, ref) < bound
    assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.9


@needs_cpu_fp8
def test_fp8_model_logits_match_fp32_through_cpu_scaled_mm(model, mel, tokens):
    ref = logits(model, mel, tokens)
    q = swap_linears(copy.deepcopy(model), get_handler("fp8"))
    assert rel_err(logits(q, mel, tokens), ref) < 0.1


def test_swaps_every_block_linear_and_nothing_else(model):
    q = quantize_model(copy.deepcopy(model), "int8")
    names = [n for n, _ in quantizable_linears(model)]
    assert (
        len(names) == TINY.n_audio_layer * 6 + TINY.n_text_layer * 10
    )  # q,k,v,out,fc1,fc2 (+ cross q,k,v,out)
    assert all(isinstance(q.get_submodule(n), Int8WeightOnlyLinear) for n in names)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(q.encoder.conv1, nn.Conv1d) and q.decoder.token_embedding.weight.dtype == torch.float32


def test_skip_patterns_keep_linears_in_float(model):
    q = quantize_model(copy.deepcopy(model), "int8", skip=["encoder.layers.0.*", "*.cross_attn.key"])
    assert type(q.encoder.layers[0].fc1) is nn.Linear
    assert type(q.decoder.layers[1].cross_attn.key) is nn.Linear
    assert isinstance(q.encoder.layers[1].fc1, Int8WeightOnlyLinear)
    with pytest.raises(QuantizationError, match="matches no Linear"):
        quantize_model(copy.deepcopy(model), "int8", skip=["encoder.blocks.*"])


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_float_precisions_cast_without_swapping(model, precision, dtype):
    q = quantize_model(copy.deepcopy(model), precision)
    assert q.dtype == dtype and not any(isinstance(m, Int8WeightOnlyLinear) for m in q.modules())


def test_bad_precision_name_lists_the_valid_ones(model):
    with pytest.raises(QuantizationError, match="unknown precision 'int4'.*fp8.*int8-dynamic"):
        quantize_model(model, "int4")
    assert set(PRECISIONS) == {"fp32", "fp16", "bf16", "fp8", "int8", "int8-dynamic"}


def test_fp8_on_cpu_is_refused_clearly(model):
    with pytest.raises(QuantizationError, match="fp8 needs a CUDA GPU with compute capability 8.9"):
        quantize_model(copy.deepcopy(model), "fp8")


def test_quantizing_twice_is_refused(model):
    q = quantize_model(copy.deepcopy(model), "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(q, "int8-dynamic")


# --------------------------------------------------------------------------------- calibration hand-off


def _stats_for(m: nn.Module, amax: float = 3.0) -> CalibrationStats:
    layers = {n: LinearStats(amax, amax / 2) for n, _ in quantizable_linears(m)}
    return CalibrationStats(weights_hash(m), layers, quantile=0.9999, n_windows=1, n_tokens=1)


@needs_cpu_fp8
def test_fp8_static_scales_come_from_the_calibration(model):
    stats = _stats_for(model, amax=3.0)
    q = swap_linears(copy.deepcopy(model), get_handler("fp8", fp8_margin=1.5), calibration=stats)
    scale = q.decoder.layers[0].fc2.input_scale
    assert scale.shape == (1, 1) and float(scale) == pytest.approx(1.5 * 3.0 / FP8_MAX)


def test_calibration_from_other_weights_is_refused(model):
    stats = _stats_for(init_random(TINY, seed=5))
    with pytest.raises(CalibrationError, match="other weights"):
        swap_linears(copy.deepcopy(model), get_handler("fp8"), calibration=stats)
    partial = CalibrationStats(weights_hash(model), {}, 0.9999, 1, 1)
    with pytest.raises(CalibrationError, match="lack"):
        swap_linears(copy.deepcopy(model), get_handler("fp8"), calibration=partial)
    with pytest.raises(QuantizationError, match="only fp8"):
        quantize_model(copy.deepcopy(model), "int8", calibration=_stats_for(model))


def test_weights_hash_ignores_dtype_but_not_values(model):
    h = weights_hash(model)
    assert weights_hash(copy.deepcopy(model).to(torch.bfloat16)) == h
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.layers[0].fc1.weight[0, 0] += 1.0
    assert weights_hash(changed) != h
