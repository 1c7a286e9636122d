"""Silero VAD: streaming events on real speech, chunking and batching invariance, segment caps, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.conftest import JFK, SHARED  # noqa: E402
from voxserve.audio import load_audio  # noqa: E402
from voxserve.audio.vad import (  # noqa: E402
    SileroVAD,
    StreamingVAD,
    VADError,
    VADOptions,
    feed_many,
    speech_segments,
)

SR = 16000
MODEL = SHARED / "vad" / "silero_vad.onnx"


@pytest.fixture(scope="module")
def model() -> SileroVAD:
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is missing")
    return SileroVAD(MODEL)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(JFK)


def _stream(vad: StreamingVAD, x: np.ndarray, chunk: int) -> list[tuple[str, int]]:
    events = []
    for i in range(0, len(x), chunk):
        events += [(e.kind, e.sample) for e in vad.feed(x[i : i + chunk])]
    return events + [(e.kind, e.sample) for e in vad.finish()]


def test_silence_and_noise_have_no_speech(model):
    rng = np.random.default_rng(0)
    assert speech_segments(np.zeros(5 * SR, np.float32), model) == []
    assert speech_segments((0.003 * rng.standard_normal(5 * SR)).astype(np.float32), model) == []


def test_speech_found_and_split_at_a_long_pause(model, jfk):
    silence = np.zeros(2 * SR, np.float32)
    first, second = jfk[: 3 * SR], jfk[4 * SR :]
    x = np.concatenate([silence, first, silence, silence, second, silence])
    segments = speech_segments(x, model)
    assert segments, "no speech found in JFK"
    # Speech begins within the first speech second (padding included), nothing inside the first 1.5 s silence.
    assert 1.5 * SR <= segments[0][0] <= 3 * SR
    # The 4 s of inserted silence is a boundary: no segment spans its middle.
    gap_mid = 2 * SR + len(first) + 2 * SR
    assert all(not (s < gap_mid < e) for s, e in segments)
    assert any(e <= gap_mid for _, e in segments) and any(s >= gap_mid for s, _ in segments)
    assert segments[-1][1] <= len(x) - SR  # the final silence is not speech (beyond the padding)


def test_streaming_is_independent_of_chunk_size(model, jfk):
    x = np.concatenate([np.zeros(SR, np.float32), jfk, np.zeros(SR, np.float32)])
    reference = _stream(StreamingVAD(model), x, len(x))
    assert reference and reference[0][0] == "start"
    for chunk in (160, 480, 513, 4000):
        assert _stream(StreamingVAD(model), x, chunk) == reference
    # events alternate start/end and the positions never go back
    kinds = [k for k, _ in reference]
    assert kinds == ["start", "end"] * (len(kinds) // 2)
    positions = [p for _, p in reference]
    assert positions == sorted(positions)


def test_batched_streams_match_single_streams(model, jfk):
    rng = np.random.default_rng(1)
    signals = [
        jfk,
        np.zeros(3 * SR, np.float32),
        jfk[SR:] * 0.5,
        (0.01 * rng.standard_normal(SR)).astype("f4"),
    ]
    single = [_stream(StreamingVAD(model), s, 800) for s in signals]
    vads = [StreamingVAD(model) for _ in signals]
    batched: list[list[tuple[str, int]]] = [[] for _ in signals]
    for i in range(0, max(map(len, signals)), 800):
        # streams of different lengths: finished ones get empty chunks
        for j, events in enumerate(feed_many(vads, [s[i : i + 800] for s in signals])):
            batched[j] += [(e.kind, e.sample) for e in events]
    for j, v in enumerate(vads):
        batched[j] += [(e.kind, e.sample) for e in v.finish()]
    assert batched == single


def test_long_speech_is_cut_into_windows(model, jfk):
    options = VADOptions(max_speech_s=3.0, min_silence_ms=2000)
    segments = speech_segments(np.concatenate([jfk, jfk]), model, options)
    assert len(segments) >= 4
    assert all(e - s <= 3.0 * SR for s, e in segments)


def test_finish_closes_an_open_segment(model, jfk):
    vad = StreamingVAD(model)
    events = vad.feed(jfk[: 2 * SR])
    assert [e.kind for e in events] == ["start"] and vad.in_speech
    (end,) = vad.finish()
    assert end.kind == "end" and end.sample == 2 * SR
    assert not vad.in_speech and vad.finish() == []


def test_bad_options_and_missing_model(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        VADOptions(threshold=1.5)
    with pytest.raises(ValueError, match="neg_threshold"):
        VADOptions(threshold=0.5, neg_threshold=0.7)
    with pytest.raises(ValueError, match="min_silence_ms"):
        VADOptions(min_silence_ms=-1)
    with pytest.raises(VADError, match="not found"):
        SileroVAD(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(VADError, match="not a loadable ONNX model"):
        SileroVAD(bad)


def test_feed_many_checks_its_arguments(model):
    with pytest.raises(ValueError, match="2 streams but 1 chunks"):
        feed_many([StreamingVAD(model), StreamingVAD(model)], [np.zeros(10, np.float32)])
