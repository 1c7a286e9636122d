"""Window log-mels made by the engine from audio, on its device, batched over an admission's windows.

Why: a live stream's partials each need their window's log-mel. Made on the host, in the event loop's worker
threads, they took most of the process's CPU and every one of their ~15 torch calls gives up and takes back
the GIL beside the event loop and the engine's thread (host-only runs on 2 cores, bench/profile_streams.py
--host-only 20: at 200 streams the event loop's 10 ms timer was p99 122 ms late with log-mels made, 1.7 ms
without). A request may instead carry its audio (``AudioWindow``): the engine transforms every admitted
window of one length in one batched pass, rows padded to a power of two so that few FFT plans serve every
admission and warm-up can make them all.

The values are ``log_mel_spectrogram``'s for the window: the audio followed by silence up to ``frames``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..audio.features import fill_silence, log_mel_power, normalize_log_mel
from ..config import HOP_LENGTH, N_FFT
from .transfer import upload
from .types import AudioWindow


def window_mels(windows: Sequence[Tensor | AudioWindow], n_mels: int, device: torch.device) -> list[Tensor]:
    """Each window's log-mel [n_mels, frames]: tensors as they are, ``AudioWindow``s made on ``device`` (float32),
    one batched transform per window length."""
    out: list[Tensor | AudioWindow] = list(windows)
    by_frames: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        if isinstance(w, AudioWindow):
            by_frames.setdefault(w.frames, []).append(i)
    for frames, rows in by_frames.items():
        mels = batched_log_mels([windows[i].samples for i in rows], frames, n_mels, device)  # type: ignore[union-attr]
        for j, i in enumerate(rows):
            out[i] = mels[j]
    return out  # type: ignore[return-value]


def batched_log_mels(
    samples: Sequence[np.ndarray], frames: int, n_mels: int, device: torch.device, *, rows: int = 0
) -> Tensor:
    """Signals (float32, each at most ``frames`` hops long) -> their windows' log-mels [len(samples), n_mels,
    frames], in one transform; on CUDA of their count (or ``rows``, if more) rounded up to a power of two, the
    padding rows silence."""
    cuda = device.type == "cuda"
    # On CUDA the rows are padded to a power of two and the whole window is transformed: few FFT plans (rows,
    # window), all made at warm-up, for work that is small there. On the CPU only the rows given, and only the
    # audio and one FFT window after the longest signal (the later frames, silence in every row, filled in as
    # silence_level, as LiveService.mel does): full 30 s windows of a few seconds of speech made each admission
    # of 4 streams ~40 ms slower on one thread.
    rows = 1 << (max(len(samples), rows, 1) - 1).bit_length() if cuda else max(len(samples), 1)
    longest = max((len(s) for s in samples), default=0)
    n = frames * HOP_LENGTH if cuda else min(frames * HOP_LENGTH, longest + N_FFT)
    x = torch.zeros(rows, n, device=device)
    if longest:  # only the samples up to the longest travel; the zeros after them are already there
        host = torch.empty(len(samples), longest, pin_memory=cuda)
        block = host.numpy()
        for j, signal in enumerate(samples):
            block[j, : len(signal)] = signal
            block[j, len(signal) :] = 0.0
        # one contiguous pinned copy (queued; the caching host allocator keeps ``host`` until it is done), then
        # into the rows on the device
        x[: len(samples), :longest] = upload(host, device)
    return fill_silence(normalize_log_mel(log_mel_power(x, n_mels)[..., :frames])[: len(samples)], frames)
