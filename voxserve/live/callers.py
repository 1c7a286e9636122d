"""The stream bench's simulated callers, shared by its two transports (streambench.py in process, wsbench.py
over WebSockets): their audio tracks and where the speech is in them, the oracle VAD that knows it, and what a
caller sends. Only numpy here: wsbench's client processes import it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import SAMPLE_RATE


@dataclass(frozen=True)
class Track:
    audio: np.ndarray
    speech: list[tuple[int, int]]  # where the utterances are, in samples of this track


def caller_audio(clips: list[np.ndarray], n: int, seconds: float, seed: int) -> list[Track]:
    """``n`` different ``seconds``-long tracks: the utterances joined with 0.4-1.2 s pauses, each track
    starting at its own place (wrapping around). The first k of ``n`` tracks are the k tracks asked for alone."""
    rng = np.random.default_rng(seed)
    parts, spans, at = [], [], 0
    for clip in clips:
        pause = int(rng.uniform(0.4, 1.2) * SAMPLE_RATE)
        parts += [clip, np.zeros(pause, np.float32)]
        spans.append((at, at + len(clip)))
        at += len(clip) + pause
    joined = np.concatenate(parts)
    size = int(seconds * SAMPLE_RATE)
    reps = math.ceil((size + joined.size) / joined.size) + 1
    repeated = np.tile(joined, reps)
    all_spans = [(a + r * joined.size, b + r * joined.size) for r in range(reps) for a, b in spans]
    tracks = []
    # Python ints: the oracle VAD's event samples end up in JSON events (numpy ints make json.dumps fail).
    for s in rng.integers(0, joined.size, n).tolist():
        speech = [(max(a - s, 0), min(b - s, size)) for a, b in all_spans if b > s and a < s + size]
        tracks.append(Track(repeated[s : s + size], speech))
    return tracks


class OracleVAD:
    """Speech events at the known utterance bounds, timed as a VAD would report them (the start once its
    audio arrives, the end after ``silence_ms`` of silence): for machines without onnxruntime."""

    def __init__(self, speech: list[tuple[int, int]], pad_ms: int = 300, silence_ms: int = 500) -> None:
        pad, silence = pad_ms * SAMPLE_RATE // 1000, silence_ms * SAMPLE_RATE // 1000
        self._events = []
        last_end = 0
        for a, b in speech:
            self._events += [(a, "start", max(a - pad, last_end)), (b + silence, "end", b + pad)]
            last_end = b + pad
        self._position = 0
        self.in_speech = False

    def feed(self, samples: np.ndarray) -> list:
        from ..audio.vad import VADEvent

        self._position += len(samples)
        out = []
        while self._events and self._events[0][0] <= self._position:
            _, kind, sample = self._events.pop(0)
            self.in_speech = kind == "start"
            out.append(VADEvent(kind, sample))
        return out

    def finish(self) -> list:
        return []


def use_oracle(session: Any, track: Track) -> None:
    """Give a :class:`LiveSession` the oracle VAD of its caller's track (with the service's VAD options)."""
    session.vad, session.vad_options = OracleVAD(track.speech), session.service.options.vad


def session_update(language: str | None) -> dict[str, Any]:
    """A caller's first event: 16 kHz pcm16 input in ``language``."""
    return {
        "type": "transcription_session.update",
        "session": {"input_audio_sample_rate": 16000, "input_audio_transcription": {"language": language}},
    }


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples as the little-endian 16-bit PCM a caller sends."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def chunk_payloads(pcm: np.ndarray, chunk: int) -> list[str]:
    """The base64 audio of each append event: ``pcm`` in whole ``chunk``-sample chunks (a partial last one is
    not sent)."""
    return [
        base64.b64encode(pcm[k * chunk : (k + 1) * chunk].tobytes()).decode()
        for k in range(len(pcm) // chunk)
    ]
