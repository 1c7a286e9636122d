"""The log-mel of a signal that grows at its end, each frame transformed once.

A live utterance is re-decoded every partial interval, and each decode needs the log-mel of its whole window so
far. Transformed from scratch that is work in proportion to the window at every partial: at 100 streams and
0.2 s partials (large-v3 on an H100, bench/profile_streams.py) ~3,700 log-mels of up to 16 s in 12 s, 19-30 ms
each on the loaded host. A frame whose N_FFT samples all lie inside the signal never changes as the signal
grows, so it is kept and only the frames after it are made again.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import HOP_LENGTH, N_FFT
from .features import log_mel_power

HALF = N_FFT // 2  # Whisper's frames are centred: frame k covers samples [k * HOP - HALF, k * HOP + HALF)


class StreamingLogMel:
    """``log_mel_power`` of one growing signal (a live utterance from its first sample), frames kept between
    calls. Thread-safe: a partial's and the final's log-mels may be made at the same time."""

    def __init__(self) -> None:
        self._kept: Tensor | None = None  # [n_mels, frames] of frames that lie inside the signal seen so far
        self._lock = threading.Lock()

    def log_power(self, x: Tensor, n_signal: int, n_mels: int) -> Tensor:
        """``log_mel_power(x, n_mels)`` for ``x`` [samples] (float32, CPU) whose first ``n_signal`` samples are
        the signal (every earlier call's samples and maybe more) and the rest zeros, as the frames kept from
        earlier calls and the ones made now."""
        total = x.shape[-1] // HOP_LENGTH  # frames of the centred transform, its last one dropped
        # frames inside this call's signal (a final can end before a partial that came first did)
        inside = min(total, (n_signal - HALF) // HOP_LENGTH + 1 if n_signal >= HALF else 0)
        with self._lock:
            kept = self._kept if self._kept is not None and self._kept.shape[0] == n_mels else None
            have = 0 if kept is None else min(kept.shape[1], inside)
            if have < 2:  # the first two frames reflect the signal's start: transform all of it
                out = log_mel_power(x, n_mels)
            elif have == total:
                out = kept[:, :total]
            else:
                # From the first sample of frame `have` on; the end reflected as the centred transform does.
                tail = F.pad(x[None, have * HOP_LENGTH - HALF :], (0, HALF), mode="reflect")[0]
                made = log_mel_power(tail, n_mels, center=False)[:, : total - have]
                out = torch.cat([kept[:, :have], made], dim=1)
            if kept is None or inside > kept.shape[1]:
                self._kept = out[:, :inside].clone()
        return out
