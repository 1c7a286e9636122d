"""The packed prefill (engine/packed_prefill.py): an admission's prompts end to end give every row the first
token, no-speech probability and self K/V that the padded [rows, tokens] prefill gives it, eager and through
the captured form's buffers (a CPU stand-in for the graph)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY
from tests.support import attention_from_cu, prompted_specs
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.options import DecodingOptions
from voxserve.engine import packed, packed_prefill
from voxserve.engine.types import EngineConfig
from voxserve.model.layers import merge_heads, split_heads
from voxserve.model.load import init_random


@pytest.fixture(scope="module")
def model():
    return init_random(TINY, std=0.2).eval()


def test_pass_sizes_and_the_index() -> None:
    assert packed_prefill.pass_size(1) == 64 and packed_prefill.pass_size(1025) == 1280
    assert packed_prefill.pass_size(packed_prefill.GRAPH_TOKENS + 1) == packed_prefill.GRAPH_TOKENS + 1
    sizes = packed_prefill.pass_sizes()
    assert sizes[0] == 64 and sizes[-1] == packed_prefill.GRAPH_TOKENS and list(sizes) == sorted(set(sizes))
    assert all(packed_prefill.pass_size(s) == s for s in sizes)
    index = packed_prefill.pack_prompts(
        [(5, 6, 7), (8,), (9, 10)], [4, 0, 2], [100, 1500, 7], [0, 0, 1], size=8, rows=4, scratch=9
    )
    assert index.token.tolist() == [5, 6, 7, 8, 9, 10, 0, 0]
    assert index.position.tolist() == [0, 1, 2, 0, 0, 1, 0, 1]
    assert index.slot.tolist() == [4, 4, 4, 0, 2, 2, 9, 9]
    assert index.cross_len.tolist() == [100, 100, 100, 1500, 7, 7, 1, 1]
    assert index.last.tolist() == [2, 3, 5, 0] and index.sot.tolist() == [0, 3, 5, 0]
    assert index.row_slot.tolist() == [4, 0, 2, 0] and index.row_cross_len.tolist() == [100, 1500, 7, 0]
    assert index.cu.tolist() == [0, 3, 4, 6, 8, 8] and index.bounds == ((0, 3), (3, 4), (4, 6), (6, 8))
    assert index.longest == 3
    views = packed_prefill.split_flat(torch.from_numpy(index.flat()), 8, 4)
    for name in (*packed_prefill.TOKEN_FIELDS, *packed_prefill.ROW_FIELDS, "cu"):
        assert views[name].tolist() == getattr(index, name).tolist(), name
    assert len(index.flat()) == 4 * 8 + 4 * 4 + (4 + 2)  # four token fields, four row fields, cu
    with pytest.raises(ValueError, match="cannot pack"):
        packed_prefill.pack_prompts([(1, 2), (3,)], [0, 1], [1, 1], [0, 0], size=2, rows=4, scratch=9)
    with pytest.raises(ValueError, match="cannot pack"):
        packed_prefill.pack_prompts([()], [0], [1], [0], size=4, rows=4, scratch=9)


def _admit(model, tokenizer, packed_prefill_on: bool, slots, specs, mels):
    config = EngineConfig(max_slots=6, max_admit=8, packed_prefill=packed_prefill_on)
    engine = make_engine(model, tokenizer, config)
    engine.close()
    with torch.inference_mode():
        admitted = engine.runner.admit(slots, specs, mels)
    return admitted, engine.runner


def test_packed_prefill_gives_each_row_what_the_padded_one_gives(model, tokenizer) -> None:
    """Rows of different prompt lengths (3 to 20 tokens) over windows of different encoder lengths: the same
    first tokens, no-speech probabilities and self K/V at every prompt position of each row's slot."""
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(TINY.n_mels, f, generator=g) for f in (3000, 200, 64, 800)]
    slots, lengths = [3, 0, 5, 1], [3, 20, 7, 11]
    specs = prompted_specs(tokenizer, lengths)
    want, padded = _admit(model, tokenizer, False, slots, specs, mels)
    got, packed_runner = _admit(model, tokenizer, True, slots, specs, mels)
    assert [a.token for a in got] == [a.token for a in want]
    for a, b in zip(got, want, strict=True):
        assert a.slot == b.slot and a.no_speech_prob == pytest.approx(b.no_speech_prob, rel=1e-4, abs=1e-6)
    for slot, n in zip(slots, lengths, strict=True):
        for cache in ("self_k", "self_v"):
            torch.testing.assert_close(
                getattr(packed_runner, cache)[:, slot, :n],
                getattr(padded, cache)[:, slot, :n],
                rtol=1e-5,
                atol=1e-5,
            )
        assert packed_runner.cross_len[slot] == padded.cross_len[slot]


