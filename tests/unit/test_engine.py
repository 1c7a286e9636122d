"""The batching engine against the reference decoder: identical tokens in fp32, whatever the arrival pattern;
plus priorities, deadlines, cancellation, token events and failure handling."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
import torch

from tests.conftest import AUDIO, TINY
from tests.support import decisive_model, read_wav
from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.decode import decode_windows
from voxserve.decoding.options import DecodingOptions, OptionsError
from voxserve.engine.engine import Engine, EngineError
from voxserve.engine.types import EngineConfig, Priority, TokenEvent, WindowOutput


@pytest.fixture(scope="module")
def model(tokenizer):
    return decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    rng = np.random.default_rng(0)
    clips = [
        speech,
        rng.standard_normal(16000 * 20).astype(np.float32) * 0.05,
        speech[: 16000 * 3],
        speech[16000:],
    ]
    clips += [speech[16000 * k : 16000 * (k + 4)] for k in range(0, 7, 2)]
    return torch.stack([pad_or_trim(log_mel_spectrogram(x, 80)) for x in clips])


def admissions_done_after_steps(eng: Engine, lag: int) -> None:
    """Make ``eng`` treat each admission as overlapped (EngineConfig.overlap_admissions) and its device work as
    done only once ``lag`` more decode steps have run: what a slow admission on its own CUDA stream looks like to
    the engine's turns, on the CPU."""
    runner = eng.runner
    launch = runner._launch_admission

    @torch.no_grad()
    def launch_admission(slots, specs, windows):
        pending = launch(slots, specs, windows)
        due = eng.steps + lag
        pending.done = lambda: eng.steps >= due
        return pending

    runner.launch_admission = launch_admission
    runner.overlap = True


@pytest.fixture(
    params=[None, True, "overlap", "overlap+lookahead"],
    ids=["default", "lookahead", "overlap", "overlap-lookahead"],
)
def engine(model, tokenizer, request):
    """The engine as configured by default (on the CPU: in order), with each step launched before the last
    is read (its bookkeeping: late results of finished or re-used slots are dropped), and with admissions that
    finish only after two more steps (overlapped admissions: rows keep stepping while one is pending), also
    with steps launched ahead."""
    lookahead = request.param is True or request.param == "overlap+lookahead"
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=3, max_admit=2, lookahead=lookahead))
    assert eng.lookahead is lookahead  # None: on with CUDA only, where a launch returns at once
    if str(request.param).startswith("overlap"):
        admissions_done_after_steps(eng, 2)
    yield eng
    eng.close()


OPTIONS = [
    {"language": "en"},
    {},  # language detected per window
    {"language": "en", "without_timestamps": True},
    {"language": "en", "prompt": "hello there", "prefix": "And so"},
    {"language": "en", "suppress_tokens": (), "suppress_blank": False},
    {"language": "zh", "max_initial_timestamp": None, "sample_len": 40},
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "detect")
def test_engine_matches_reference_decoder(engine, model, tokenizer, mels, opts) -> None:
    options = DecodingOptions(**opts)
    ref = decode_windows(model, tokenizer, mels, options)
    got = BatchDecoder(engine, model, tokenizer).decode(mels, options)
    assert [g.tokens for g in got] == [r.tokens for r in ref]
    assert len({len(r.tokens) for r in ref}) > 1  # rows finish at different steps: slots are reused mid-batch
    assert (engine.steps_beside_admissions > 0) is engine.runner.overlap
    for g, r in zip(got, ref, strict=True):
        assert g.text == r.text and g.language == r.language and g.finish_reason == r.finish_reason
        assert g.avg_logprob == pytest.approx(r.avg_logprob, abs=1e-4)
        assert g.no_speech_prob == pytest.approx(r.no_speech_prob, abs=1e-5)


def test_requests_arriving_at_random_steps(engine, model, tokenizer, mels) -> None:
    """Continuous batching: each request joins whenever it arrives and still decodes exactly as alone."""
    options = [DecodingOptions(language="en"), DecodingOptions(language="en", without_timestamps=True)]
    expected = {
        (i, j): decode_windows(model, tokenizer, mels[i : i + 1], o)[0].tokens
        for i in range(len(mels))
        for j, o in enumerate(options)
    }
    batch = BatchDecoder(engine, model, tokenizer)
    rng = random.Random(0)
    order = list(expected)
    rng.shuffle(order)
    pending = []
    for i, j in order:
        pending.append(((i, j), batch.submit(mels[i], options[j])))
        time.sleep(rng.random() * 0.02)  # arrive while others are mid-decode
    for key, (decoder, ticket) in pending:
        assert decoder.result_from(ticket.result(timeout=60)).tokens == expected[key]
    assert engine.active == 0 and engine.queued == 0
    # overlapped: rows stepped while admissions were pending, and joined later, with the same tokens
    assert (engine.steps_beside_admissions > 0) is engine.runner.overlap


