"""The engine in a process of its own (engine/remote.py) against the same engine in this process: the same
outputs for log-mel windows and for growing keyed audio windows (sent as what each window adds), token events,
cancelling, a bad window's error, the counters, and a dead or failed engine process."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.decoding.batched import make_engine
from voxserve.engine import remote as remote_module
from voxserve.engine.engine import Engine, EngineError
from voxserve.engine.remote import EngineProcess, _KeyedAudio
from voxserve.engine.types import AudioWindow, EngineConfig, RowSpec, TokenEvent, WindowOutput, WindowRequest
from voxserve.tokenizer import Tokenizer


def tiny_engine(tiktoken: Path) -> Engine:
    """The engine both sides run (module level: the engine's process imports it)."""
    tok = Tokenizer.from_tiktoken(tiktoken)
    return make_engine(decisive_model(TINY, tok, std=0.2, eot_boost=2.0), tok, EngineConfig(max_slots=4))


def failing_engine() -> Engine:
    raise RuntimeError("no weights here")


def vanishing_engine() -> Engine:
    os._exit(3)


def engine_whose_steps_fail(tiktoken: Path) -> Engine:
    """Admits, then fails at its first decode step, as a device error would."""
    engine = tiny_engine(tiktoken)

    def launch(*args: object, **kwargs: object) -> None:
        raise RuntimeError("device lost")

    engine.runner.launch = launch
    return engine


def spec(tok: Tokenizer, sample_len: int = 12, suppress_eot: bool = False) -> RowSpec:
    return RowSpec(
        initial_tokens=(tok.sot, tok.no_timestamps),
        sot_index=0,
        suppress=(tok.eot,) if suppress_eot else (),
        suppress_blank=True,
        timestamps=False,
        max_initial_timestamp_index=None,
        sample_len=sample_len,
        temperature=0.0,
    )


@pytest.fixture(scope="module")
def engines(multilingual_tiktoken):
    remote = EngineProcess(_factory(multilingual_tiktoken))
    local = tiny_engine(multilingual_tiktoken)
    yield local, remote
    local.close()
    remote.close()


def _factory(tiktoken: Path) -> functools.partial:
    return functools.partial(tiny_engine, tiktoken)


def _speech(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def test_log_mel_windows_decode_as_in_process(engines, tokenizer):
    local, remote = engines
    g = torch.Generator().manual_seed(1)
    mels = [torch.randn(TINY.n_mels, 3000, generator=g).clamp(-1, 1) for _ in range(3)]
    want = [local.submit(WindowRequest(m, spec(tokenizer))).result(60) for m in mels]
    got = [remote.submit(WindowRequest(m, spec(tokenizer))).result(60) for m in mels]
    assert got == want
    assert any(o.tokens for o in want)


def test_growing_keyed_windows_send_what_they_add_and_decode_as_in_process(engines, tokenizer):
    local, remote = engines
    audio = _speech(48000)
    lengths = (8000, 20000, 48000)
    got = []
    for i, n in enumerate(lengths):
        window = AudioWindow(audio[:n], 400, key=("utterance", 7), last=i == len(lengths) - 1)
        got.append(remote.submit(WindowRequest(window, spec(tokenizer))).result(60))
    want = [
        local.submit(WindowRequest(AudioWindow(audio[:n], 400), spec(tokenizer))).result(60) for n in lengths
    ]
    assert got == want
    assert ("utterance", 7) not in remote._keys  # its last window dropped the key


def crossing(remote: EngineProcess, window: AudioWindow) -> tuple[tuple, list[int]]:
    """What ``window`` sends, recorded as sent, and the key ids the engine's process is told to forget."""
    with remote._lock:
        message, commit = remote._window(window)
        return message, commit()


def test_what_crosses_for_keyed_windows(engines):
    _, remote = engines
    audio = _speech(5000)
    first, _ = crossing(remote, AudioWindow(audio[:1000], 100, key="k"))
    second, forgets = crossing(remote, AudioWindow(audio[:3000], 100, key="k"))
    assert first[:3] == ("keyed", first[1], 0) and len(first[3]) == 1000
    assert second[1:3] == (first[1], 1000) and np.array_equal(second[3], audio[1000:3000]) and forgets == []
    again, forgets = crossing(remote, AudioWindow(audio[:2000], 100, key="k"))  # shorter: a new utterance
    assert again[1] != first[1] and again[2] == 0 and len(again[3]) == 2000 and forgets == [first[1]]
    last, _ = crossing(remote, AudioWindow(audio[:2500], 100, key="k", last=True))
    assert last[1:3] == (again[1], 2000) and last[5] is True and "k" not in remote._keys


def test_keys_past_the_cap_are_forgotten_oldest_first(engines, monkeypatch):
    _, remote = engines
    monkeypatch.setattr(remote_module, "MAX_KEYS", 2)
    audio = _speech(1000)
    ids = [crossing(remote, AudioWindow(audio, 100, key=("cap", i)))[0][1] for i in range(2)]
    crossing(remote, AudioWindow(audio, 100, key=("cap", 0)))  # used again: now the newest
    third, forgets = crossing(remote, AudioWindow(audio, 100, key=("cap", 2)))
    assert forgets == [ids[1]]
    monkeypatch.setattr(remote_module, "KEY_BYTES", 4 * 1500)  # and by bytes: 1,500 samples at most
    _, forgets = crossing(remote, AudioWindow(audio, 100, key=("cap", 3)))
    assert forgets == [ids[0], third[1]]
    assert list(remote._keys) == [("cap", 3)] and remote._key_samples == 1000
    for key in list(remote._keys):
        crossing(remote, AudioWindow(audio, 100, key=key, last=True))


def test_a_request_that_cannot_be_sent_changes_nothing(engines, tokenizer):
    local, remote = engines
    audio = _speech(32000)
    key = ("unsent", 1)
    remote.submit(WindowRequest(AudioWindow(audio[:8000], 200, key=key), spec(tokenizer))).result(60)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        remote.submit(WindowRequest(AudioWindow(audio[:16000], 200, key=key), Unpicklable()))
    assert remote._keys[key][1] == 8000 and all(t.request.spec is not None for t in remote._tickets.values())
    window = AudioWindow(audio[:16000], 200, key=key, last=True)
    got = remote.submit(WindowRequest(window, spec(tokenizer))).result(60)
    assert got == local.submit(WindowRequest(AudioWindow(audio[:16000], 200), spec(tokenizer))).result(60)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not for pickling")


def test_keyed_audio_rebuilds_each_window_and_keeps_earlier_views():
    keyed = _KeyedAudio()
    audio = _speech(100_000)
    first = keyed.window(("keyed", 3, 0, audio[:30000], 400, False))
    second = keyed.window(("keyed", 3, 30000, audio[30000:90000], 1200, False))  # grows past the first buffer
    assert np.array_equal(first.samples, audio[:30000]) and np.array_equal(second.samples, audio[:90000])
    third = keyed.window(("keyed", 3, 90000, audio[90000:], 1400, True))
    assert np.array_equal(second.samples, audio[:90000]) and np.array_equal(third.samples, audio)
    assert third.key == 3 and third.last
    with pytest.raises(RuntimeError, match="does not follow"):
        keyed.window(("keyed", 3, 100_000, audio[:10], 1400, False))  # dropped with its last window
    keyed.window(("keyed", 4, 0, audio[:10], 2, False))
    with pytest.raises(RuntimeError, match="does not follow"):
        keyed.window(("keyed", 4, 20, audio[:10], 2, False))  # a gap


def test_token_events_cancel_and_a_bad_window(engines, tokenizer):
    _, remote = engines
    mel = torch.zeros(TINY.n_mels, 3000)

    async def run() -> tuple[list, WindowOutput]:
        ticket = remote.submit(WindowRequest(mel, spec(tokenizer, 8, suppress_eot=True)))
        items = [item async for item in ticket]
        return items[:-1], items[-1]

    events, output = asyncio.run(run())
    assert all(isinstance(e, TokenEvent) for e in events)
    assert [e.token for e in events] == list(output.tokens) and len(output.tokens) == 8

    kinds = []
    handle = remote._handle
    remote._handle = lambda message: (kinds.append(message[0]), handle(message))
    try:
        quiet = remote.submit(WindowRequest(mel, spec(tokenizer, 8, suppress_eot=True)), token_events=False)
        assert len(quiet.result(60).tokens) == 8
    finally:
        del remote._handle
    assert "done" in kinds and "event" not in kinds  # no token events crossed for it

    long = remote.submit(WindowRequest(mel, spec(tokenizer, 400, suppress_eot=True)))
    long.cancel()
    assert long.result(60).finish_reason == "cancelled"

    bad = remote.submit(WindowRequest(torch.zeros(TINY.n_mels, 3001), spec(tokenizer)))
    with pytest.raises(ValueError, match="even number of frames"):
        bad.result(60)
    assert remote.submit(WindowRequest(mel, spec(tokenizer, 4))).result(60).finish_reason in (
        "stop",
        "length",
    )
    before = remote.counters()["steps"]
    remote.submit(WindowRequest(mel, spec(tokenizer, 6, suppress_eot=True))).result(60)
    assert remote.counters()["steps"] >= before + 5


def test_a_dead_engine_process_fails_its_requests_and_refuses_more(multilingual_tiktoken, tokenizer):
    remote = EngineProcess(_factory(multilingual_tiktoken))
    try:
        mel = torch.zeros(TINY.n_mels, 3000)
        held = remote.submit(WindowRequest(mel, spec(tokenizer, 440, suppress_eot=True)))
        os.kill(remote._process.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="exited"):
            held.result(60)
        with pytest.raises(EngineError, match="failed"):
            remote.submit(WindowRequest(mel, spec(tokenizer)))
    finally:
        remote.close()


def test_an_engine_that_cannot_be_built_says_why():
    with pytest.raises(EngineError, match="could not start: RuntimeError: no weights here"):
        EngineProcess(failing_engine)
    with pytest.raises(EngineError, match=r"exited while starting \(code 3\)"):
        EngineProcess(vanishing_engine)


def test_a_failed_engine_fails_its_requests_and_then_refuses(multilingual_tiktoken, tokenizer):
    remote = EngineProcess(functools.partial(engine_whose_steps_fail, multilingual_tiktoken))
    try:
        mel = torch.zeros(TINY.n_mels, 3000)
        with pytest.raises(EngineError, match="device lost"):
            remote.submit(WindowRequest(mel, spec(tokenizer, 8, suppress_eot=True))).result(60)
        deadline = time.monotonic() + 30
        while remote.failure is None and time.monotonic() < deadline:  # told just after the request's error
            time.sleep(0.05)
        with pytest.raises(EngineError, match="failed: engine failed: RuntimeError: device lost"):
            remote.submit(WindowRequest(mel, spec(tokenizer)))
    finally:
        remote.close()


def test_a_reader_that_breaks_fails_what_it_held(multilingual_tiktoken, tokenizer, monkeypatch):
    remote = EngineProcess(_factory(multilingual_tiktoken))
    try:
        mel = torch.zeros(TINY.n_mels, 3000)

        def broken(message: tuple) -> None:
            raise KeyError("a bug")

        monkeypatch.setattr(remote, "_handle", broken)
        held = remote.submit(WindowRequest(mel, spec(tokenizer, 4)))
        with pytest.raises(EngineError, match="reading the engine process's results failed: KeyError"):
            held.result(60)
        with pytest.raises(EngineError):
            remote.submit(WindowRequest(mel, spec(tokenizer)))
    finally:
        remote.close()


def test_an_engine_without_token_events_sends_the_output_only(multilingual_tiktoken, tokenizer):
    """Engine.submit(token_events=False), in this process: the event loop gets no event per token."""
    engine = tiny_engine(multilingual_tiktoken)
    try:

        async def items(token_events: bool) -> list:
            request = WindowRequest(torch.zeros(TINY.n_mels, 3000), spec(tokenizer, 6, suppress_eot=True))
            return [item async for item in engine.submit(request, token_events=token_events)]

        assert len(asyncio.run(items(True))) == 7
        quiet = asyncio.run(items(False))
        assert len(quiet) == 1 and isinstance(quiet[0], WindowOutput) and len(quiet[0].tokens) == 6
    finally:
        engine.close()


def test_an_observer_hears_the_engine_and_tickets_carry_admission_times(multilingual_tiktoken, tokenizer):
    """What the server's metrics take from an engine process: encoder passes and step sizes (engine/observe.py),
    each ticket's admission time, and the engine's queue and busy slots."""
    heard: list[tuple[str, float]] = []
    remote = EngineProcess(_factory(multilingual_tiktoken), observer=lambda n, v: heard.append((n, v)))
    try:
        mel = torch.zeros(TINY.n_mels, 3000)
        submitted = time.monotonic()
        tickets = [remote.submit(WindowRequest(mel, spec(tokenizer, 6, suppress_eot=True))) for _ in range(3)]
        for t in tickets:
            assert len(t.result(60).tokens) == 6
        done = time.monotonic()
        for t in tickets:  # the engine process's clock is this one's (time.monotonic is system-wide)
            assert t.admitted_at is not None and submitted <= t.admitted_at <= done
        sizes = [v for n, v in heard if n == "batch_size"]
        # 3 rows x 6 tokens: the first token comes from the prefill, so 5 steps of up to 3 rows
        assert sum(sizes) == 3 * 5 and max(sizes) <= 3
        assert any(n == "encoder" and v > 0 for n, v in heard)
        assert (remote.queued, remote.active) == (0, 0)  # as reported with the last output
        while_busy = remote.submit(WindowRequest(mel, spec(tokenizer, 400, suppress_eot=True)))
        deadline = time.monotonic() + 30
        while remote.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert remote.active == 1
        while_busy.cancel()
        while_busy.result(60)
    finally:
        remote.close()


def test_sigterm_is_the_parents_to_handle(engines, tokenizer):
    """A SIGTERM to the process group (a service manager's stop) reaches the engine's process too: it carries on
    until the parent, finishing what it holds, closes it."""
    _, remote = engines
    os.kill(remote._process.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert remote._process.is_alive()
    mel = torch.zeros(TINY.n_mels, 3000)
    assert (
        len(remote.submit(WindowRequest(mel, spec(tokenizer, 5, suppress_eot=True))).result(60).tokens) == 5
    )
