"""Transcribing one request's samples on a served model: short audio through the seek loop, long audio cut at
pauses (VAD) into pieces that are decoded side by side, so their windows share the engine's batch.

Everything here is blocking and runs in a worker thread; segments are reported through ``on_segment`` as soon
as they are final (in order), which is what streaming answers and job progress are built on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..api import make_options
from ..config import FRAMES_PER_SECOND, SAMPLE_RATE
from ..decoding.hotwords import Hotword
from ..decoding.options import TranscribeOptions
from ..engine.types import Priority
from ..results import Segment, Transcription, TranscriptionInfo, Word
from ..transcribe.longform import transcribe_audio
from .chunking import Chunker
from .metrics import ServerMetrics
from .runtime import DeadlinePassed, ModelRuntime

log = logging.getLogger("voxserve.server")


@dataclass(frozen=True)
class Params:
    """What a request asks for, already validated by the protocol layer."""

    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # None: the usual fallback ladder 0, 0.2, ... 1.0
    word_timestamps: bool = False
    hotwords: tuple[Hotword, ...] = ()
    priority: Priority = Priority.INTERACTIVE
    deadline: float | None = None  # time.monotonic() by which the answer is due

    def options(self) -> TranscribeOptions:
        kw: dict = {"task": self.task, "language": self.language, "word_timestamps": self.word_timestamps}
        if self.prompt:
            kw["initial_prompt"] = self.prompt
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        return make_options(**kw)


class DeadlineExceeded(Exception):
    def __init__(self, text: str, segments: Sequence[Segment]) -> None:
        super().__init__("deadline passed")
        self.text, self.segments = text, tuple(segments)


SegmentSink = Callable[[Segment], None]


class Transcriber:
    def __init__(self, metrics: ServerMetrics, chunker: Chunker, split_above: float, pool_size: int) -> None:
        self.metrics, self.chunker, self.split_above = metrics, chunker, split_above
        # Pieces of one long file decode side by side; their own pool, so a request never waits on itself.
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="voxserve-piece")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def transcribe(
        self,
        runtime: ModelRuntime,
        samples: np.ndarray,
        params: Params,
        on_segment: SegmentSink | None = None,
    ) -> Transcription:
        options = params.options()
        t0 = time.monotonic()
        duration = len(samples) / SAMPLE_RATE
        if duration > self.split_above:
            pieces = self.chunker.pieces(samples)
            result = self._pieces(runtime, samples, pieces, options, params, on_segment)
        else:
            segments, info = self.piece(runtime, samples, options, params, 0, on_segment)
            result = Transcription.from_segments(segments, info)
        elapsed = time.monotonic() - t0
        if duration > 0:
            self.metrics.rtf.observe(elapsed / duration)
        self.metrics.audio_seconds.inc(duration)
        return result

    def piece(
        self,
        runtime: ModelRuntime,
        samples: np.ndarray,
        options: TranscribeOptions,
        params: Params,
        offset: int,  # samples before this piece in the whole file
        on_segment: SegmentSink | None = None,
        first_id: int = 0,
    ) -> tuple[list[Segment], TranscriptionInfo]:
        """One piece through the seek loop; segments carry times in the whole file."""
        whisper = runtime.whisper
        decode = runtime.window_decoder(
            priority=params.priority, deadline=params.deadline, hotwords=params.hotwords
        )
        t0 = time.monotonic()
        lazy, info = transcribe_audio(
            whisper.model, whisper.tokenizer, samples, options, decode_window=decode
        )
        self.metrics.observe_stage("features", time.monotonic() - t0)
        segments: list[Segment] = []
        try:
            for s in lazy:
                s = _shifted(s, offset, first_id + len(segments))
                segments.append(s)
                if on_segment is not None:
                    on_segment(s)
        except DeadlinePassed as e:
            partial = e.partial.text if e.partial is not None else ""
            raise DeadlineExceeded(_join([s.text for s in segments] + [partial]), segments) from None
        return segments, info

    def _pieces(
        self,
        runtime: ModelRuntime,
        samples: np.ndarray,
        pieces: list[tuple[int, int]],
        options: TranscribeOptions,
        params: Params,
        on_segment: SegmentSink | None,
    ) -> Transcription:
        duration = len(samples) / SAMPLE_RATE
        if not pieces:  # no speech at all
            info = TranscriptionInfo(
                language=params.language or "en", language_probability=1.0, duration=duration
            )
            return Transcription.from_segments([], info)
        # The first piece fixes the language (detected if not given), so every piece decodes in the same one.
        (s0, e0), rest = pieces[0], pieces[1:]
        first, info = self.piece(runtime, samples[s0:e0], options, params, s0)
        options = replace(options, decoding=options.decoding.with_changes(language=info.language))
        futures = [self.pool.submit(self.piece, runtime, samples[s:e], options, params, s) for s, e in rest]
        segments: list[Segment] = []

        def emit(group: list[Segment]) -> None:
            for s in group:
                s = replace(s, id=len(segments))
                segments.append(s)
                if on_segment is not None:
                    on_segment(s)

        emit(first)
        try:
            for f in futures:
                emit(f.result()[0])  # in file order, as soon as each piece and those before it are done
        except DeadlineExceeded as e:
            for f in futures:
                f.cancel()
            raise DeadlineExceeded(_join([s.text for s in segments] + [e.text]), segments) from None
        info = replace(info, duration=duration)
        return Transcription.from_segments(segments, info)


def _join(texts: Sequence[str]) -> str:
    return "".join(texts).strip()


def _shifted(s: Segment, offset: int, new_id: int) -> Segment:
    if offset == 0:
        return replace(s, id=new_id)
    dt = offset / SAMPLE_RATE
    words = None
    if s.words is not None:
        words = tuple(Word(w.start + dt, w.end + dt, w.word, w.probability) for w in s.words)
    return replace(
        s,
        id=new_id,
        seek=s.seek + round(dt * FRAMES_PER_SECOND),
        start=s.start + dt,
        end=s.end + dt,
        words=words,
    )