def test_token_events_then_output(engine, model, tokenizer, mels) -> None:
    async def collect():
        decoder, ticket = BatchDecoder(engine, model, tokenizer).submit(
            mels[0], DecodingOptions(language="en")
        )
        return [item async for item in ticket]

    items = asyncio.run(collect())
    events, output = items[:-1], items[-1]
    assert isinstance(output, WindowOutput) and all(isinstance(e, TokenEvent) for e in events)
    assert [e.token for e in events] == list(output.tokens)
    assert [e.index for e in events] == list(range(len(events)))


def test_priorities_order_admission(model, tokenizer, mels) -> None:
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=1, max_admit=1))
    try:
        batch = BatchDecoder(eng, model, tokenizer)
        # end-of-text suppressed: every request takes exactly 30 steps
        opts = DecodingOptions(
            language="en", without_timestamps=True, sample_len=30, suppress_tokens=(tokenizer.eot,)
        )
        _, first = batch.submit(mels[0], opts, priority=Priority.BATCH)  # takes the only slot
        _, b1 = batch.submit(mels[1], opts, priority=Priority.BATCH)
        _, b2 = batch.submit(mels[2], opts, priority=Priority.BATCH)
        _, rt = batch.submit(mels[3], opts, priority=Priority.REALTIME)
        assert not first._done.is_set(), "the first request should still hold the slot"
        rt.result(timeout=60)
        # submitted last, the realtime request was admitted before both waiting batch requests
        assert not b1._done.is_set() and not b2._done.is_set()
        assert len(b2.result(timeout=60).tokens) == 30
        assert b1._done.is_set()
    finally:
        eng.close()


def _admission_steps(eng) -> list[tuple[int, int]]:
    """Record (decode steps so far, windows admitted) at each of ``eng``'s admissions."""
    seen: list[tuple[int, int]] = []
    admit = eng._launch_admission

    def recording(tickets):
        seen.append((eng.steps, len(tickets)))
        admit(tickets)

    eng._launch_admission = recording
    return seen


def _wait_active(eng, n: int) -> None:
    deadline = time.monotonic() + 30
    while eng.active < n:
        assert time.monotonic() < deadline, "the first request was never admitted"
        time.sleep(0.0005)


@pytest.mark.parametrize("lookahead", [False, True])
def test_admission_waits_for_steps_or_a_large_enough_group(model, tokenizer, mels, lookahead) -> None:
    """admit_wait_steps: a request arriving while another decodes joins once that many steps have run since the
    last admission (not before), or at once when the waiting requests reach admit_ratio times the running rows;
    either way every request decodes as it does alone."""
    opts = DecodingOptions(
        language="en", without_timestamps=True, sample_len=40, suppress_tokens=(tokenizer.eot,)
    )
    expected = decode_windows(model, tokenizer, mels[:3], opts)
    for wait, ratio, joins in ((12, 100.0, 1), (1000, 2.0, 2)):
        cfg = EngineConfig(
            max_slots=4, max_admit=4, admit_wait_steps=wait, admit_ratio=ratio, lookahead=lookahead
        )
        eng = make_engine(model, tokenizer, cfg)
        try:
            seen = _admission_steps(eng)
            batch = BatchDecoder(eng, model, tokenizer)
            first = batch.submit(mels[0], opts)
            _wait_active(eng, 1)
            later = [batch.submit(mels[i], opts) for i in range(1, 1 + joins)]
            outs = [t.result(timeout=60) for _, t in [first, *later]]
        finally:
            eng.close()
        assert [len(o.tokens) for o in outs] == [40] * (1 + joins)
        assert [list(o.tokens) for o in outs] == [list(r.tokens) for r in expected[: 1 + joins]]
        assert seen[0] == (0, 1)
        if joins == 1:  # held back until 12 steps after the first admission, then admitted before it ends
            assert len(seen) == 2 and 12 <= seen[1][0] < 40, seen
        else:  # one waiting request is not twice the running one; two are, long before 1000 steps
            assert seen[1:] == [(seen[1][0], 2)] and seen[1][0] < 40, seen


def test_admission_at_every_step_by_default(model, tokenizer, mels) -> None:
    opts = DecodingOptions(
        language="en", without_timestamps=True, sample_len=40, suppress_tokens=(tokenizer.eot,)
    )
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=4, max_admit=4))
    try:
        seen = _admission_steps(eng)
        batch = BatchDecoder(eng, model, tokenizer)
        first = batch.submit(mels[0], opts)
        _wait_active(eng, 1)
        second = batch.submit(mels[1], opts)
        steps_at_submit = eng.steps
        for _, t in (first, second):
            t.result(timeout=60)
    finally:
        eng.close()
    assert len(seen) == 2 and seen[1][0] <= steps_at_submit + 1, (seen, steps_at_submit)


