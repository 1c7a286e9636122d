"""The fused few-row decode step on CUDA (engine/fused.py, the self-attention step kernel) against the eager ops.

Run on the GPU machine: ``python3 -m pytest -q -m gpu tests/gpu``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.decoding.batched import make_engine
from voxserve.engine import fused, select_kernel
from voxserve.engine.attention import decode_self_attention
from voxserve.engine.policy import PolicyState
from voxserve.engine.types import EngineConfig
from voxserve.model.qlinear import quantize_int8
from voxserve.model.quant import quantize_model

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _layer_norm(k: int, dtype: torch.dtype, g: torch.Generator) -> nn.LayerNorm:
    ln = nn.LayerNorm(k).to("cuda", dtype)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(k, generator=g, device="cuda"))
        ln.bias.copy_(0.3 * torch.randn(k, generator=g, device="cuda"))
    return ln


FORMS = ["ln", "ln+gelu", "residual", "ln, no bias, float32 out", "plain, odd sizes"]
# Every form in half precision at one and at many rows; the other dtypes on two forms (each case compiles and
# tunes its own kernels, seconds apiece).
CASES = (
    [(torch.float16, rows, form) for rows in (1, fused.MAX_ROWS) for form in FORMS]
    + [(dtype, 5, form) for dtype in (torch.float32, torch.bfloat16) for form in ("ln+gelu", "residual")]
    # int8 weight-only projections (the int8 precision's modules): int8 weights, per-output scales
    + [(torch.float16, 1, "ln+gelu, int8 weight"), (torch.float16, fused.MAX_ROWS, "residual, int8 weight")]
    + [(torch.bfloat16, 3, "ln, int8 weight")]
)


def _rows_linear_case(dtype: torch.dtype, rows: int, form: str, config: object = None) -> float:
    """rows_linear on one random case against the eager ops in float32 from the same rounded inputs: the
    relative error."""
    g = torch.Generator(device="cuda").manual_seed(rows)
    n, k = (1000, 333) if form == "plain, odd sizes" else (1280, 5120 if "residual" in form else 1280)
    x = (2 * torch.randn(rows, k, generator=g, device="cuda") + 0.5).to(dtype)
    weight = (torch.randn(n, k, generator=g, device="cuda") / k**0.5).to(dtype)
    weight_scale = None
    if "int8 weight" in form:
        weight, weight_scale = quantize_int8(weight)
    bias = None if "no bias" in form else torch.randn(n, generator=g, device="cuda").to(dtype)
    ln = _layer_norm(k, dtype, g) if form.startswith("ln") else None
    residual = torch.randn(rows, n, generator=g, device="cuda").to(dtype) if "residual" in form else None
    out_dtype = torch.float32 if "float32 out" in form else None
    kwargs = dict(ln=ln, gelu="gelu" in form, residual=residual, out_dtype=out_dtype)
    assert fused.available(x)
    got = fused.rows_linear(x, weight, bias, weight_scale, **kwargs, _config=config)
    assert got.shape == (rows, n) and got.dtype == (out_dtype or dtype)
    f = lambda t: None if t is None else t.float()  # noqa: E731
    ln32 = None if ln is None else nn.LayerNorm(k).cuda()
    if ln32 is not None:
        ln32.load_state_dict({name: p.float() for name, p in ln.state_dict().items()})
    ref = fused._reference(
        x.float(), weight.float(), f(bias), ln32, "gelu" in form, f(residual), weight_scale
    )
    return ((got.float() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize(("dtype", "rows", "form"), CASES)
def test_rows_linear_equals_the_eager_ops(dtype, rows, form) -> None:
    err = _rows_linear_case(dtype, rows, form)
    assert err < TOLERANCE[dtype], err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_rows_linear_tile_equals_the_eager_ops(dtype) -> None:
    """Each tile and split-K setting, not only the one tuning picks, on aligned and ragged sizes and up to
    MAX_ROWS rows; twice each, since split-K tiles reset their arrival counters for the next call."""
    for config in fused._CONFIGS:
        for rows, form in (
            (5, "ln+gelu"), (fused.MAX_ROWS, "plain, odd sizes"), (1, "residual"), (3, "ln, int8 weight")
        ):  # fmt: skip
            for _ in range(2):
                err = _rows_linear_case(dtype, rows, form, config)
                assert err < TOLERANCE[dtype], (config, rows, form, err)
    assert not fused._SHARED_ARRIVALS[torch.device("cuda", torch.cuda.current_device())].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_self_attention_step_writes_the_cache_and_attends(dtype) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    slots, t, h, d = 7, 448, 20, 64
    c = h * d
    k_cache = torch.randn(slots, t, c, generator=g, device="cuda").to(dtype)
    v_cache = torch.randn(slots, t, c, generator=g, device="cuda").to(dtype)
    qkv = torch.randn(5, 3 * c, generator=g, device="cuda").to(dtype)
    rows = torch.tensor([3, 0, 6, 1, 5], device="cuda")
    lengths = torch.tensor([1, 2, 65, 448, 130], device="cuda")
    k_ref, v_ref = k_cache.clone().cpu().float(), v_cache.clone().cpu().float()
    got = decode_self_attention(qkv, k_cache, v_cache, rows, lengths, h)
    ref = decode_self_attention(qkv.cpu().float(), k_ref, v_ref, rows.cpu(), lengths.cpu(), h)
    assert torch.equal(k_cache.cpu().float(), k_ref) and torch.equal(v_cache.cpu().float(), v_ref)
    err = ((got.cpu().float() - ref).norm() / ref.norm()).item()
    assert err < TOLERANCE[dtype], err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, "int8"])
def test_fused_step_logits_equal_the_unfused_step(tokenizer, dtype) -> None:
    """The same slots stepped by the fused and the unfused step (eagerly: the engine tests compare the captured
    steps' tokens), at buckets up to fused.MAX_ROWS and one above it (where both are the unfused step): the same
    logits (float32: to rounding), the same cache contents. "int8": the int8 weight-only precision (bf16
    activations), whose projections the fused step reads as int8."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    if dtype == "int8":
        model, dtype = quantize_model(model.to("cuda", torch.bfloat16), "int8"), torch.bfloat16
    else:
        model = model.to("cuda", dtype)
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=64, cuda_graphs=True, fused_step=True))
    try:
        runner = eng.runner
        assert runner.fused_step
        g = torch.Generator(device="cuda").manual_seed(1)
        with torch.no_grad():
            for cache in (runner.self_k, runner.self_v, runner.cross_k, runner.cross_v):
                cache.copy_(torch.randn(cache.shape, generator=g, device="cuda").to(dtype))
            runner.policy.length[:64] = torch.randint(1, 200, (64,), generator=g, device="cuda")
            runner.policy.last[:64] = torch.randint(0, 50000, (64,), generator=g, device="cuda")
            runner.cross_len[:64] = torch.randint(1, 1501, (64,), generator=g, device="cuda")
            for b in (1, 2, 8, 32, 64):  # batch buckets (the step's launch shapes are set per bucket)
                rows = torch.randperm(64, generator=g, device="cuda")[:b]
                saved = runner.self_k.clone(), runner.self_v.clone()
                runner.fused_step = runner.policy.use_kernel = False
                want = runner._logits(rows)
                want_cache = runner.self_k.clone(), runner.self_v.clone()
                runner.self_k.copy_(saved[0])
                runner.self_v.copy_(saved[1])
                runner.fused_step = runner.policy.use_kernel = True
                got = runner._logits(rows)
                tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]
                pos = runner.policy.length[rows] - 1  # where this step wrote each row's key and value
                for cache, want_c, before in zip(
                    (runner.self_k, runner.self_v), want_cache, saved, strict=True
                ):
                    new, want_new = cache[:, rows, pos].float(), want_c[:, rows, pos].float()
                    assert ((new - want_new).norm() / want_new.norm()).item() < tol
                    assert not torch.equal(want_new, before[:, rows, pos].float())
                err = ((got - want).norm() / want.norm()).item()
                assert err < tol, (b, err)
                if dtype == torch.float32:
                    assert torch.equal(got.argmax(-1), want.argmax(-1))
    finally:
        eng.close()


