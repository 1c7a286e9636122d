"""The live audio buffer: absolute positions, dropping old audio, and slices that stay valid as views."""

from __future__ import annotations

import numpy as np

from voxserve.live.buffer import AudioBuffer


def test_positions_growth_and_dropping() -> None:
    buf = AudioBuffer()
    signal = np.arange(200_000, dtype=np.float32)
    for k in range(0, len(signal), 1_600):  # past its first capacity: it grows
        buf.append(signal[k : k + 1_600])
    assert buf.end == len(signal) and np.array_equal(buf.slice(0, buf.end), signal)
    buf.drop_before(150_000)
    assert buf.start == 150_000 and buf.end == len(signal)
    assert np.array_equal(buf.slice(0, 160_000), signal[150_000:160_000])  # clipped to what is held
    assert buf.slice(190_000, 180_000).size == 0
    buf.drop_before(10**9)
    assert buf.start == buf.end == len(signal) and buf.slice(0, buf.end).size == 0


def test_slices_stay_valid_through_appends_growth_and_drops() -> None:
    """A slice handed to the engine (a view) keeps its samples whatever the buffer does afterwards."""
    buf = AudioBuffer()
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(400_000).astype(np.float32)
    held = []
    pos = 0
    for step in range(120):
        buf.append(audio[pos : pos + 3_000])
        pos += 3_000
        held.append((buf.start, buf.end, buf.slice(buf.start, buf.end)))
        if step % 17 == 16:
            buf.drop_before(buf.end - 20_000)
    for a, b, view in held:
        assert np.array_equal(view, audio[a:b])