def test_deadline_returns_text_so_far(model, tokenizer, mels) -> None:
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=2))
    try:
        batch = BatchDecoder(eng, model, tokenizer)
        decoder, ticket = batch.submit(
            mels[1], DecodingOptions(language="en", suppress_tokens=(-1, tokenizer.eot)), timeout=0.05
        )
        result = decoder.result_from(ticket.result(timeout=60))
        assert result.finish_reason == "deadline"  # 224 steps take far longer than 50 ms on a CPU
        assert len(result.tokens) < 224
    finally:
        eng.close()


def test_cancel_frees_the_slot(model, tokenizer, mels) -> None:
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=1))
    try:
        batch = BatchDecoder(eng, model, tokenizer)
        opts = DecodingOptions(language="en", suppress_tokens=(-1, tokenizer.eot))  # would run 224 steps
        _, long = batch.submit(mels[1], opts)
        time.sleep(0.05)
        long.cancel()
        assert long.result(timeout=60).finish_reason == "cancelled"
        decoder, short = batch.submit(mels[0], DecodingOptions(language="en", sample_len=5))
        assert len(decoder.result_from(short.result(timeout=60)).tokens) <= 5
    finally:
        eng.close()


def test_beam_search_is_refused_by_the_engine_path(engine, model, tokenizer, mels) -> None:
    with pytest.raises(OptionsError):
        BatchDecoder(engine, model, tokenizer).submit(mels[0], DecodingOptions(beam_size=2))
    # ... but decode() routes beam search to the reference decoder and still answers
    got = BatchDecoder(engine, model, tokenizer).decode(mels[:2], DecodingOptions(language="en", beam_size=2))
    assert len(got) == 2


def test_failure_reaches_every_request(model, tokenizer, mels, monkeypatch) -> None:
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=2))
    try:

        def broken(*args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

        monkeypatch.setattr(eng.runner, "launch", broken)
        batch = BatchDecoder(eng, model, tokenizer)
        tickets = [batch.submit(m, DecodingOptions(language="en"))[1] for m in mels[:3]]
        for t in tickets:
            with pytest.raises(EngineError, match="injected"):
                t.result(timeout=60)
        with pytest.raises(EngineError):
            batch.submit(mels[0], DecodingOptions(language="en"))
    finally:
        eng.close()


def test_a_finished_row_stepped_again_stays_inside_its_slot(model, tokenizer) -> None:
    """With lookahead a row can be stepped once after it finished; a row that ended by filling the context
    stands one past it. That step must write and read inside the row's own slot, not the next slot's."""
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=3))
    try:
        runner = eng.runner
        n_ctx = runner.self_k.shape[2]
        pol = runner.policy
        pol.length[0], pol.done[0], pol.last[0] = n_ctx + 1, True, tokenizer.eot
        for cache in (runner.self_k, runner.self_v):
            cache[:, 1].fill_(7.0)
        before = runner.self_k[:, 1].clone(), runner.self_v[:, 1].clone()
        tokens, done, _ = runner.collect(runner.launch([0]))
        assert tokens == [tokenizer.eot] and done == [True]
        assert torch.equal(runner.self_k[:, 1], before[0]) and torch.equal(runner.self_v[:, 1], before[1])
        assert int(pol.length[0]) == n_ctx + 1  # a finished row's state does not move
    finally:
        eng.close()


def test_collect_reads_a_queued_steps_packed_results() -> None:
    """``Runner.collect`` on a CUDA-style launch (the packed [3, n] float64 results and their ready event; a
    stand-in event here): Python ints, bools and floats per row, in the rows' order."""
    from voxserve.engine.runner import Launched, Runner

    class Ready:
        waited = False

        def synchronize(self) -> None:
            self.waited = True

    packed = torch.tensor(
        [[50257.0, 7.0, 51865.0], [0.0, 1.0, 0.0], [-0.5, -1.25, -3.0]], dtype=torch.float64
    )
    ready = Ready()
    tokens, done, sum_logprob = Runner.collect(None, Launched([4, 0, 2], False, packed=packed, ready=ready))  # type: ignore[arg-type]
    assert ready.waited
    assert tokens == [50257, 7, 51865] and all(type(t) is int for t in tokens)
    assert done == [False, True, False] and all(type(d) is bool for d in done)
    assert sum_logprob == [-0.5, -1.25, -3.0]
    empty = Launched([], False, packed=torch.zeros(3, 0, dtype=torch.float64), ready=Ready())
    assert Runner.collect(None, empty) == ([], [], [])  # type: ignore[arg-type]
