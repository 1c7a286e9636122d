"""Live utterances' audio kept on the device between their decodes, so that each sample crosses to it once.

Why: a live stream's partials re-decode its utterance from the start as it grows, so an admission of 64 windows
sent ~25 MB of audio the device had mostly seen, copied by the engine's thread into one pinned block first: 7.3 ms
of the log-mels' ~11 ms of host time in an admission of ~50 ms (64 windows of 0.3-12 s, large-v3 fp16, H100,
a scratch timing of ``window_mels``'s parts, 2026-12-07), time in which the device waited. Kept here, a window sends
only the samples its utterance gained since its last decode (~0.2 s at the default partial interval).

Measured on an H100 (stop 25): the GPU test of audio windows passed with it (keyed windows decode to the
reference's tokens, and a second pass over the same windows sends no samples); ``window_mels`` alone for 64
growing windows took 3.7 ms of host time against 6.3 ms without it (2.6 against 5.0 ms with merged lengths; a
scratch timing, median of 50). In the live profile at 400 streams the admission's log-mels took 10.6 ms of host
time without it and 12.8 / 11.7 ms with it (one run each): there something else dominates their host time.

A window names its utterance with ``AudioWindow.key``: every window of a key is a prefix of one growing signal (a
live utterance from its first sample). A key's last window (``AudioWindow.last``, an utterance's final decode)
drops its audio once taken (the views handed out stay valid: the caching allocator reuses the memory only after
work queued on its stream); least recently used keys are dropped past ``capacity`` bytes of buffers.
Used by the engine's thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from .types import AudioWindow

CAPACITY = 1 << 30  # bytes of kept audio per engine: ~4.6 hours of 16 kHz float32
_FIRST = 1 << 15  # a new key's first buffer in samples (2 s); buffers double as their utterance grows


class AudioCache:
    """Keyed windows' samples on ``device``, each key's audio sent once (see the module's docstring)."""

    def __init__(self, device: torch.device, capacity: int = CAPACITY) -> None:
        self.device, self.capacity = device, capacity
        self._kept: OrderedDict[Hashable, tuple[Tensor, int]] = (
            OrderedDict()
        )  # key -> (buffer, samples in it)
        self.bytes = 0  # of all buffers
        self.sent = 0  # samples sent to the device, for tests and profiles

    def __len__(self) -> int:
        return len(self._kept)

    def signals(self, windows: Sequence[AudioWindow]) -> list[Tensor]:
        """Each window's samples on the device, float32 [len(samples)]: views of kept buffers for keyed windows,
        of this call's one upload for the others. Only samples the device lacks travel, in one copy."""
        sends: list[np.ndarray] = []  # what travels, in order
        need: dict[Hashable, int] = {}  # each key's longest window in this call
        for w in windows:
            if w.key is not None:
                need[w.key] = max(need.get(w.key, 0), len(w.samples))
        longest = {w.key: w for w in windows if w.key is not None and len(w.samples) == need[w.key]}
        starts: dict[Hashable, int] = {}  # each key's first sample that travels
        for key, n in need.items():
            have = self._kept[key][1] if key in self._kept else 0
            starts[key] = have
            if n > have:
                sends.append(longest[key].samples[have:n])
        unkeyed = [w.samples for w in windows if w.key is None]
        parts = iter(self._send(sends + unkeyed))
        copies: tuple[list[Tensor], list[Tensor]] = ([], [])  # (destinations, sources)
        for key, n in need.items():
            if n > starts[key]:
                self._append(key, starts[key], next(parts), copies)
            self._kept.move_to_end(key)
        # every key's copies in one call: one at a time they were 3-5% of the engine thread's stack samples at 400
        # streams (H100, stop 26)
        if copies[0]:
            torch._foreach_copy_(*copies)
        out = [self._kept[w.key][0][: len(w.samples)] if w.key is not None else next(parts) for w in windows]
        for key in {w.key for w in windows if w.key is not None and w.last}:  # ended: free its buffer now
            self.bytes -= self._kept.pop(key)[0].numel() * 4
        self._evict(keep=set(need))
        return out

    def _send(self, arrays: list[np.ndarray]) -> list[Tensor]:
        """Host float32 arrays on the device: one pinned block, one copy (queued: the host does not wait)."""
        sizes = [len(a) for a in arrays]
        total = sum(sizes)
        self.sent += total
        if not total:
            return [torch.zeros(0, device=self.device) for _ in arrays]
        host = torch.empty(total, pin_memory=self.device.type == "cuda")
        np.concatenate(arrays, out=host.numpy())
        return list(host.to(self.device, non_blocking=True).split(sizes))

    def _append(
        self, key: Hashable, at: int, samples: Tensor, copies: tuple[list[Tensor], list[Tensor]]
    ) -> None:
        """Make ``samples`` ``key``'s audio from sample ``at`` (its kept count) on, growing its buffer: the copies
        go to ``copies`` (destinations, sources), which the caller makes before anything reads the buffer."""
        buffer, _ = self._kept.get(key, (None, 0))
        end = at + len(samples)
        if buffer is None or end > len(buffer):
            grown = torch.empty(max(_FIRST, 1 << (end - 1).bit_length()), device=self.device)
            if buffer is not None:
                if at:
                    copies[0].append(grown[:at])
                    copies[1].append(buffer[:at])
                self.bytes -= buffer.numel() * 4
            self.bytes += grown.numel() * 4
            buffer = grown
        copies[0].append(buffer[at:end])
        copies[1].append(samples)
        self._kept[key] = (buffer, end)

    def _evict(self, keep: set[Hashable]) -> None:
        """Drop the least recently used keys (not those of this call) until the buffers fit ``capacity``."""
        for key in list(self._kept):
            if self.bytes <= self.capacity:
                return
            if key not in keep:
                self.bytes -= self._kept.pop(key)[0].numel() * 4
