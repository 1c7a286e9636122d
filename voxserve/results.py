"""Typed results of a transcription: words, segments, and what was detected about the audio.

These are plain frozen dataclasses so every layer above the decoder (formats, CLI, server, pipelines)
consumes the same shapes. Times are seconds from the start of the audio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str  # as decoded, with its leading space
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # mel frame (10 ms) where the 30 s window that produced this segment began
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        if self.words is None:
            d.pop("words")
        else:
            d["words"] = [asdict(w) for w in self.words]
        return d


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    language_probability: float
    duration: float  # seconds of input audio
    task: str = "transcribe"
    all_language_probs: dict[str, float] | None = None


@dataclass(frozen=True)
class Transcription:
    """A finished transcription: the segments in order plus the info about the input."""

    segments: tuple[Segment, ...]
    info: TranscriptionInfo
    words: tuple[Word, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    @classmethod
    def from_segments(cls, segments: list[Segment], info: TranscriptionInfo) -> Transcription:
        words = tuple(w for s in segments for w in (s.words or ()))
        return cls(segments=tuple(segments), info=info, words=words)
