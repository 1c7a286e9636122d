"""The prefill's captured graphs run padded shapes (rows of the scratch slot, prompts padded on the right up to
a prompt-length bucket). Padding must not change the real rows: checked here eagerly on the CPU, where the same
function runs; tests/gpu/test_engine_cuda.py runs the graphs themselves against the reference decoder."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.decoding.batched import make_engine
from voxserve.engine.runner import PREFILL_GRAPH_TOKENS
from voxserve.engine.types import EngineConfig


@pytest.fixture(scope="module")
def runner(tokenizer):
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=4))
    eng.close()
    g = torch.Generator().manual_seed(0)
    mels = torch.randn(2, TINY.n_mels, 3000, generator=g).clamp(-1, 1)
    with torch.inference_mode():
        eng.runner.encode(mels, torch.tensor([2, 0]))  # cross K/V of two windows into slots 2 and 0
    return eng.runner


@pytest.mark.parametrize("masked", [False, True])
def test_padded_rows_and_prompt_leave_the_real_rows_unchanged(runner, tokenizer, masked):
    s = TINY.n_audio_ctx
    lang = tokenizer.sot + 1  # the first language token
    prompts = [[tokenizer.sot, lang, tokenizer.transcribe], [tokenizer.sot, lang, tokenizer.transcribe, 7]]
    cross = [s - 100, s] if masked else [s, s]
    t = PREFILL_GRAPH_TOKENS[-1] + 3  # past the last bucket too: padding works at any length
    results = {}
    for rows, width in ((2, 4), (4, t)):  # as they are; two padding rows and a padded prompt
        pad = rows - 2
        tokens = torch.zeros(rows, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        facts = torch.tensor(
            [[2, 0] + [runner.scratch] * pad, cross + [s] * pad, [2, 3] + [0] * pad, [0, 0] + [0] * pad]
        )
        with torch.inference_mode():
            logits, no_speech = runner._prefill_logits(facts, tokens, s, masked)
            k = [runner.self_k[0, slot, : len(p)].clone() for slot, p in zip((2, 0), prompts, strict=True)]
        results[rows] = (logits[:2], no_speech[:2], k)
    (lg, ns, k), (lg_pad, ns_pad, k_pad) = results[2], results[4]
    torch.testing.assert_close(lg_pad, lg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ns_pad, ns, rtol=1e-5, atol=1e-6)
    for a, b in zip(k_pad, k, strict=True):  # the rows' own self K/V, position by position
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(lg[0], lg[1])  # the two rows differ, so a mix-up would show


def test_prefill_shape_is_the_rows_own_without_a_graph(runner):
    """On the CPU nothing is captured: every admission runs its exact rows and prompt length."""
    assert not runner.prefill_graphs
    assert runner._prefill_shape(3, 4, 700, True) == (3, 4, 700, True)


def test_short_windows_masked_over_the_full_window_equal_their_own_length(runner, tokenizer):
    """A captured prefill runs short windows over all encoder positions, each row masked past its own length:
    the same as running them over the longest row's length."""
    full, lang = TINY.n_audio_ctx, tokenizer.sot + 1
    tokens = torch.tensor(
        [[tokenizer.sot, lang, tokenizer.transcribe, 0], [tokenizer.sot, lang, tokenizer.transcribe, 7]]
    )
    cross = [900, 1200]
    facts = torch.tensor([[2, 0], cross, [2, 3], [0, 0]])
    with torch.inference_mode():
        want = runner._prefill_logits(facts, tokens, max(cross), True)
        got = runner._prefill_logits(facts, tokens, full, True)
        unmasked = runner._prefill_logits(facts, tokens, full, False)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked[0], want[0], rtol=1e-3, atol=1e-3)  # the positions past them do count