class _ReplayedCapture:
    """A CPU stand-in for a CUDA graph: replay runs the captured function again into the captured outputs."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        for dst, src in zip(self.out, self.fn(), strict=True):
            dst.copy_(src)


def test_the_graphed_path_reads_every_input_from_its_buffer(model, tokenizer, monkeypatch) -> None:
    """The captured form (the index in one buffer, read through views, a tail up to the pass size, rows the
    admission leaves empty) on the CPU with a stand-in graph and cross-attention read from the buffer's
    per-token slots and lengths: two admissions replayed from one pass size's graph each give the padded
    prefill's first tokens, no-speech probabilities and self K/V."""
    monkeypatch.setattr(packed, "varlen_attention", attention_from_cu)
    engine = make_engine(model, tokenizer, EngineConfig(max_slots=6, max_admit=4, packed_prefill=True))
    engine.close()
    runner = engine.runner
    runner._packed_prefill_capturable = lambda size: size <= 256
    runner._capture = lambda fn: (lambda out: (_ReplayedCapture(fn, out), out))(fn())
    runner._cross_by_sequence = _cross_per_token(runner)
    g = torch.Generator().manual_seed(1)
    for lengths, frames in (([3, 9], [400, 100]), ([12, 4, 5], [64, 3000, 800])):
        mels = [torch.randn(TINY.n_mels, f, generator=g) for f in frames]
        slots = [4, 0, 2][: len(frames)]
        specs = prompted_specs(tokenizer, lengths)
        want, padded = _admit(model, tokenizer, False, slots, specs, mels)
        with torch.inference_mode():
            got = runner.admit(slots, specs, mels)
        assert sorted(runner._packed_prefill_graphs) == [64]
        assert [a.token for a in got] == [a.token for a in want]
        for a, b in zip(got, want, strict=True):
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, rel=1e-4, abs=1e-6)
        for slot, n in zip(slots, lengths, strict=True):
            torch.testing.assert_close(
                runner.self_k[:, slot, :n], padded.self_k[:, slot, :n], rtol=1e-4, atol=1e-4
            )
            torch.testing.assert_close(
                runner.self_v[:, slot, :n], padded.self_v[:, slot, :n], rtol=1e-4, atol=1e-4
            )


def _cross_per_token(runner):
    """Cross-attention read from the buffer's per-token slots and lengths (no host bounds), as the captured
    pass's decode kernel reads them on the device; the tail's tokens (scratch slot) give zeros."""

    def cross(i, q, index, slot, cross_len):
        out = torch.zeros_like(q)
        for j in range(len(q)):
            if int(slot[j]) != runner.scratch:
                ck, cv = runner._read_cross(i, slot[j : j + 1], int(cross_len[j]))
                heads = split_heads(q[None, j : j + 1], runner.n_head)
                out[j] = merge_heads(F.scaled_dot_product_attention(heads, ck, cv))[0, 0]
        return out

    return cross


def test_decodes_are_the_same_with_the_packed_prefill(model, tokenizer) -> None:
    """End to end through the engine: windows with prompts of several lengths decode to the same tokens."""
    g = torch.Generator().manual_seed(2)
    mels = [torch.randn(TINY.n_mels, 3000, generator=g) for _ in range(3)]
    tokens = []
    for on in (False, True):
        with make_engine(model, tokenizer, EngineConfig(max_slots=4, packed_prefill=on)) as engine:
            batch = BatchDecoder(engine, model, tokenizer)
            results = [
                batch.decode(
                    mels, DecodingOptions(language="en", without_timestamps=True, sample_len=8, prompt=p)
                )
                for p in ("", "a much longer prompt than the others here")
            ]
            tokens.append([[r.tokens for r in rs] for rs in results])
    assert tokens[0] == tokens[1]