@pytest.mark.parametrize("dependent_launch", ["0", "1"])
def test_captured_fused_step_equals_the_eager_step(tokenizer, monkeypatch, dependent_launch) -> None:
    """At 1,280 features (split-K tiles in play, partial sums and counters inside the graph), the captured fused
    step gives exactly what the same step gives eagerly: tokens, finished flags, summed log-probs and the cache
    entries it writes, bucket by bucket, over consecutive steps (each reads what the last wrote); with and without
    programmatic dependent launch (engine/pdl.py, at up to pdl.MAX_ROWS rows on Hopper), whose overlap of
    consecutive kernels inside the graph must not change a bit."""
    torch.backends.cuda.matmul.allow_tf32 = False
    wide = dict(n_audio_state=1280, n_audio_head=20, n_audio_layer=1, n_text_state=1280, n_text_head=20)
    dims = dataclasses.replace(TINY, **wide, n_text_layer=2)
    model = decisive_model(dims, tokenizer, std=0.05, eot_boost=1.0).cuda()
    # Both ways alike: tiles are tuned per launch kind, and a different tile may round differently.
    monkeypatch.setenv("VOXSERVE_PDL", dependent_launch)
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=32, cuda_graphs=True, fused_step=True))
    try:
        runner, pol = eng.runner, eng.runner.policy
        assert runner.fused_step
        n = runner.n_slots
        state = ("n_sampled", "length", "last", "prev", "ts_last", "sum_logprob", "done")

        def touched() -> list[torch.Tensor]:
            """What a step writes, in the real slots (a graph's capture steps the scratch slot)."""
            caches = [runner.self_k[:, :n], runner.self_v[:, :n]]
            return caches + [getattr(pol, name)[:n] for name in state]

        g = torch.Generator(device="cuda").manual_seed(2)
        with torch.no_grad():
            for cache in (runner.self_k, runner.self_v, runner.cross_k, runner.cross_v):
                cache.copy_(torch.randn(cache.shape, generator=g, device="cuda"))
            pol.length[:n] = torch.randint(1, 200, (n,), generator=g, device="cuda")
            pol.last[:n] = torch.randint(0, 50000, (n,), generator=g, device="cuda")
            pol.sample_len[:n] = 10**6
            runner.cross_len[:n] = torch.randint(1, 1501, (n,), generator=g, device="cuda")
            for b in (b for b in (1, 8, 32) if b <= n):
                slots = torch.randperm(n, generator=g, device="cuda")[:b].tolist()
                before = [t.clone() for t in touched()]
                runner.use_graphs = False
                want = [runner.step(slots) for _ in range(3)]
                want_after = [t.clone() for t in touched()]
                for t, saved in zip(touched(), before, strict=True):
                    t.copy_(saved)
                runner.use_graphs = True
                got = [runner.step(slots) for _ in range(3)]
                for step, (g_, w_) in enumerate(zip(got, want, strict=True)):
                    assert g_[0] == w_[0] and g_[1] == w_[1], (b, step)
                    assert g_[2] == pytest.approx(w_[2], abs=1e-6), (b, step)
                for name, t, w in zip(("self_k", "self_v", *state), touched(), want_after, strict=True):
                    assert torch.equal(t, w), (b, name)
        assert runner._graphs, "the step should have run as a captured graph"
    finally:
        eng.close()


