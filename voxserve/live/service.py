"""What all live streams share: one model and its batching engine, the VAD model, and the stream caps.

Streams never decode on their own: each partial or final decode is one window request on the shared engine at
``realtime`` priority, so the partial re-decodes of many streams are admitted, encoded and stepped together.
VAD work is batched the same way: chunks that arrive while a VAD batch runs wait and go together in the next
one, a batched model call per 32 ms frame step, split into groups that run in parallel threads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from ..api import WhisperModel
from ..audio.features import fill_silence, log_mel_power, normalize_log_mel
from ..audio.streaming_mel import StreamingLogMel
from ..audio.vad import SileroVAD, StreamingVAD, VADEvent, VADOptions, feed_many
from ..config import HOP_LENGTH, N_FFT, SAMPLE_RATE
from ..decoding.decode import DecodingResult, WindowDecoder
from ..decoding.options import DecodingOptions
from ..engine.engine import Engine, EngineError, Ticket
from ..engine.types import AudioWindow, Priority, RowSpec, WindowRequest


@dataclass(frozen=True)
class LiveOptions:
    # least time between two partial re-decodes of one stream (a partial in flight also waits for its answer)
    partial_interval_s: float = 0.3
    # audio an utterance needs before its first partial
    min_partial_s: float = 0.3
    # encode only the audio an utterance has instead of a padded 30 s window: padded up to the next of
    # window_buckets_s (few lengths, so the engine encodes many streams' windows in few batches)
    short_windows: bool = False
    window_buckets_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    # where a window's log-mel is made: "engine", from the window's audio on the engine's device, batched over each
    # admission (engine/mels.py), so the host makes none; or "host", in the event loop's worker threads (an
    # utterance's frames kept between its decodes, audio/streaming_mel.py). Measured (large-v3 fp16, H100,
    # `voxserve bench --streams 100,200,300 --packed-encoder --mels ...`, stop 20): p99 243 ms / 1.40 s / 1.93 s
    # and 368 / 683 / 747 decodes/s with "engine", 260 ms / 2.66 s / 3.15 s and 367 / 462 / 414 with "host"; on
    # the 2-core CPU (demo int8, 1-4 streams, bench/README.md "Log-mels made by the engine") 2 streams held both ways
    mels: Literal["host", "engine"] = "engine"
    # random-weight benchmarking: every decode yields exactly this many tokens per second of audio (end-of-text
    # suppressed), the length of real speech's transcripts; None decodes normally
    fixed_tokens_per_second: float | None = None
    # no decode runs past this many tokens per second of its audio (+10): speech is ~3, and a repetition loop
    # (a model hallucinating on cut-off audio) would otherwise hold its stream for up to 224 steps
    max_tokens_per_second: float = 6.0
    # a partial forces the words already committed as its transcript's prefix and decodes only the rest (their
    # prefill is one pass; each decoded token is a step); finals always decode from scratch
    prefix_partials: bool = True
    # streams open at once, in all and per API key
    max_streams: int = 256
    max_streams_per_key: int = 16
    # a session that sends nothing for this long is closed
    idle_timeout_s: float = 60.0
    # audio may run this far ahead of real time (bursts, buffered clients); more is refused
    max_ahead_s: float = 10.0
    # largest decoded audio payload of one append event
    max_chunk_bytes: int = 1 << 20
    # longest item without server VAD (audio between commits); more is refused until the client commits
    max_item_s: float = 120.0
    # a partial not decoded within this time is dropped (a later partial or the final answers instead)
    decode_timeout_s: float = 10.0
    # VAD rows per batched model call (groups run in parallel threads)
    vad_batch: int = 64
    vad: VADOptions = field(default_factory=VADOptions)

    def __post_init__(self) -> None:
        for name in (
            "partial_interval_s",
            "idle_timeout_s",
            "decode_timeout_s",
            "max_item_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_streams", "max_streams_per_key", "max_chunk_bytes", "vad_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.window_buckets_s or any(b <= 0 for b in self.window_buckets_s):
            raise ValueError(f"window_buckets_s must be positive seconds, got {self.window_buckets_s}")
        if self.min_partial_s < 0 or self.max_ahead_s < 0:
            raise ValueError("min_partial_s and max_ahead_s must be >= 0")
        if self.fixed_tokens_per_second is not None and self.fixed_tokens_per_second <= 0:
            raise ValueError("fixed_tokens_per_second must be > 0")
        if self.max_tokens_per_second <= 0:
            raise ValueError("max_tokens_per_second must be > 0")
        if self.mels not in ("host", "engine"):
            raise ValueError(f"mels must be 'host' or 'engine', got {self.mels!r}")

    def short_window_lengths(self, most: int) -> list[int]:
        """The short windows' lengths in samples, ascending, up to ``most`` (the model's window): whole mel
        frame pairs, since the encoder's stride-2 convolution halves the frame count."""
        pair = 2 * HOP_LENGTH
        fits = {round(b * SAMPLE_RATE) // pair * pair for b in self.window_buckets_s}
        return sorted(f for f in fits if f <= most)

    def short_window_frames(self, most: int) -> tuple[int, ...]:
        """The mel frame counts of the windows the engine will encode for these options (none but the full
        window ``most`` frames without short windows): an EngineConfig's ``short_window_frames``."""
        if not self.short_windows:
            return ()
        return tuple(n // HOP_LENGTH for n in self.short_window_lengths(most * HOP_LENGTH))


class StreamLimitError(Exception):
    """No room for another stream: ``scope`` is "server" (all streams) or "key" (this API key's)."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


@dataclass
class LiveStats:
    """Latency from audio arriving to its text appearing, and decode counts. ``keep`` holds every figure (the
    stream benchmark reads them); a server passes ``observe`` instead (metrics) so memory stays flat."""

    keep: bool = True
    observe: Callable[[str, float], None] | None = None  # (figure name, seconds)
    # per audio chunk in speech: (arrival time, seconds until the first text covering it: a partial or the final)
    text_latency: list[tuple[float, float]] = field(default_factory=list)
    final_latency: list[float] = field(default_factory=list)  # per utterance: end of speech -> completed
    decode_seconds: list[float] = field(default_factory=list)  # submit -> result, partials and finals
    partials: int = 0
    finals: int = 0

    def text(self, arrived: float, now: float) -> None:
        self._add("text", now - arrived, self.text_latency, (arrived, now - arrived))

    def final(self, seconds: float) -> None:
        self.finals += 1
        self._add("final", seconds, self.final_latency, seconds)

    def decode(self, seconds: float) -> None:
        self._add("decode", seconds, self.decode_seconds, seconds)

    def _add(self, name: str, seconds: float, into: list, item: object) -> None:
        if self.keep:
            into.append(item)
        if self.observe is not None:
            self.observe(name, seconds)


class LiveService:
    def __init__(
        self,
        whisper: WhisperModel,
        engine: Engine,
        vad_model: SileroVAD | None,
        options: LiveOptions | None = None,
        stats: LiveStats | None = None,
    ) -> None:
        self.whisper, self.engine, self.vad_model = whisper, engine, vad_model
        self.options = options or LiveOptions()
        self.stats = stats or LiveStats()
        # where the model and engine are read from before each decode (a server's fail-over); None: fixed
        self.runtime: Callable[[], tuple[WhisperModel, Engine]] | None = None
        # called (in a worker thread) with a failed engine and its error: True when another engine now takes
        # the work (the server's fail-over to the CPU), and the decode is tried once more there
        self.on_failure: Callable[[Engine, BaseException], bool] | None = None
        d = whisper.model.dims
        self.window_samples = 2 * d.n_audio_ctx * HOP_LENGTH
        window_s = self.window_samples / SAMPLE_RATE
        if self.options.vad.max_speech_s > window_s - 1:
            # A model with a shorter window (e.g. 5 s): the VAD cuts speech to fit it.
            vad = replace(self.options.vad, max_speech_s=max(window_s - 1, window_s / 2))
            self.options = replace(self.options, vad=vad)
        # per (language, prompt): the decoder and its row spec, built once; a partial's prefix is appended to the
        # spec's tokens (request_spec)
        self._decoders: dict[tuple[str | None, str | None], tuple[WindowDecoder, RowSpec]] = {}
        self._streams: Counter[str | None] = Counter()
        self._pending: list[tuple[StreamingVAD, np.ndarray, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task | None = None

    # ----- stream caps

    @property
    def open_streams(self) -> int:
        return sum(self._streams.values())

    def open_stream(self, key: str | None) -> None:
        o = self.options
        if self.open_streams >= o.max_streams:
            raise StreamLimitError(f"the server holds its maximum of {o.max_streams} live streams", "server")
        # Without API keys (key None) only the server-wide cap applies.
        if key is not None and self._streams[key] >= o.max_streams_per_key:
            raise StreamLimitError(
                f"this API key already has its maximum of {o.max_streams_per_key} live streams open", "key"
            )
        self._streams[key] += 1

    def close_stream(self, key: str | None) -> None:
        if self._streams[key] > 0:
            self._streams[key] -= 1
        if self._streams[key] == 0:
            del self._streams[key]

    # ----- VAD, batched across streams

    def new_vad(self, options: VADOptions | None = None) -> StreamingVAD:
        if self.vad_model is None:
            raise RuntimeError("this service has no VAD model")
        return StreamingVAD(self.vad_model, options or self.options.vad)

    async def vad(self, vad: StreamingVAD, samples: np.ndarray) -> list[VADEvent]:
        """Feed one stream's chunk; resolves once a batch that holds it has run. A VAD of another kind (the
        stream benchmark's oracle) is fed directly."""
        if not isinstance(vad, StreamingVAD):
            return vad.feed(samples)
        loop = asyncio.get_running_loop()
        if self._pump is None or self._pump.done() or self._pump.get_loop() is not loop:
            # (Re)started in the running loop: test clients run each app instance in a loop of their own.
            self._wake, self._pending = asyncio.Event(), []
            self._pump = loop.create_task(self._vad_pump())
        future = loop.create_future()
        self._pending.append((vad, samples, future))
        self._wake.set()
        return await future

    async def _vad_pump(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            # One chunk per stream per call: a stream's later chunks go in the next round, in order.
            while pending:
                batch, later, seen = [], [], set()
                for item in pending:
                    (later if id(item[0]) in seen else batch).append(item)
                    seen.add(id(item[0]))
                pending = later
                groups = [
                    batch[i : i + self.options.vad_batch]
                    for i in range(0, len(batch), self.options.vad_batch)
                ]
                results = await asyncio.gather(
                    *(
                        asyncio.to_thread(feed_many, [g[0] for g in grp], [g[1] for g in grp])
                        for grp in groups
                    ),
                    return_exceptions=True,
                )
                for grp, res in zip(groups, results, strict=True):
                    for i, (_, _, future) in enumerate(grp):
                        if future.done():
                            continue
                        if isinstance(res, BaseException):
                            future.set_exception(res)
                        else:
                            future.set_result(res[i])

    # ----- decoding on the shared engine

    def window_decoder(self, language: str | None, prompt: str | None) -> WindowDecoder:
        """The decoding policy for a stream's options."""
        return self._decoder_and_spec(language, prompt)[0]

    def _decoder_and_spec(self, language: str | None, prompt: str | None) -> tuple[WindowDecoder, RowSpec]:
        key = (language, prompt)
        if key not in self._decoders:
            tok = self.whisper.tokenizer
            fixed = self.options.fixed_tokens_per_second is not None
            options = DecodingOptions(
                language=language,
                prompt=prompt or None,
                without_timestamps=True,
                suppress_tokens=(-1, tok.eot) if fixed else (-1,),
            )
            decoder = WindowDecoder(self.whisper.model, tok, options)
            if len(self._decoders) > 64:  # bounded: prompts are free text
                self._decoders.clear()
            self._decoders[key] = (decoder, decoder.row_spec())
        return self._decoders[key]

    def request_spec(
        self, language: str | None, prompt: str | None, prefix: str | None, samples: int
    ) -> tuple[WindowDecoder, RowSpec]:
        """The decoder (for its result) and the engine's row spec for decoding ``samples`` samples of audio;
        ``prefix`` (committed text of a partial) is forced. The spec is the one a WindowDecoder built with
        DecodingOptions(prefix=prefix) gives: its initial tokens end with the prefix's (after the prompt and the
        start-of-transcript sequence; WindowDecoder._initial_tokens), and nothing else of it depends on the
        prefix, so partials reuse the cached decoder instead of building and tokenising one each."""
        decoder, spec = self._decoder_and_spec(language, prompt)
        initial, forced = spec.initial_tokens, 0
        if prefix:
            tokens = decoder.prefix_tokens(prefix)
            initial, forced = decoder.check_context(initial + tuple(tokens)), len(tokens)
        seconds = min(samples, self.window_samples) / SAMPLE_RATE
        if self.options.fixed_tokens_per_second is not None:
            # the transcript's length, forced prefix included, follows the audio's
            sample_len = max(1, round(self.options.fixed_tokens_per_second * seconds) - forced)
        else:
            sample_len = min(spec.sample_len, math.ceil(self.options.max_tokens_per_second * seconds) + 10)
        return decoder, replace(spec, initial_tokens=initial, sample_len=sample_len)

    def window_frames(self, n: int) -> int:
        """The mel frames of the window an utterance of ``n`` samples is decoded in: the model's window (30 s),
        or with short_windows the smallest of window_buckets_s that holds it (the whole window above them)."""
        target = self.window_samples
        if self.options.short_windows:
            fits = self.options.short_window_lengths(self.window_samples)
            target = min([f for f in fits if f >= n] or [self.window_samples])
        return target // HOP_LENGTH

    def audio_window(
        self, samples: np.ndarray, key: Hashable | None = None, *, last: bool = False
    ) -> AudioWindow:
        """An utterance's window (its last 30 s at most) as audio, for the engine to make its log-mel. ``key``:
        the utterance's, where ``samples`` start at its first sample (the engine keeps its audio on the device
        and sends only what it gained since; AudioWindow.key); ``last``: its final decode (the engine then drops
        that audio)."""
        if len(samples) > self.window_samples:
            samples, key = samples[-self.window_samples :], None
        return AudioWindow(
            np.ascontiguousarray(samples, dtype=np.float32), self.window_frames(len(samples)), key, last
        )

    def mel(self, samples: np.ndarray, streaming: StreamingLogMel | None = None) -> torch.Tensor:
        """The window mel for an utterance (CPU, float32; ``window_frames`` long). ``streaming``: the utterance's
        kept frames, when ``samples`` start at its first sample."""
        n = len(samples)
        if n > self.window_samples:
            samples, n, streaming = samples[-self.window_samples :], self.window_samples, None
        frames = self.window_frames(n)
        # Only the audio and one FFT window of the silence after it are transformed: every later frame sees
        # silence only, so its value (silence_level) is filled in. The same values as the whole window's log-mel.
        m = min(frames * HOP_LENGTH, n + N_FFT)
        x = torch.zeros(m, dtype=torch.float32)
        x[:n] = torch.as_tensor(samples, dtype=torch.float32)
        n_mels = self.whisper.model.dims.n_mels
        power = streaming.log_power(x, n, n_mels) if streaming is not None else log_mel_power(x, n_mels)
        return fill_silence(normalize_log_mel(power[:, :frames]), frames)

    async def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        prompt: str | None,
        on_ticket: Callable[[Ticket], None] | None = None,
        partial: bool = False,
        prefix: str | None = None,
        streaming: StreamingLogMel | None = None,
        audio_key: Hashable | None = None,
    ) -> DecodingResult:
        """Decode one utterance (16 kHz samples) at realtime priority; ``on_ticket`` gets the engine ticket
        (to cancel it when the stream goes away). A partial has a deadline (``decode_timeout_s``): past it, its
        result has finish_reason "deadline" and what was decoded by then. ``prefix`` is text forced at the start
        of the transcript (a partial's committed words, which never change): only the rest is decoded, and the
        result's text is the rest only. ``streaming`` keeps the utterance's log-mel frames between its decodes
        with ``mels="host"`` (``samples`` must then start at the utterance's first sample); ``audio_key`` names the
        utterance for the engine with ``mels="engine"`` (the same condition; ``audio_window``)."""
        started = time.monotonic()
        mel = None
        for attempt in range(2):
            if self.runtime is not None:
                whisper, engine = self.runtime()
                if engine is not self.engine:
                    self.whisper, self.engine = whisper, engine
                    self._decoders.clear()  # built for the other model object
            decoder, spec = self.request_spec(language, prompt, prefix, len(samples))
            if mel is None:  # audio for the engine needs no worker thread
                mel = (
                    self.audio_window(samples, audio_key, last=not partial)
                    if self.options.mels == "engine"
                    else await asyncio.to_thread(self.mel, samples, streaming)
                )
            engine = self.engine
            try:
                deadline = time.monotonic() + self.options.decode_timeout_s if partial else None
                ticket = engine.submit(
                    WindowRequest(mel=mel, spec=spec, priority=Priority.REALTIME, deadline=deadline),
                    token_events=False,  # only the output is awaited: no event-loop wake-up per token
                )
                if on_ticket is not None:
                    on_ticket(ticket)
                output = await ticket.wait()
                break
            except EngineError as e:
                if (
                    attempt
                    or self.on_failure is None
                    or not await asyncio.to_thread(self.on_failure, engine, e)
                ):
                    raise
                mel = None  # made again for the engine that takes over (its device may differ)
        self.stats.decode(time.monotonic() - started)
        return decoder.result_from(output)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
            self._pump = None
        for _, _, future in self._pending:
            if not future.done():
                future.cancel()
        self._pending.clear()
