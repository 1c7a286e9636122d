"""The CPU fast paths against their definitions: the engine's CPU step (views of the cache, runs of
consecutive slots, no padding), the host-known timestamp skip in the policy, the transposed-embedding logits,
and int8-dynamic's quantized output projection (bounded divergence from fp32, same tokens in engine and
reference)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.decode import decode_windows
from voxserve.decoding.options import DecodingOptions
from voxserve.engine.attention import reference_decode_attention
from voxserve.engine.policy import PolicyState
from voxserve.engine.runner import _consecutive_runs
from voxserve.engine.types import EngineConfig, RowSpec
from voxserve.model.load import init_random
from voxserve.model.qlinear import Int8DynamicLinear
from voxserve.model.quant import QuantizationError, quantize_model
from voxserve.quant.gate import DEFAULT_MAX_MEAN_KL, measure_divergence


@pytest.fixture(scope="module")
def model(tokenizer):
    return decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, TINY.n_mels, 3000, generator=g).clamp(-1, 1)


def test_consecutive_runs():
    assert _consecutive_runs([0, 1, 2]) == [(0, 0, 3)]
    assert _consecutive_runs([0, 2, 3, 7]) == [(0, 0, 1), (1, 2, 2), (3, 7, 1)]
    assert _consecutive_runs([5]) == [(0, 5, 1)]


def test_cpu_attention_over_views_matches_the_gathering_definition(model, tokenizer):
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=8))
    eng.close()
    runner = eng.runner
    g = torch.Generator().manual_seed(1)
    slots = [0, 1, 3, 5, 6]  # three runs
    lengths = [7, 3, 448, 1, 12]  # differing within a run: masked there
    cache_k = torch.randn(9, 448, TINY.n_text_state, generator=g)
    cache_v = torch.randn(9, 448, TINY.n_text_state, generator=g)
    q = torch.randn(len(slots), TINY.n_text_state, generator=g)
    got = runner._attend_runs(q, cache_k, cache_v, _consecutive_runs(slots), lengths)
    want = reference_decode_attention(
        q.view(len(slots), runner.n_head, runner.head_dim),
        cache_k,
        cache_v,
        torch.tensor(slots),
        torch.tensor(lengths),
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The cross K/V's per-head layout [S, H, T, head_dim] attends to the same result.
    h, dh = runner.n_head, runner.head_dim
    per_head = [c.view(9, 448, h, dh).transpose(1, 2).contiguous() for c in (cache_k, cache_v)]
    got = runner._attend_runs(q, *per_head, _consecutive_runs(slots), lengths, per_head=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_cross_cache_is_per_head_and_holds_the_layers_keys(model, tokenizer, mels):
    """Admission writes each layer's cross K/V into the CPU cache's per-head layout."""
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=4))
    eng.close()
    runner = eng.runner
    assert runner.cross_per_head
    spec = RowSpec(
        initial_tokens=(tokenizer.sot, tokenizer.no_timestamps),
        sot_index=0,
        suppress=(tokenizer.eot,),
        suppress_blank=True,
        timestamps=False,
        max_initial_timestamp_index=None,
        sample_len=4,
        temperature=0.0,
    )
    with torch.inference_mode():
        runner.admit([2, 0], [spec, spec], list(mels[:2]))
        features = runner.encode(mels[:2])
        h, dh = runner.n_head, runner.head_dim
        for i, layer in enumerate(model.decoder.layers):
            for slot, row in ((2, 0), (0, 1)):
                k = layer.cross_attn.key(features[row])
                v = layer.cross_attn.value(features[row])
                assert torch.equal(runner.cross_k[i, slot], k.view(-1, h, dh).transpose(0, 1))
                assert torch.equal(runner.cross_v[i, slot], v.view(-1, h, dh).transpose(0, 1))


def test_cpu_step_threads_give_the_same_tokens_and_restore_the_setting(model, mels, tokenizer):
    """Few-row CPU steps run with cpu_step_threads intra-op threads: same tokens as torch's own setting, and
    the setting is back afterwards."""
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=20)
    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # so that the one-thread steps really switch
    try:
        tokens = []
        for threads in (None, 1):
            config = EngineConfig(max_slots=2, cpu_step_threads=threads)
            with make_engine(model, tokenizer, config) as eng:
                assert eng.runner.cpu_step_threads == threads
                batch = BatchDecoder(eng, model, tokenizer)
                tokens.append([r.tokens for r in batch.decode(mels[:2], options)])
        assert tokens[0] == tokens[1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(outer)
    with pytest.raises(ValueError, match="cpu_step_threads"):
        EngineConfig(cpu_step_threads=0)


def _greedy_spec(tokenizer, *, suppress: tuple[int, ...], sample_len: int) -> RowSpec:
    """A greedy row without timestamps that suppresses blanks at its first step."""
    return RowSpec(
        initial_tokens=(tokenizer.sot, tokenizer.no_timestamps),
        sot_index=0,
        suppress=suppress,
        suppress_blank=True,
        timestamps=False,
        max_initial_timestamp_index=None,
        sample_len=sample_len,
        temperature=0.0,
    )


def _policy(tokenizer, blank_ids: list[int]) -> PolicyState:
    """A CPU policy state of 4 slots over the tiny vocabulary."""
    return PolicyState(
        4,
        TINY.n_vocab,
        eot=tokenizer.eot,
        no_timestamps=tokenizer.no_timestamps,
        timestamp_begin=tokenizer.timestamp_begin,
        blank_ids=blank_ids,
        n_ctx=448,
        device=torch.device("cpu"),
    )


def test_policy_cpu_shortcuts_pick_the_same(tokenizer):
    """No timestamp rules when no row has them, suppression by index instead of bias rows: same picks."""
    v = TINY.n_vocab
    spec = _greedy_spec(tokenizer, suppress=(tokenizer.eot, 1000, 2000), sample_len=10)
    a, b = _policy(tokenizer, [tokenizer.eot]), _policy(tokenizer, [tokenizer.eot])
    a.reset([0, 1, 2, 3], [spec] * 4)
    b.reset([0, 1, 2, 3], [spec] * 4)
    rows = torch.tensor([0, 2, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        logits = torch.randn(3, v, generator=g) * 3
        ta, da = a.select(logits.clone(), rows)
        tb, db = b.select(logits.clone(), rows, timestamps=False, sparse_bias=rows.tolist())
        assert torch.equal(ta, tb) and torch.equal(da, db)
        assert torch.equal(a.sum_logprob, b.sum_logprob) and torch.equal(a.ts_last, b.ts_last)


def test_one_row_select_is_select(tokenizer):
    """PolicyState.select_row against select for a lone greedy row without timestamp rules, step after step:
    the first step's blank suppression, the suppressed ids, end-of-text (a strong one every few steps), the
    length cap, and a done row emitting end-of-text: the same tokens, done flags, summed log-probs (exactly) and
    state."""
    v = TINY.n_vocab
    spec = _greedy_spec(tokenizer, suppress=(1000, 2000), sample_len=6)
    g = torch.Generator().manual_seed(0)
    ended = {"eot": 0, "length": 0}
    for episode in range(12):
        a, b = _policy(tokenizer, [220, tokenizer.eot]), _policy(tokenizer, [220, tokenizer.eot])
        a.reset([2], [spec])
        b.reset([2], [spec])
        for step in range(9):  # past the length cap: a done row goes on emitting end-of-text
            logits = torch.randn(v, generator=g) * 3
            logits[1000] = 50.0  # suppressed
            if step == 0:
                logits[220] = 50.0  # a blank: suppressed at the first step
            # end-of-text wins where allowed, in odd episodes; the rest run to the length cap
            if episode % 2 and (episode + step) % 5 == 4:
                logits[tokenizer.eot] = 40.0
            ta, da = a.select(logits[None].clone(), torch.tensor([2]), timestamps=False, sparse_bias=[2])
            token, done, logprob = b.select_row(logits.clone(), 2)
            assert (token, done) == (int(ta), bool(da))
            assert logprob == float(a.sum_logprob[2])
        for name in ("n_sampled", "length", "last", "prev", "ts_last", "sum_logprob", "done"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        ended["eot" if int(a.n_sampled[2]) < spec.sample_len else "length"] += 1
    assert ended["eot"] and ended["length"]  # both ways of ending were exercised


@pytest.mark.parametrize(("rows", "threads"), [((2, 3), 2), ((1, 1), 1), ((1, 1), 2)])
def test_cpu_logits_through_the_transposed_embedding_follow_the_embedding(rows, threads):
    """Every CPU form of the tied logits (few rows; one row on one thread through the transposed copy; one row on
    more threads as a padded two-column product) is the tied product, and follows the embedding's changes."""
    m = init_random(TINY, seed=0)
    dec = m.decoder
    x = torch.randn(*rows, TINY.n_text_state)
    outer = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_tied_logits(dec, x)
    finally:
        torch.set_num_threads(outer)


