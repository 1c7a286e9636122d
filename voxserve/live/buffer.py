"""A live stream's audio: 16 kHz float32 samples addressed by absolute position since the stream began."""

from __future__ import annotations

import numpy as np

from ..config import SAMPLE_RATE


class AudioBuffer:
    """Growable float32 audio with absolute sample positions; the oldest audio can be dropped cheaply."""

    def __init__(self) -> None:
        self.data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self.start = 0  # absolute position of data[0]
        self.length = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    def append(self, x: np.ndarray) -> None:
        if self.length + len(x) > len(self.data):
            grown = np.zeros(max(2 * len(self.data), self.length + len(x)), dtype=np.float32)
            grown[: self.length] = self.data[: self.length]
            self.data = grown
        self.data[self.length : self.length + len(x)] = x
        self.length += len(x)

    def slice(self, a: int, b: int) -> np.ndarray:
        a, b = max(a, self.start), min(b, self.end)
        return self.data[a - self.start : max(a, b) - self.start].copy()

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self.length)
        if cut:
            self.data[: self.length - cut] = self.data[cut : self.length]
            self.start += cut
            self.length -= cut
