"""A live stream's audio: 16 kHz float32 samples addressed by absolute position since the stream began."""

from __future__ import annotations

import numpy as np

from ..config import SAMPLE_RATE


class AudioBuffer:
    """Growable float32 audio with absolute sample positions; the oldest audio can be dropped cheaply.

    ``slice`` returns views, not copies: every partial re-decodes its utterance from the start, and copying it out
    was ~12% of the event loop's time at 400 simulated streams (host-only profile on the 2-core CPU machine,
    stop 25). So nothing ever writes into memory a slice may cover: appends write past the end only, and growing
    or dropping audio moves it into a new array, the old one left to the views that still hold it."""

    def __init__(self) -> None:
        self.data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self.start = 0  # absolute position of data[0]
        self.length = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    def append(self, x: np.ndarray) -> None:
        if self.length + len(x) > len(self.data):
            self._move(0, max(2 * len(self.data), self.length + len(x)))
        self.data[self.length : self.length + len(x)] = x
        self.length += len(x)

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (clipped to what is held): a view that stays valid, not to be written into. (Not
        flagged read-only: torch warns on every such array it wraps, and the engine wraps them.)"""
        a, b = max(a, self.start), min(b, self.end)
        return self.data[a - self.start : max(a, b) - self.start]

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self.length)
        if cut:
            self._move(cut, len(self.data))
            self.start += cut
            self.length -= cut

    def _move(self, cut: int, size: int) -> None:
        """The held audio from ``cut`` on into a new array of ``size`` samples."""
        moved = np.zeros(size, dtype=np.float32)
        moved[: self.length - cut] = self.data[cut : self.length]
        self.data = moved
