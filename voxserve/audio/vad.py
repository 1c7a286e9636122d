"""Voice activity detection with Silero VAD (v5, ONNX), streamed chunk by chunk or over a whole signal.

``SileroVAD`` wraps the ONNX model (run with onnxruntime, no second PyTorch): it scores 32 ms frames (512
samples at 16 kHz, each with the 64 samples before it as context) and carries an LSTM state per stream, so many
streams can be scored in one batched call. ``StreamingVAD`` is one stream: feed it 16 kHz audio in chunks of any
size and it returns speech start / end events at absolute sample positions, with hysteresis (speech starts at
``threshold``, ends after ``min_silence_ms`` below ``threshold - 0.15``), padding, and a cap on segment length
so every segment fits a model window. ``feed_many`` advances many streams together, one batched model call per
frame step; ``speech_segments`` splits a whole signal (long files) into speech ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples a model call scores (32 ms), as the v5 model requires at 16 kHz
CONTEXT = 64  # samples of the previous frame the model sees before each frame
STATE_SHAPE = (2, 128)  # per-stream LSTM state: [2, batch, 128]

# ../shared/data beside the project root, where the ONNX file lives on every development machine and in CI.
DEFAULT_MODEL_PATH = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vad" / "silero_vad.onnx"
)


class VADError(RuntimeError):
    """The VAD model cannot be loaded or run (missing file, onnxruntime not installed, wrong model)."""


@dataclass(frozen=True)
class VADOptions:
    # speech probability at or above which speech starts
    threshold: float = 0.5
    # probability below which a frame counts as silence while in speech; None: threshold - 0.15
    neg_threshold: float | None = None
    # silence that ends a speech segment
    min_silence_ms: int = 500
    # audio kept before a segment's first speech frame and after its last one
    speech_pad_ms: int = 300
    # offline segmentation drops segments shorter than this (streaming reports every start at once)
    min_speech_ms: int = 250
    # a segment that reaches this length is cut and a new one starts (model windows hold 30 s)
    max_speech_s: float = 28.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        neg = self.negative
        if not 0.0 <= neg <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {neg}")
        for name in ("min_silence_ms", "speech_pad_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_speech_s <= 2 * self.speech_pad_ms / 1000:
            raise ValueError(f"max_speech_s must exceed twice the padding, got {self.max_speech_s}")

    @property
    def negative(self) -> float:
        return max(self.threshold - 0.15, 0.01) if self.neg_threshold is None else self.neg_threshold


@dataclass(frozen=True)
class VADEvent:
    kind: Literal["start", "end"]
    sample: int  # absolute position in the stream (16 kHz samples), padding included


class SileroVAD:
    """The Silero VAD v5 ONNX model; thread-safe (onnxruntime sessions may be run from several threads)."""

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        path = Path(path) if path is not None else DEFAULT_MODEL_PATH
        if not path.is_file():
            raise VADError(f"Silero VAD model not found at {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise VADError("the VAD needs onnxruntime: pip install 'voxserve[server]'") from None
        opts = ort.SessionOptions()
        # One thread per call: calls are tiny, and the server runs several streams' calls in parallel instead.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise VADError(f"{path}: not a loadable ONNX model ({e})") from None
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise VADError(
                f"{path}: expected a Silero VAD v5 model (inputs input, state, sr), got {sorted(names)}"
            )
        self.path = path
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def __call__(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames [B, CONTEXT + FRAME] float32, state [2, B, 128] -> (speech probabilities [B], new state)."""
        prob, new_state = self.session.run(
            None, {"input": np.ascontiguousarray(frames, dtype=np.float32), "state": state, "sr": self._sr}
        )
        return prob[:, 0], new_state

    @staticmethod
    def initial_state(batch: int = 1) -> np.ndarray:
        return np.zeros((STATE_SHAPE[0], batch, STATE_SHAPE[1]), dtype=np.float32)


