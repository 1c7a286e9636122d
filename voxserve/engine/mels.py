"""Window log-mels made by the engine from audio, on its device, batched over an admission's windows.

Why: a live stream's partials each need their window's log-mel. Made on the host, in the event loop's worker
threads, they took most of the process's CPU and every one of their ~15 torch calls gives up and takes back
the GIL beside the event loop and the engine's thread (host-only runs on 2 cores, bench/profile_streams.py
--host-only 20: at 200 streams the event loop's 10 ms timer was p99 122 ms late with log-mels made, 1.7 ms
without). A request may instead carry its audio (``AudioWindow``): the engine transforms the admitted windows
in batches, rows padded to a power of two so that few FFT plans serve every admission and warm-up can make them
all.

The admitted audio reaches the device in one copy from one pinned block of the signals end to end (zeros are
never sent), or through the runner's ``AudioCache`` (a live utterance's samples sent once, engine/audio_cache.py);
one ``torch._foreach_copy_`` lays the signals into the batch's rows, and a window's end is reflected on the device.
Why: the engine's thread copying every window's audio into a zero-padded pinned block was 7.3 ms of the log-mels'
host time (64 windows of 0.3-12 s, H100 host, a scratch timing of ``window_mels``'s parts, 2026-12-07), while
the transform itself is ~0.04 ms of device time.

With ``MERGE_LENGTHS`` (off by default) every window of an admission on CUDA, whatever its length, goes through one
transform at the longest window's length, instead of ~20 torch operations per window length (counted in the code).
Measured (400 live streams, large-v3 fp16, H100, bench/profile_streams.py --phases, 2026-12-07): the log-mels'
host time 14.0 -> 11.4 ms and the admission 53.8 -> 47.3 ms in one run, but 12.3 ms in the next run's merged
variant, and 8.0-10.2 ms either way in a scratch timing of ``window_mels`` alone: within the runs' spread, so it
stays off. The price: every row is transformed at the longest window's length (an admission with one 30 s window
among short ones: ~1 GB of transient device memory at 64 rows, by arithmetic). On the CPU, where the FFT is the
cost, one transform per window length, and only as far as its longest signal reaches.

The values are ``log_mel_spectrogram``'s for each window: its audio followed by silence up to ``frames``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..audio.features import fill_silence, log_mel_power, normalize_log_mel
from ..config import HOP_LENGTH, N_FFT
from .audio_cache import AudioCache
from .transfer import upload
from .types import AudioWindow

# The last frame a window keeps is centred HOP_LENGTH before its end and reaches N_FFT // 2 past its centre:
# this many samples past the window's end, which the window's own transform takes from its reflection.
_REFLECTED = N_FFT // 2 - HOP_LENGTH
# On CUDA, every window length of an admission in one transform; off (one per length): no gain beyond noise yet.
# VOXSERVE_MERGED_MELS=1 (read at import) turns it on for a process; the profile's variant mergedmels=0|1 switches
# it on one engine (bench/profile_streams.py)
MERGE_LENGTHS = os.environ.get("VOXSERVE_MERGED_MELS") == "1"


def window_mels(
    windows: Sequence[Tensor | AudioWindow],
    n_mels: int,
    device: torch.device,
    cache: AudioCache | None = None,
) -> list[Tensor]:
    """Each window's log-mel [n_mels, frames]: tensors as they are, ``AudioWindow``s made on ``device`` (float32):
    one batched transform per window length, or on CUDA with ``MERGE_LENGTHS`` all in one. With ``cache`` the
    audio reaches the device through it (keyed windows send only what their key gained)."""
    out: list[Tensor | AudioWindow] = list(windows)
    audio_rows = [i for i, w in enumerate(windows) if isinstance(w, AudioWindow)]
    audio: list[AudioWindow] = [windows[i] for i in audio_rows]  # type: ignore[misc]
    sent = cache.signals(audio) if cache is not None else [w.samples for w in audio]
    signals = dict(zip(audio_rows, sent, strict=True))
    merged = device.type == "cuda" and MERGE_LENGTHS
    groups: dict[int, list[int]] = {}
    for i, w in zip(audio_rows, audio, strict=True):
        groups.setdefault(0 if merged else w.frames, []).append(i)
    for rows in groups.values():
        frames = [windows[i].frames for i in rows]  # type: ignore[union-attr]
        for i, mel in zip(
            rows, batched_log_mels([signals[i] for i in rows], frames, n_mels, device), strict=True
        ):
            out[i] = mel
    return out  # type: ignore[return-value]


def batched_log_mels(
    samples: Sequence[np.ndarray | Tensor],
    frames: Sequence[int],
    n_mels: int,
    device: torch.device,
    *,
    rows: int = 0,
    width: int = 0,
) -> list[Tensor]:
    """Signals (float32, host arrays or 1-D tensors on ``device``; signal i at most ``frames[i]`` hops long) ->
    their windows' log-mels [n_mels, frames[i]] (views of one batch), in one transform at the longest window's
    length (or ``width`` frames, if more); on CUDA of their count (or ``rows``, if more) rounded up to a power of
    two, the padding rows silence. ``samples`` may be empty: warm-up makes the FFT plan of a shape that way."""
    cuda = device.type == "cuda"
    width = max([*frames, width])
    if not width:
        return []
    rows = 1 << (max(len(samples), rows, 1) - 1).bit_length() if cuda else max(len(samples), 1)
    n = width * HOP_LENGTH
    # On the CPU, windows of one length: only the audio and one FFT window after the longest signal are
    # transformed (the later frames, silence in every row, filled in as silence_level, as LiveService.mel does):
    # full 30 s windows of a few seconds of speech made each admission of 4 streams ~40 ms slower on one thread.
    trimmed = not cuda and len(set(frames)) == 1
    if trimmed:
        n = min(n, max((len(s) for s in samples), default=0) + N_FFT)
    x = torch.zeros(rows, n, device=device)
    _fill_rows(x, samples)
    for j, (signal, f) in enumerate(zip(samples, frames, strict=True)):
        end = f * HOP_LENGTH
        # A window shorter than the batch whose audio reaches its last samples: its last frame reads past the
        # window's end, where its own transform has the window's reflection and the batch has zeros. torch's
        # "reflect" padding: sample end - 2 - i lands at end + i (the last sample is not repeated).
        if end < n and len(signal) > end - _REFLECTED - 1:
            x[j, end : end + _REFLECTED] = x[j, end - 1 - _REFLECTED : end - 1].flip(0)
    log_spec = log_mel_power(x, n_mels)[..., :width]
    own = None
    if frames and min(frames) < width:  # peaks over each window's own frames
        own = upload(torch.tensor([*frames, *[width] * (rows - len(frames))]), device)
    mel = normalize_log_mel(log_spec, own)[: len(samples)]
    if trimmed:
        mel = fill_silence(mel, width)
    return [mel[j, :, :f] for j, f in enumerate(frames)]


def _fill_rows(x: Tensor, samples: Sequence[np.ndarray | Tensor]) -> None:
    """Each signal at the start of its row of ``x`` (zeros): host arrays in one copy (one pinned block on CUDA,
    queued), then every row's copy in one call (launched by torch, not by this thread one by one)."""
    host = [j for j, s in enumerate(samples) if not isinstance(s, Tensor)]
    parts: list[Tensor] = [s if isinstance(s, Tensor) else torch.empty(0) for s in samples]
    if host and x.is_cuda:
        block = torch.empty(sum(len(samples[j]) for j in host), pin_memory=True)
        if block.numel():
            np.concatenate([samples[j] for j in host], out=block.numpy())
        sent = upload(block, x.device).split([len(samples[j]) for j in host])
        for j, part in zip(host, sent, strict=True):
            parts[j] = part
    else:
        for j in host:
            parts[j] = torch.from_numpy(np.asarray(samples[j], dtype=np.float32))
    rows = [(x[j, : len(part)], part) for j, part in enumerate(parts) if len(part)]
    if rows:  # every row's copy in one call (through a padded batch it was one more pass over the batch)
        torch._foreach_copy_(*map(list, zip(*rows, strict=True)))
