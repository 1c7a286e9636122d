"""Cutting long audio into pieces of at most one window at pauses, so the pieces can decode side by side.

Speech ranges come from Silero VAD (``voxserve.audio.vad``); neighbouring ranges are merged while the merged
piece still fits one window, so a file becomes as few windows as its pauses allow, and stretches without
speech are never decoded at all. Without the VAD model (no onnxruntime, or the model file missing) the file
is cut at the quietest moment near each window's end instead, and a warning says so once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..config import SAMPLE_RATE

log = logging.getLogger("voxserve.server")

WINDOW_SECONDS = 28.0  # a piece must fit a 30 s window with room for the VAD's padding
_QUIET_FRAME = SAMPLE_RATE // 50  # 20 ms energy frames for the fallback cutter
_QUIET_SEARCH = 5.0  # seconds before a window's end searched for the quietest frame


class Chunker:
    def __init__(self, max_seconds: float = WINDOW_SECONDS) -> None:
        self.max_samples = round(max_seconds * SAMPLE_RATE)
        self._vad: Any = None
        self._vad_failed = False
        self._lock = threading.Lock()

    def _model(self) -> Any:
        with self._lock:
            if self._vad is None and not self._vad_failed:
                try:
                    from ..audio.vad import SileroVAD

                    self._vad = SileroVAD()
                except Exception as e:  # noqa: BLE001 - any failure means "no VAD here"
                    self._vad_failed = True
                    log.warning("no VAD (%s): long audio is cut at its quietest moments instead", e)
            return self._vad

    def pieces(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """[start, end) sample ranges, in order, each at most ``max_samples`` long."""
        vad = self._model()
        if vad is None:
            return quiet_cuts(samples, self.max_samples)
        from ..audio.vad import VADOptions, speech_segments

        options = VADOptions(max_speech_s=self.max_samples / SAMPLE_RATE)
        return merge_ranges(speech_segments(samples, vad, options), self.max_samples)


def merge_ranges(ranges: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Join consecutive ranges (and the gap between them) while the result stays within ``max_samples``."""
    merged: list[tuple[int, int]] = []
    for s, e in ranges:
        if merged and e - merged[-1][0] <= max_samples:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def quiet_cuts(samples: np.ndarray, max_samples: int) -> list[tuple[int, int]]:
    """Cut every ``max_samples`` at most, at the lowest-energy 20 ms frame of the last seconds before it."""
    n, start, out = len(samples), 0, []
    search = round(_QUIET_SEARCH * SAMPLE_RATE)
    while n - start > max_samples:
        lo, hi = start + max_samples - search, start + max_samples
        frames = samples[lo:hi][: (hi - lo) // _QUIET_FRAME * _QUIET_FRAME].reshape(-1, _QUIET_FRAME)
        cut = lo + int(np.argmin((frames.astype(np.float64) ** 2).sum(axis=1))) * _QUIET_FRAME
        out.append((start, cut))
        start = cut
    if n > start:
        out.append((start, n))
    return out