@dataclass
class StreamingVAD:
    """One stream's VAD: buffered audio, model state and the speech/silence state machine."""

    model: SileroVAD
    options: VADOptions = field(default_factory=VADOptions)

    def __post_init__(self) -> None:
        self.state = SileroVAD.initial_state()
        self.position = 0  # samples scored so far (frame-aligned)
        self.in_speech = False
        self.last_prob = 0.0
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._start = 0  # where the current segment started (padding included)
        self._last_end = 0  # where the previous segment ended: the next one never starts before it
        self._silence_from: int | None = None  # first silent sample of a trailing silence while in speech
        o = self.options
        self._pad = o.speech_pad_ms * SAMPLE_RATE // 1000
        self._min_silence = o.min_silence_ms * SAMPLE_RATE // 1000
        self._max_speech = int(o.max_speech_s * SAMPLE_RATE)

    def feed(self, samples: np.ndarray) -> list[VADEvent]:
        """Score 16 kHz mono float32 ``samples`` (any length; the remainder of a frame waits for the next call)."""
        return feed_many([self], [samples])[0]

    def finish(self) -> list[VADEvent]:
        """The stream ended: close an open segment at the end of the audio scored so far."""
        if not self.in_speech:
            return []
        self.in_speech = False
        end = self.position + len(self._pending)
        self._last_end = end
        return [VADEvent("end", end)]

    # ----- used by feed_many

    def _frames(self, samples: np.ndarray) -> np.ndarray:
        """Append ``samples`` and cut the whole frames now available: [n, CONTEXT + FRAME]."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(buf) // FRAME
        self._pending = buf[n * FRAME :].copy()
        if n == 0:
            return np.zeros((0, CONTEXT + FRAME), dtype=np.float32)
        body = np.concatenate([self._context, buf[: n * FRAME]])
        self._context = buf[n * FRAME - CONTEXT : n * FRAME].copy()
        idx = np.arange(n)[:, None] * FRAME + np.arange(CONTEXT + FRAME)[None, :]
        return body[idx]

    def _update(self, prob: float) -> list[VADEvent]:
        """Advance the state machine by one scored frame."""
        o, events = self.options, []
        frame_start, frame_end = self.position, self.position + FRAME
        self.position, self.last_prob = frame_end, prob
        if not self.in_speech:
            if prob >= o.threshold:
                self.in_speech, self._silence_from = True, None
                self._start = max(frame_start - self._pad, self._last_end, 0)
                events.append(VADEvent("start", self._start))
            return events
        if prob >= o.threshold:
            self._silence_from = None
        elif prob < o.negative and self._silence_from is None:
            self._silence_from = frame_start
        if self._silence_from is not None and frame_end - self._silence_from >= self._min_silence:
            end = min(self._silence_from + self._pad, frame_end)
            self.in_speech, self._last_end = False, end
            events.append(VADEvent("end", end))
        elif frame_end + FRAME - self._start > self._max_speech:
            # The next frame would not fit one window: cut here and go on with a new segment at once.
            self._last_end = frame_end
            events += [VADEvent("end", frame_end), VADEvent("start", frame_end)]
            self._start, self._silence_from = frame_end, None
        return events


def feed_many(vads: Sequence[StreamingVAD], chunks: Sequence[np.ndarray]) -> list[list[VADEvent]]:
    """Feed ``chunks[i]`` to ``vads[i]`` for every stream at once: frame step k of all streams that have one
    runs as one batched model call (streams must share one model). Returns each stream's events in order."""
    if len(vads) != len(chunks):
        raise ValueError(f"{len(vads)} streams but {len(chunks)} chunks")
    if not vads:
        return []
    model = vads[0].model
    if any(v.model is not model for v in vads):
        raise ValueError("feed_many needs streams that share one SileroVAD")
    frames = [v._frames(c) for v, c in zip(vads, chunks, strict=True)]
    events: list[list[VADEvent]] = [[] for _ in vads]
    for k in range(max(len(f) for f in frames)):
        rows = [i for i, f in enumerate(frames) if len(f) > k]
        batch = np.stack([frames[i][k] for i in rows])
        state = np.concatenate([vads[i].state for i in rows], axis=1)
        probs, state = model(batch, state)
        for j, i in enumerate(rows):
            vads[i].state = state[:, j : j + 1]
            events[i] += vads[i]._update(float(probs[j]))
    return events


def speech_segments(
    samples: np.ndarray, model: SileroVAD | None = None, options: VADOptions | None = None
) -> list[tuple[int, int]]:
    """Speech ranges [start, end) in samples of a whole 16 kHz mono signal; segments shorter than
    ``min_speech_ms`` (padding excluded) are dropped, and none is longer than ``max_speech_s``."""
    options = options or VADOptions()
    vad = StreamingVAD(model or SileroVAD(), options)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    step = 30 * SAMPLE_RATE  # bounded memory for the frame matrix
    events: list[VADEvent] = []
    for i in range(0, len(samples), step):
        events += vad.feed(samples[i : i + step])
    events += vad.finish()
    min_len = options.min_speech_ms * SAMPLE_RATE // 1000 + 2 * vad._pad
    ranges, start = [], None
    for e in events:
        if e.kind == "start":
            start = e.sample
        elif start is not None:
            ranges.append((start, min(e.sample, len(samples))))
            start = None
    segments = []
    for i, (s, e) in enumerate(ranges):
        # Pieces of speech cut at max_speech_s touch their neighbours: they are kept whatever their length.
        joined = (i > 0 and ranges[i - 1][1] == s) or (i + 1 < len(ranges) and ranges[i + 1][0] == e)
        if e > s and (e - s >= min_len or joined):
            segments.append((s, e))
    return segments


__all__ = [
    "DEFAULT_MODEL_PATH",
    "SileroVAD",
    "StreamingVAD",
    "VADError",
    "VADEvent",
    "VADOptions",
    "feed_many",
    "speech_segments",
]
