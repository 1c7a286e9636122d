"""The three measurements, run the same way for every subject.

Every timed call starts from float32 PCM windows in host memory and ends with the token ids on the host:
copy to the device, log-mel features, encoder, prompt, ``n`` greedy decode steps and the copy back are all
inside the clock; reading WAV files, loading the model and warm-up are not. After each call the token count is
checked: a subject that did not produce exactly ``n`` tokens (or emitted end-of-text) fails the run.

* offline: ``n_inputs`` windows of 30 s in batches of ``batch``; real-time factor = audio seconds / wall seconds.
* latency: one request at a time (batch 1, idle), a 5 s and a 30 s window; median and p90 over repeats.
* step: decode-step latency by batch size, by difference: (t(n tokens) - t(1 token)) / (n - 1) on the same
  windows. Encoder, features and prompt cancel out; what remains is the per-token cost of the decode loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .inputs import features
from .subjects import Subject
from .weights import BenchError

# Tokens decoded per window: 100 for a 30 s window, 20 for a 5 s one (about Whisper's text rate for speech).
TOKENS_PER_WINDOW = {30.0: 100, 5.0: 20}


def _sync(subject: Subject) -> None:
    if subject.device.type == "cuda":
        torch.cuda.synchronize(subject.device)


def check_tokens(subject: Subject, rows: list[list[int]], n: int, batch: int, eot: int) -> None:
    """Raise BenchError unless every one of ``batch`` windows got exactly ``n`` tokens and none is end-of-text."""
    if len(rows) != batch:
        raise BenchError(f"{subject.name} returned {len(rows)} sequences for a batch of {batch}")
    lengths = sorted({len(r) for r in rows})
    if lengths != [n]:
        raise BenchError(
            f"{subject.name} decoded {lengths} tokens per window, not exactly {n}: not the same work"
        )
    if any(eot in r for r in rows):
        raise BenchError(f"{subject.name} emitted end-of-text although it was suppressed")


def timed_call(subject: Subject, audio: Sequence[np.ndarray], n: int, eot: int) -> float:
    """Seconds for one batch: PCM on the host -> features on the device -> ``n`` tokens per window on the host."""
    _sync(subject)
    start = time.perf_counter()
    mel = features(list(audio), subject.n_mels, subject.device)
    rows = subject.decode(mel, n)
    _sync(subject)
    elapsed = time.perf_counter() - start
    check_tokens(subject, rows, n, len(audio), eot)
    return elapsed


def _stats_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    ms = np.asarray(samples_s) * 1000.0
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "min_ms": round(float(ms.min()), 3),
        "samples_ms": [round(float(x), 3) for x in ms],
    }


def offline(
    subject: Subject,
    windows: Sequence[np.ndarray],
    batch: int,
    eot: int,
    *,
    passes: int = 1,
    seconds: float = 30.0,
) -> dict[str, Any]:
    """Throughput over all ``windows`` (each ``seconds`` long) in batches of ``batch``; ``passes`` timed passes
    after one untimed warm-up batch."""
    n = TOKENS_PER_WINDOW[seconds]
    timed_call(subject, windows[:batch], n, eot)  # warm-up: allocations, kernel selection, caches
    walls = []
    for _ in range(passes):
        total = 0.0
        for i in range(0, len(windows), batch):
            total += timed_call(subject, windows[i : i + batch], n, eot)
        walls.append(total)
    wall = float(np.median(walls))
    audio_s = len(windows) * seconds
    return {
        "subject": subject.name,
        "batch": batch,
        "n_inputs": len(windows),
        "input_s": seconds,
        "tokens_per_input": n,
        "audio_s": audio_s,
        "passes": passes,
        "wall_s": round(wall, 4),
        "wall_s_passes": [round(w, 4) for w in walls],
        "realtime_factor": round(audio_s / wall, 2),
        "ms_per_input": round(1000.0 * wall / len(windows), 3),
        "tokens_per_s": round(len(windows) * n / wall, 1),
    }


def latency(
    subject: Subject, window: np.ndarray, seconds: float, eot: int, *, repeats: int, warmup: int = 1
) -> dict[str, Any]:
    """One request of ``seconds`` on an otherwise idle subject, ``repeats`` times after ``warmup`` runs."""
    n = TOKENS_PER_WINDOW[seconds]
    for _ in range(warmup):
        timed_call(subject, [window], n, eot)
    samples = [timed_call(subject, [window], n, eot) for _ in range(repeats)]
    return {
        "subject": subject.name,
        "input_s": seconds,
        "tokens": n,
        "repeats": repeats,
        **_stats_ms(samples),
    }


def step(
    subject: Subject,
    windows: Sequence[np.ndarray],
    batch: int,
    eot: int,
    *,
    repeats: int,
    warmup: int = 1,
    n: int = TOKENS_PER_WINDOW[30.0],
) -> dict[str, Any]:
    """Decode-step latency at ``batch`` by difference of an ``n``-token and a 1-token decode of the same
    ``batch`` 30 s windows (medians over ``repeats``, the two interleaved so drift hits both alike)."""
    audio = list(windows[:batch])
    if len(audio) < batch:
        raise BenchError(f"step suite: need {batch} windows, have {len(audio)}")
    for _ in range(warmup):
        timed_call(subject, audio, n, eot)
        timed_call(subject, audio, 1, eot)
    full, one = [], []
    for _ in range(repeats):
        full.append(timed_call(subject, audio, n, eot))
        one.append(timed_call(subject, audio, 1, eot))
    t_full, t_one = float(np.median(full)), float(np.median(one))
    step_s = (t_full - t_one) / (n - 1)
    return {
        "subject": subject.name,
        "batch": batch,
        "tokens": n,
        "repeats": repeats,
        "full_ms_median": round(1000 * t_full, 3),
        "one_token_ms_median": round(1000 * t_one, 3),
        "step_ms": round(1000 * step_s, 4),
        "decode_tokens_per_s": round(batch / step_s, 1) if step_s > 0 else None,
        "full_ms_samples": [round(1000 * x, 3) for x in full],
        "one_token_ms_samples": [round(1000 * x, 3) for x in one],
    }
