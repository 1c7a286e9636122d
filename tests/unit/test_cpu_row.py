"""The CPU step's one-row decoder layers (engine/cpu_row.py) against the general CPU path: the same logits, the
same cache writes, the same tokens, other slots untouched; and where the one-row path does not apply."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY
from tests.support import decisive_model, prompted_specs
from voxserve.decoding.batched import make_engine
from voxserve.engine.types import EngineConfig
from voxserve.model.quant import quantize_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)


def _runner(model, tokenizer):
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=4))
    eng.close()
    return eng.runner


def test_one_row_steps_equal_the_general_path(model, tokenizer):
    """Two runners admit the same windows (a row in slot 2, another in slot 0 that only one of them steps), then
    step slot 2 alone, one through the one-row layers and one through the general path: the same logits, the
    same self K/V written, the same tokens, and slot 0's cache left as it was."""
    g = torch.Generator().manual_seed(3)
    mels = list(torch.randn(2, TINY.n_mels, 3000, generator=g).clamp(-1, 1))
    fast, general = _runner(model, tokenizer), _runner(model, tokenizer)
    assert fast._row_layers is not None
    general._row_layers = None
    (spec,) = prompted_specs(tokenizer, [3], sample_len=12)
    with torch.inference_mode():
        for r in (fast, general):
            r.admit([2, 0], [spec, spec], mels)
        other_k = fast.self_k[:, 0].clone()
        slot = torch.tensor([2])
        for _ in range(10):
            got, want = fast._logits_cpu(slot, [2]), general._logits_cpu(slot, [2])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fast.self_k[:, 2], general.self_k[:, 2], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fast.self_v[:, 2], general.self_v[:, 2], rtol=1e-5, atol=1e-5)
            (token, done, logprob), (token_g, done_g, logprob_g) = (
                r._step_cpu([2], False) for r in (fast, general)
            )
            assert (token, done) == (token_g, done_g)
            assert logprob == pytest.approx(logprob_g, rel=1e-5)
        assert torch.equal(fast.self_k[:, 0], other_k)
        assert int(fast.policy.length[2]) > 10  # the steps really advanced the row


def test_one_row_layers_apply_to_float32_linear_layers_only(model, tokenizer):
    assert _runner(model, tokenizer)._row_layers is not None
    quantized = quantize_model(copy.deepcopy(model), "int8-dynamic")
    assert _runner(quantized, tokenizer)._row_layers is None
