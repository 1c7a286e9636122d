"""The live window-accuracy study's speech cache (voxserve/live/window_accuracy.py): audio spoken once, then read
back (the GPU machine has no espeak-ng)."""

from __future__ import annotations

import numpy as np
import pytest

from voxserve.live import window_accuracy
from voxserve.train import synth


def test_spoken_audio_is_cached_and_read_back(tmp_path, monkeypatch) -> None:
    said: list[str] = []

    def fake_speak(text: str) -> np.ndarray:
        said.append(text)
        return np.full(len(text) * 10, len(text) + 0.1, dtype=np.float32)  # (0.1 rounds in float16)

    monkeypatch.setattr(synth, "speak", fake_speak)
    texts = ["one two three", "four five"]
    first = window_accuracy.spoken(texts, tmp_path)
    assert said == texts and len(list(tmp_path.glob("*.npy"))) == 2
    assert all(
        x.dtype == np.float32 and x[0] == np.float32(np.float16(len(t) + 0.1))
        for x, t in zip(first, texts, strict=True)
    )

    def no_speak(text: str) -> np.ndarray:
        raise AssertionError("spoken again")

    monkeypatch.setattr(synth, "speak", no_speak)
    again = window_accuracy.spoken(texts, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(AssertionError, match="spoken again"):  # a text not in the cache is spoken
        window_accuracy.spoken(["six"], tmp_path)
