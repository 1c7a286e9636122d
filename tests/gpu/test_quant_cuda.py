"""Reduced precision on CUDA: fp8 and int8 Linears against bf16, an fp8 large-v3 model under the accuracy gate,
and fp8 / int8 forwards captured in CUDA graphs.

Run on the GPU machine (compute capability >= 8.9 for fp8): ``python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py``.
Inputs are synthetic (no audio files needed); every measured figure is printed (``-s`` shows them).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import LARGE_V3
from voxserve.bench.weights import NAMED_DIMS
from voxserve.model.load import init_random
from voxserve.model.qlinear import FP8_MAX, Fp8Linear, Int8WeightOnlyLinear
from voxserve.model.quant import QuantizationError, quantize_model
from voxserve.quant.calibrate import collect_activation_stats
from voxserve.quant.gate import DEFAULT_MAX_MEAN_KL, check_accuracy, measure_divergence

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def fp8_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


needs_fp8 = pytest.mark.skipif(not fp8_capable(), reason="fp8 needs compute capability >= 8.9")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _linear(k: int, n: int, dtype: torch.dtype = torch.bfloat16) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(k, n, device=CUDA)
    nn.init.normal_(lin.weight, std=0.02)
    return lin.to(dtype)


def _synthetic(n: int, n_mels: int, seq_len: int = 48) -> tuple[list[torch.Tensor], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(n_mels, 3000, generator=g).clamp(-1, 1) for _ in range(n)]
    seqs = [[50258, 50259, 50360] + torch.randint(0, 50000, (seq_len,), generator=g).tolist() for _ in mels]
    return mels, seqs


# ------------------------------------------------------------------------------------------------ Linears


@needs_fp8
@pytest.mark.parametrize("rows", [1, 17, 256, 1500])
@pytest.mark.parametrize(("k", "n"), [(1280, 1280), (1280, 5120), (5120, 1280)])
def test_fp8_linear_vs_bf16(rows, k, n):
    lin = _linear(k, n)
    x = torch.randn(rows, k, device=CUDA, dtype=torch.bfloat16)
    ref = copy.deepcopy(lin).float()(x.float())
    dyn = Fp8Linear(lin)(x)
    static = Fp8Linear(lin, input_scale=2 * float(x.abs().max()) / FP8_MAX)(x)
    bf16 = lin(x)
    print(
        f"fp8 {rows}x{k}x{n}: dynamic {rel_err(dyn, ref):.4f}, static {rel_err(static, ref):.4f}, bf16 {rel_err(bf16, ref):.4f}"
    )
    assert dyn.dtype == torch.bfloat16 and dyn.shape == (rows, n)
    assert rel_err(dyn, ref) < 0.06 and rel_err(static, ref) < 0.06  # ~3.7% measured through CPU _scaled_mm


@needs_fp8
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("rows", "k"), [(1, 1280), (37, 5120), (4703, 1280), (5, 384)])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fp8_row_quantize_kernel_equals_torch(dtype, rows, k, static):
    """The one-pass Triton quantization of fp8 activations (model/fp8rows.py) gives the torch path's bytes and
    scales bit for bit: dynamic per-row amax and static (with values past the scale saturating), a zero row
    among them, widths below and past a power of two."""
    from voxserve.model import fp8rows

    g = torch.Generator(device="cuda").manual_seed(rows)
    x = (torch.randn(rows, k, generator=g, device=CUDA) * 3).to(dtype)
    x[rows // 2] = 0
    scale = torch.tensor([[1.5 / FP8_MAX]], device=CUDA) if static else None
    got_q, got_s = fp8rows.quantize_rows(x, scale, kernel=True)
    want_q, want_s = fp8rows.quantize_rows(x, scale, kernel=False)
    assert torch.equal(got_s, want_s)
    assert torch.equal(got_q.view(torch.uint8), want_q.view(torch.uint8))
    if not static:  # a NaN makes its row NaN on both paths
        x[0, 3] = float("nan")
        got_q, got_s = fp8rows.quantize_rows(x, scale)
        assert (
            got_s[0].isnan().all() and got_q[0].float().isnan().all() and not got_q[1:].float().isnan().any()
        )


@needs_fp8
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "k"), [(1, 1280), (37, 1280), (9, 1000), (64, 5120), (4703, 1280)])
@pytest.mark.parametrize("pre", ["norm", "norm-static", "gelu"])
def test_fp8_row_quantize_with_norm_or_gelu_matches_torch(dtype, rows, k, pre):
    """The layer norm or GELU computed inside the quantizing pass (model/fp8rows.py ``pre``) gives the scales
    and bytes of quantizing the torch operation's output, up to that output's rounding to the dtype: scales
    within two of its steps, a byte at most one E4M3 step off where it differs, and few differing."""
    from voxserve.model import fp8rows

    g = torch.Generator(device="cuda").manual_seed(rows + k)
    x = (torch.randn(rows, k, generator=g, device=CUDA) * 3 + 0.5).to(dtype)
    weight = (torch.randn(k, generator=g, device=CUDA) * 0.5 + 1).to(dtype)
    bias = (torch.randn(k, generator=g, device=CUDA) * 0.1).to(dtype)
    norm = (weight, bias, 1e-5) if pre.startswith("norm") else None
    scale = torch.tensor([[4.0 / FP8_MAX]], device=CUDA) if pre == "norm-static" else None
    kind = pre.split("-")[0]
    got_q, got_s = fp8rows.quantize_rows(x, scale, pre=kind, norm=norm, kernel=True)
    want_q, want_s = fp8rows.quantize_rows(x, scale, pre=kind, norm=norm, kernel=False)
    step = torch.finfo(dtype).eps
    assert torch.allclose(got_s, want_s, rtol=2 * step, atol=0)
    got, want = got_q.float(), want_q.float()
    differ = (got != want).float().mean().item()
    print(f"{pre} {dtype} {rows}x{k}: {differ:.2%} of bytes differ")
    assert differ < 0.01
    assert bool(((got - want).abs() <= want.abs() * 0.125 + 2**-6).all())  # one E4M3 step (normal or not)


@needs_fp8
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_linear_folds_norm_and_gelu(dtype):
    """An fp8 Linear with ``pre`` (the norm and GELU inside its input quantization, what ``norm_linear`` /
    ``gelu_linear`` ask under qlinear.FOLD_INTO_FP8) gives what it gives on the torch operations' output, within
    the rounding above, and diverges from the float Linear no more than that does."""
    ln = nn.LayerNorm(1280, device=CUDA).to(dtype)
    nn.init.normal_(ln.weight, 1.0, 0.3)
    nn.init.normal_(ln.bias, 0.0, 0.1)
    fc1, fc2 = _linear(1280, 5120, dtype), _linear(5120, 1280, dtype)
    q1, q2 = Fp8Linear(fc1), Fp8Linear(fc2)
    x = torch.randn(3, 50, 1280, device=CUDA, dtype=dtype) * 2
    h = torch.randn(3, 50, 5120, device=CUDA, dtype=dtype)
    with torch.no_grad():
        cases = [
            ("norm", q1(x, pre="norm", norm=ln), q1(ln(x)), fc1(ln(x))),
            ("gelu", q2(h, pre="gelu"), q2(torch.nn.functional.gelu(h)), fc2(torch.nn.functional.gelu(h))),
        ]
    for name, folded, unfolded, exact in cases:
        print(
            f"{name} {dtype}: folded vs unfolded {rel_err(folded, unfolded):.5f}; against the float Linear: "
            f"folded {rel_err(folded, exact):.4f}, unfolded {rel_err(unfolded, exact):.4f}"
        )
        assert folded.shape == unfolded.shape and folded.dtype == dtype
        assert rel_err(folded, unfolded) < 1e-2
        assert rel_err(folded, exact) < rel_err(unfolded, exact) * 1.1 + 1e-3


@needs_fp8
def test_fp8_linear_fp16_and_fp32_outputs():
    for dtype in (torch.float16, torch.float32):
        lin = _linear(1280, 1280, dtype)
        x = torch.randn(3, 7, 1280, device=CUDA, dtype=dtype)
        y = Fp8Linear(lin)(x)
        assert y.dtype == dtype and y.shape == (3, 7, 1280)
        assert rel_err(y, copy.deepcopy(lin).float()(x.float())) < 0.06


@pytest.mark.parametrize("rows", [1, 64, 1500])
def test_int8_weight_only_linear_vs_bf16(rows):
    lin = _linear(1280, 5120)
    x = torch.randn(rows, 1280, device=CUDA, dtype=torch.bfloat16)
    ref = copy.deepcopy(lin).float()(x.float())
    y = Int8WeightOnlyLinear(lin)(x)
    print(f"int8 weight-only {rows} rows: {rel_err(y, ref):.4f} (bf16 {rel_err(lin(x), ref):.4f})")
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 0.015


def test_int8_dynamic_is_refused_on_cuda():
    model = init_random(NAMED_DIMS["tiny"]).to(CUDA)
    with pytest.raises(QuantizationError, match="CPU precision"):
        quantize_model(model, "int8-dynamic")


# ---------------------------------------------------------------------------------------- whole model


@pytest.fixture(scope="module")
def large_v3(large_v3_cpu) -> nn.Module:
    return copy.deepcopy(large_v3_cpu).to(device=CUDA, dtype=torch.bfloat16)  # ~3 GB


@needs_fp8
@pytest.mark.parametrize("calibrated", [False, True], ids=["dynamic", "static"])
def test_fp8_large_v3_logits_and_gate(large_v3, calibrated):
    reference = large_v3
    mels, seqs = _synthetic(3, LARGE_V3.n_mels)
    stats = collect_activation_stats(reference, mels[:2], seqs[:2]) if calibrated else None
    candidate = quantize_model(copy.deepcopy(reference), "fp8", calibration=stats)
    with torch.inference_mode():
        t = torch.tensor([seqs[2]], device=CUDA)
        ref = reference.decoder.forward_full(t, reference.encoder(mels[2][None].to(CUDA, torch.bfloat16)))
        out = candidate.decoder.forward_full(t, candidate.encoder(mels[2][None].to(CUDA, torch.bfloat16)))
    report = measure_divergence(reference, candidate, mels[2:], seqs[2:])
    print(
        f"fp8 large-v3 ({'static' if calibrated else 'dynamic'}): logits rel {rel_err(out, ref):.4f}, {report.summary()}"
    )
    # tiny/base dims through CPU _scaled_mm: logits 8% off, KL 5e-4..7e-4 (nearly uniform distributions).
    assert torch.isfinite(out).all() and rel_err(out, ref) < 0.2
    check_accuracy(report, DEFAULT_MAX_MEAN_KL / 5)
    assert report.top1_agreement > 0.5  # nearly uniform distributions: near-ties flip (85% at tiny/base)


# ------------------------------------------------------------------------------------------- CUDA graphs


def _capture(fn, *static_inputs):  # noqa: ANN001, ANN202 - test helper
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


@pytest.mark.parametrize("kind", ["fp8-dynamic", "fp8-static", "int8"])
@torch.inference_mode()
def test_quantized_linear_replays_in_a_cuda_graph(kind):
    if kind.startswith("fp8") and not fp8_capable():
        pytest.skip("fp8 needs compute capability >= 8.9")
    lin = _linear(1280, 5120)
    module = {
        "fp8-dynamic": lambda: Fp8Linear(lin),
        "fp8-static": lambda: Fp8Linear(lin, input_scale=8.0 / FP8_MAX),
        "int8": lambda: Int8WeightOnlyLinear(lin),
    }[kind]()
    x = torch.zeros(4, 1280, device=CUDA, dtype=torch.bfloat16)
    graph, out = _capture(module, x)
    for seed in (1, 2):
        torch.manual_seed(seed)
        new = torch.randn(4, 1280, device=CUDA, dtype=torch.bfloat16)
        x.copy_(new)
        graph.replay()
        torch.testing.assert_close(out, module(new), rtol=0.01, atol=0.01)  # stale inputs would be O(1) off


@needs_fp8
@torch.inference_mode()
def test_fp8_decoder_step_replays_in_a_cuda_graph():
    model = init_random(NAMED_DIMS["tiny"], seed=0).to(device=CUDA, dtype=torch.bfloat16)
    quantize_model(model, "fp8")
    mel = torch.randn(2, 80, 3000, device=CUDA, dtype=torch.bfloat16).clamp(-1, 1)
    cache = model.new_cache(2)
    cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(model.encoder(mel))
    tokens = torch.zeros(2, 1, dtype=torch.long, device=CUDA)
    positions = torch.full((2, 1), 5, dtype=torch.long, device=CUDA)

    def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return model.decoder(tok, pos, cache, 6)

    graph, out = _capture(step, tokens, positions)
    for ids in ([[1000], [2000]], [[7], [42000]]):
        new = torch.tensor(ids, device=CUDA)
        tokens.copy_(new)
        graph.replay()
        replayed = out.clone()
        eager = step(new, positions)  # writes the same cache rows as the replay did
        torch.testing.assert_close(replayed, eager, rtol=0.01, atol=0.01)
    assert not torch.equal(replayed, torch.zeros_like(replayed))


@needs_fp8
def test_fp8_linear_compiles():
    lin = _linear(1280, 1280)
    module = Fp8Linear(lin)
    x = torch.randn(8, 1280, device=CUDA, dtype=torch.bfloat16)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x), rtol=0.02, atol=0.02)