def _check_tied_logits(dec, x):
    with torch.inference_mode():
        tied = (dec.ln(x) @ dec.token_embedding.weight.T).float()
        torch.testing.assert_close(dec.logits(x), tied, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        dec.token_embedding.weight[:10] *= -3  # in place: the transposed copy must be rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(
            dec.logits(x), (dec.ln(x) @ dec.token_embedding.weight.T).float(), rtol=1e-5, atol=1e-5
        )
    # Training (gradients through the tied embedding) never takes the detached copy.
    x.requires_grad_(True)
    dec.logits(x).sum().backward()
    assert dec.token_embedding.weight.grad is not None


def test_int8_dynamic_quantizes_the_output_projection_within_the_gate(model, mels, tokenizer):
    q = quantize_model(copy.deepcopy(model), "int8-dynamic")
    assert isinstance(q.decoder.proj_out, Int8DynamicLinear)
    assert q.decoder.token_embedding.weight.dtype == torch.float32  # the lookup stays float
    tied = quantize_model(copy.deepcopy(model), "int8-dynamic", logits=False)
    assert tied.decoder.proj_out is None
    with pytest.raises(QuantizationError, match="no quantized output projection"):
        quantize_model(copy.deepcopy(model), "fp32", logits=True)
    seqs = [[50258, 50259, 50360, *range(1000, 1030)] for _ in mels]
    with_logits = measure_divergence(model, q, list(mels), seqs)
    without = measure_divergence(model, tied, list(mels), seqs)
    # int8 logits add error, and it stays far under the build gate's limit.
    assert without.mean_kl < with_logits.mean_kl < DEFAULT_MAX_MEAN_KL / 10
    assert with_logits.top1_agreement > 0.85


def test_int8_dynamic_engine_matches_its_reference_decoder(model, mels, tokenizer):
    """The same int8 model decodes the same tokens in the engine and the reference decoder (one window at a
    time: int8-dynamic's per-tensor activation scale couples the rows of a batch)."""
    q = quantize_model(copy.deepcopy(model), "int8-dynamic")
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=30)
    with make_engine(q, tokenizer, EngineConfig(max_slots=2)) as eng:
        batch = BatchDecoder(eng, q, tokenizer)
        for mel in mels:
            ref = decode_windows(q, tokenizer, mel[None], options)[0]
            assert batch.decode(mel[None], options)[0].tokens == ref.tokens