@pytest.mark.parametrize("sample", [False, True])
def test_select_kernel_equals_the_tensor_rules(sample) -> None:
    """One program per row against PolicyState.select (the oracle): every timestamp rule in play (first token
    with a max initial timestamp, after a timestamp pair, after a single one, monotonic floors, rows without
    timestamps, a finished row), with timestamp logits pushed up so that "timestamps win" triggers too."""
    v, ts, eot, device = 51866, 50365, 50257, torch.device("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    suppressed = torch.randint(0, v, (200,), generator=g, device="cuda")

    def state() -> PolicyState:  # the same state each call (the oracle's and the kernel's copies)
        s = PolicyState(
            8, v, eot=eot, no_timestamps=ts - 1, timestamp_begin=ts, blank_ids=[220, eot], n_ctx=448,
            device=device,
        )  # fmt: skip
        s.bias[:, suppressed] = float("-inf")
        t = lambda *x: torch.tensor(x, device="cuda")  # noqa: E731
        s.suppress_blank[:] = t(1, 0, 1, 0, 1, 1, 0, 1).bool()
        s.timestamps[:] = t(1, 1, 0, 1, 1, 1, 0, 1).bool()
        s.max_initial[:] = t(ts + 50, v, v, ts + 10, v, v, v, v)
        s.temperature[:] = t(0, 0, 0.7, 0, 1.0, 0, 0.5, 0).float()
        s.sample_len[:] = 100
        s.n_sampled[:] = t(0, 3, 0, 1, 5, 7, 2, 4)
        s.length[:] = t(4, 10, 3, 8, 20, 447, 6, 12)
        s.last[:] = t(50258, ts + 40, 100, ts + 3, 500, ts + 9, 7, ts + 100)
        s.prev[:] = t(50259, ts + 20, 99, 300, ts + 1, 800, 6, ts + 100)
        s.ts_last[:] = t(-1, ts + 40, -1, ts + 3, ts + 1, ts + 9, -1, ts + 100)
        s.done[:] = t(0, 0, 0, 0, 0, 0, 1, 0).bool()
        return s

    rows = torch.arange(8, device="cuda")
    for push in (0.0, 1.0, 2.0):
        g.manual_seed(int(push))
        want_state, got_state = state(), state()
        assert torch.equal(want_state.bias, got_state.bias)
        logits = 3 * torch.randn(8, v, generator=g, device="cuda")
        logits[:, ts:] += push
        noise = torch.rand(8, v, generator=g, device="cuda") if sample else None
        tokens, done = want_state.select(logits.clone(), rows, noise)
        packed = select_kernel.select_packed(got_state, logits.clone(), rows, noise)
        assert torch.equal(packed[0].long(), tokens) and torch.equal(packed[1].bool(), done)
        assert torch.allclose(packed[2], want_state.sum_logprob[rows].double(), atol=1e-4)
        for name in ("n_sampled", "length", "last", "prev", "ts_last", "done"):
            assert torch.equal(getattr(got_state, name), getattr(want_state, name)), name
        assert any(t >= ts for t in tokens.tolist()) and any(t < eot for t in tokens.tolist())


def test_select_kernel_breaks_ties_at_the_lowest_index() -> None:
    """Equal best logits in different vocabulary blocks: the lowest index wins, as argmax picks it."""
    v, ts, eot, device = 51866, 50365, 50257, torch.device("cuda")
    states = []
    for _ in range(2):
        s = PolicyState(4, v, eot=eot, no_timestamps=ts - 1, timestamp_begin=ts, blank_ids=[220, eot], n_ctx=448,
                        device=device)  # fmt: skip
        s.bias[:, :5] = float("-inf")
        s.sample_len[:], s.length[:], s.n_sampled[:], s.last[:], s.prev[:], s.ts_last[:] = (
            100,
            5,
            1,
            100,
            99,
            -1,
        )
        states.append(s)
    logits = torch.zeros(4, v, device="cuda")
    logits[1, 9000] = logits[1, 30000] = 1.0
    logits[2, 45000] = logits[2, 44000] = 2.0
    rows = torch.arange(4, device="cuda")
    tokens, _ = states[0].select(logits.clone(), rows)
    packed = select_kernel.select_packed(states[1], logits.clone(), rows, None)
    assert packed[0].long().tolist() == tokens.tolist() == [5, 9000, 44000, 5]
