"""One live transcription stream, speaking OpenAI's Realtime transcription events (transport-free).

Client events: ``transcription_session.update`` (or the GA API's ``session.update`` with a transcription
session, answered by ``session.updated``), ``input_audio_buffer.append`` (base64 audio),
``input_audio_buffer.commit`` and ``input_audio_buffer.clear``. Server events: ``transcription_session.created``
/ ``.updated``, ``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed`` / ``cleared``,
``conversation.item.input_audio_transcription.delta`` / ``.completed`` and ``error``.

With server VAD each speech segment is one item; without it (``turn_detection: null``) the audio between commits
is. While an item grows it is re-decoded every ``partial_interval_ms``; a delta event carries the newly stable
words (``delta``, append-only as in OpenAI's API) and, as a voxserve extension, the provisional rest of the
latest hypothesis (``partial``, to show right after the committed text; both keep their leading space) and
the end of the audio it covers (``audio_end_ms``). At the end of the item the final decode's ``transcript`` replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.streaming_mel import StreamingLogMel
from ..audio.vad import VADEvent, VADOptions
from ..config import SAMPLE_RATE
from ..engine.engine import EngineError, Ticket
from .agreement import StablePrefix
from .buffer import AudioBuffer
from .formats import ChunkDecoder, FormatError, InputFormat, decode_base64
from .service import LiveService

log = logging.getLogger("voxserve.live")
Send = Callable[[dict[str, Any]], Awaitable[None]]
_event_ids = itertools.count(1)
# As the HTTP API's: the decoder keeps at most half its context of prompt, and a partial tokenises the prompt
# on the event loop (a 12 MB prompt held every stream and request up for most of a second per partial).
MAX_PROMPT_CHARS = 4000
# An error event quotes what the client sent (an unknown type, a language); a client that sends 15 MB frames and
# reads nothing made the server buffer every echo (hundreds of MB per stream).
MAX_ERROR_CHARS = 300


class ProtocolError(Exception):
    """A client event the session refuses; becomes an ``error`` event (the session stays open)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class _Item:
    id: str
    start: int  # absolute sample where the item's audio starts
    end: int | None = None
    agreement: StablePrefix = field(default_factory=StablePrefix)
    partial: asyncio.Task | None = None
    tickets: list[Ticket] = field(default_factory=list)
    last_partial_at: float = float("-inf")
    covered: int = 0  # audio end the latest partial covered
    # log-mel frames of the item's audio from its start, kept between its partials and its final (log-mels made
    # on the host, LiveOptions.mels="host")
    mels: StreamingLogMel = field(default_factory=StreamingLogMel)


class LiveSession:
    def __init__(
        self,
        service: LiveService,
        send: Send,
        *,
        model: str = "default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service, self._send, self.clock = service, send, clock
        self.id = _new_id("sess")
        self.model = model
        self.format = InputFormat()
        self.decoder = ChunkDecoder(self.format)
        self.language: str | None = None
        self.prompt: str | None = None
        self.partial_interval_s = service.options.partial_interval_s
        self.vad_options: VADOptions | None = service.options.vad if service.vad_model is not None else None
        self.vad = service.new_vad(self.vad_options) if self.vad_options is not None else None
        self.audio = AudioBuffer()
        self.item: _Item | None = None
        self.previous_item_id: str | None = None
        self.arrivals: deque[tuple[int, float]] = (
            deque()
        )  # (audio end, arrival time) of chunks without text yet
        self.tasks: set[asyncio.Task] = set()
        self.tickets: set[Ticket] = set()  # engine requests in flight
        self.first_audio_at: float | None = None
        self.received_s = 0.0  # seconds of audio received, from the payload sizes
        self.closed = False
        self.errors = 0  # error events sent

    # ----- events out

    async def emit(self, type_: str, **fields: Any) -> None:
        if self.closed:
            return
        try:
            await self._send({"event_id": f"event_{next(_event_ids)}", "type": type_, **fields})
        except (
            TypeError,
            ValueError,
        ):  # the event would not serialise: our bug, so say it, but keep the session
            log.exception("live: the %s event could not be serialised and was not sent", type_)
        except Exception:  # the client went away; the transport notices and closes us
            pass

    async def error(self, code: str, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
                    event_id: str | None = None) -> None:  # fmt: skip
        self.errors += 1
        if len(message) > MAX_ERROR_CHARS:  # messages quote client values: never echo megabytes back
            message = message[: MAX_ERROR_CHARS - 3] + "..."
        await self.emit(
            "error",
            error={"type": kind, "code": code, "message": message, "param": param, "event_id": event_id},
        )

    def describe(self) -> dict[str, Any]:
        vad = self.vad_options
        return {
            "object": "realtime.transcription_session",
            "id": self.id,
            "input_audio_format": self.format.name,
            "input_audio_sample_rate": self.format.sample_rate,
            "input_audio_transcription": {
                "model": self.model,
                "language": self.language,
                "prompt": self.prompt or "",
            },
            "turn_detection": None
            if vad is None
            else {
                "type": "server_vad",
                "threshold": vad.threshold,
                "prefix_padding_ms": vad.speech_pad_ms,
                "silence_duration_ms": vad.min_silence_ms,
            },
            "partial_interval_ms": round(self.partial_interval_s * 1000),
        }

    async def start(self) -> None:
        await self.emit("transcription_session.created", session=self.describe())

    # ----- events in

    async def handle(self, event: Any) -> None:
        """Act on one client event (already parsed JSON); refusals become error events."""
        event_id = event.get("event_id") if isinstance(event, dict) else None
        try:
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ProtocolError("invalid_event", "an event must be a JSON object with a string 'type'")
            kind = event["type"]
            if kind == "transcription_session.update":
                await self.update(event.get("session"))
            elif kind == "session.update":  # the GA API's name (and session shape)
                await self.update(event.get("session"), reply="session.updated")
            elif kind == "input_audio_buffer.append":
                await self.append(event.get("audio"))
            elif kind == "input_audio_buffer.commit":
                await self.commit()
            elif kind == "input_audio_buffer.clear":
                await self.clear()
            else:
                raise ProtocolError("unknown_event_type", f"unknown event type {kind!r}", "type")
        except ProtocolError as e:
            await self.error(e.code, e.message, param=e.param, event_id=event_id)
        except FormatError as e:
            await self.error("invalid_audio", str(e), param="audio", event_id=event_id)

    async def update(self, session: Any, *, reply: str = "transcription_session.updated") -> None:
        if not isinstance(session, dict):
            raise ProtocolError("invalid_session", "'session' must be an object", "session")
        session = _from_ga(session)
        fmt = self.format
        if "input_audio_format" in session or "input_audio_sample_rate" in session:
            name = session.get("input_audio_format", fmt.name)
            rate = session.get("input_audio_sample_rate")
            fmt = InputFormat.of(name, rate) if isinstance(name, str) else InputFormat.of(repr(name))
        language, prompt = self.language, self.prompt
        if "input_audio_transcription" in session:
            t = session["input_audio_transcription"] or {}
            if not isinstance(t, dict):
                raise ProtocolError("invalid_session", "input_audio_transcription must be an object or null")
            language, prompt = t.get("language", language), t.get("prompt", prompt)
            if language is not None and (not isinstance(language, str) or language not in self._languages()):
                raise ProtocolError("invalid_language", f"unknown language {language!r}", "language")
            if prompt is not None and not isinstance(prompt, str):
                raise ProtocolError("invalid_session", "prompt must be a string", "prompt")
            if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
                raise ProtocolError(
                    "invalid_session", f"prompt: at most {MAX_PROMPT_CHARS} characters", "prompt"
                )
        vad_options, vad_changed = self.vad_options, False
        if "turn_detection" in session:
            vad_options, vad_changed = self._turn_detection(session["turn_detection"]), True
        interval = self.partial_interval_s
        if "partial_interval_ms" in session:
            ms = session["partial_interval_ms"]
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not 50 <= ms <= 10000:
                raise ProtocolError(
                    "invalid_session", "partial_interval_ms must be 50..10000", "partial_interval_ms"
                )
            interval = ms / 1000
        # Everything checked: apply.
        if fmt != self.format:
            self.format, self.decoder = fmt, ChunkDecoder(fmt)
        self.language, self.prompt, self.partial_interval_s = language, prompt or None, interval
        if vad_changed:
            if self.item is not None:
                await self._finish_item(self.audio.end)
            self.vad_options = vad_options
            self.vad = self.service.new_vad(vad_options) if vad_options is not None else None
        await self.emit(reply, session=self.describe())

    def _languages(self) -> set[str]:
        tok = self.service.whisper.tokenizer
        return set(tok.all_language_codes) if tok.is_multilingual else {"en"}

    def _turn_detection(self, td: Any) -> VADOptions | None:
        if td is None:
            return None
        if not isinstance(td, dict) or td.get("type", "server_vad") != "server_vad":
            raise ProtocolError(
                "invalid_turn_detection", "turn_detection must be null or {type: 'server_vad'}"
            )
        if self.service.vad_model is None:
            raise ProtocolError("vad_unavailable", "this server has no VAD model; use turn_detection null")
        base = self.service.options.vad
        try:
            return VADOptions(
                threshold=float(td.get("threshold", base.threshold)),
                speech_pad_ms=int(td.get("prefix_padding_ms", base.speech_pad_ms)),
                min_silence_ms=int(td.get("silence_duration_ms", base.min_silence_ms)),
                min_speech_ms=base.min_speech_ms,
                max_speech_s=base.max_speech_s,
            )
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: int() of 1e400, valid JSON
            raise ProtocolError("invalid_turn_detection", f"turn_detection: {e}") from None

    async def append(self, payload: Any, *, arrived: float | None = None) -> None:
        """Take one base64 chunk. ``arrived`` (the session clock's time) is when the audio was sent, where the
        caller knows it better than the time this runs (the stream benchmark's callers do)."""
        data = decode_base64(payload, max_bytes=self.service.options.max_chunk_bytes)
        if not data:
            raise ProtocolError("invalid_audio", "audio is empty", "audio")
        now = self.clock() if arrived is None else arrived
        seconds = len(data) / self.format.bytes_per_second
        if self.first_audio_at is None:
            self.first_audio_at = now
        ahead = self.received_s + seconds - (now - self.first_audio_at)
        if ahead > self.service.options.max_ahead_s:
            raise ProtocolError(
                "audio_too_fast",
                f"audio arrives faster than real time ({ahead:.1f} s ahead; at most "
                f"{self.service.options.max_ahead_s:g} s allowed); this chunk was dropped",
                "audio",
            )
        item_s = 0.0 if self.item is None else (self.audio.end - self.item.start) / SAMPLE_RATE
        if self.vad is None and item_s + seconds > self.service.options.max_item_s:
            raise ProtocolError(
                "input_audio_buffer_full",
                f"the input audio buffer holds {item_s:.0f} s, its maximum without server VAD; send "
                "input_audio_buffer.commit (this chunk was dropped)",
                "audio",
            )
        samples = self.decoder.decode(data)
        self.received_s += seconds
        self.audio.append(samples)
        end = self.audio.end
        if self.vad is not None:
            for e in await self.service.vad(self.vad, samples):
                await self._on_vad(e)
            if self.item is None:
                self.arrivals.clear()  # silence: no text will cover it
        elif self.item is None:
            self.item = _Item(_new_id("item"), end - len(samples))
        if self.item is not None:
            self.arrivals.append((end, now))
        self._trim()
        self._maybe_partial()

    async def commit(self) -> None:
        if self.item is None or self.audio.end - self.item.start <= 0:
            raise ProtocolError(
                "input_audio_buffer_commit_empty", "the input audio buffer holds no speech to commit"
            )
        if self.vad is not None:
            self.vad.finish()
        await self._finish_item(self.audio.end, stopped=self.vad is not None)

    async def clear(self) -> None:
        if self.item is not None:
            self._cancel(self.item)
            self.item = None
        if self.vad is not None:
            self.vad.finish()
        self.arrivals.clear()
        self.audio.drop_before(self.audio.end)
        await self.emit("input_audio_buffer.cleared")

    # ----- speech items

    async def _on_vad(self, event: VADEvent) -> None:
        if event.kind == "start":
            self.item = _Item(_new_id("item"), event.sample)
            while self.arrivals and self.arrivals[0][0] <= event.sample:
                self.arrivals.popleft()
            await self.emit(
                "input_audio_buffer.speech_started", audio_start_ms=_ms(event.sample), item_id=self.item.id
            )
        elif self.item is not None:
            await self._finish_item(event.sample, stopped=True)

    async def _finish_item(self, end: int, *, stopped: bool = False) -> None:
        item, self.item = self.item, None
        assert item is not None
        item.end = end
        if stopped:
            await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=_ms(end), item_id=item.id)
        await self.emit(
            "input_audio_buffer.committed", previous_item_id=self.previous_item_id, item_id=item.id
        )
        await self.emit(
            "conversation.item.created",
            previous_item_id=self.previous_item_id,
            item={
                "id": item.id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        )
        self.previous_item_id = item.id
        self._cancel(item)
        arrivals = []
        while self.arrivals and self.arrivals[0][0] <= end:
            arrivals.append(self.arrivals.popleft())
        samples = self.audio.slice(item.start, end)
        self._spawn(self._final(item, samples, arrivals, self.clock()))

    def _maybe_partial(self) -> None:
        item = self.item
        if item is None or self.closed or (item.partial is not None and not item.partial.done()):
            return
        end, now = self.audio.end, self.clock()
        if end - item.start < self.service.options.min_partial_s * SAMPLE_RATE or end <= item.covered:
            return
        if now - item.last_partial_at < self.partial_interval_s:
            return
        item.last_partial_at = now
        item.partial = self._spawn(self._partial(item, end))

    async def _partial(self, item: _Item, end: int) -> None:
        samples = self.audio.slice(max(item.start, end - self.service.window_samples), end)
        # (Only while the whole item fits one window: a prefix belongs to the item's start.)
        prefix = item.agreement.text if self.service.options.prefix_partials and samples.size else ""
        if end - item.start > self.service.window_samples:
            prefix = ""
        from_start = end - item.start <= self.service.window_samples
        result = await self._decode(item, samples, prefix=prefix, from_start=from_start)
        if result is None or item.end is not None or self.closed:
            return  # the item ended meanwhile: its final decode answers
        if result.finish_reason in ("deadline", "cancelled"):
            item.partial = None
            return  # cut short (an overloaded engine): no text from it; the next partial tries again
        item.covered = end
        item.partial = None  # this task is ending: let the next partial start
        hypothesis = f"{prefix} {result.text}" if prefix else result.text
        delta, tail = item.agreement.update(hypothesis)
        await self.emit(
            "conversation.item.input_audio_transcription.delta",
            item_id=item.id,
            content_index=0,
            delta=delta,
            partial=tail,
            audio_end_ms=_ms(end),
        )
        now = self.clock()
        stats = self.service.stats
        stats.partials += 1
        while self.arrivals and self.arrivals[0][0] <= end:
            stats.text(self.arrivals.popleft()[1], now)
        self._maybe_partial()

    async def _final(self, item: _Item, samples: np.ndarray, arrivals: list, ended_at: float) -> None:
        # A manual commit can hold more than one window: decode it window by window.
        window, texts = self.service.window_samples, []
        for i in range(0, max(len(samples), 1), window):
            result = await self._decode(item, samples[i : i + window], final=True, from_start=i == 0)
            if result is None:
                return
            texts.append(result.text)
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=" ".join(t for t in texts if t),
            usage={"type": "duration", "seconds": round(len(samples) / SAMPLE_RATE, 3)},
        )
        now, stats = self.clock(), self.service.stats
        stats.final(now - ended_at)
        for _, arrived in arrivals:
            stats.text(arrived, now)

    async def _decode(
        self,
        item: _Item,
        samples: np.ndarray,
        *,
        final: bool = False,
        prefix: str = "",
        from_start: bool = False,
    ) -> Any:
        """The decode of ``samples`` for ``item``; None after a failure, which the client is told of (a final's
        as OpenAI's ``...input_audio_transcription.failed`` event, a partial's as an error event).
        ``from_start``: the samples start at the item's first sample (its kept log-mel frames apply)."""
        if len(samples) < 400:  # the log-mel needs a few hundred samples; pad tiny items with silence
            samples, from_start = np.pad(samples, (0, 400 - len(samples))), False
        tickets: list[Ticket] = []

        def track(ticket: Ticket) -> None:
            tickets.append(ticket)
            item.tickets.append(ticket)
            self.tickets.add(ticket)

        try:
            return await self.service.decode(
                samples,
                language=self.language,
                prompt=self.prompt,
                on_ticket=track,
                partial=not final,
                prefix=prefix or None,
                streaming=item.mels if from_start else None,
                audio_key=item.id if from_start else None,
            )
        except Exception as e:  # noqa: BLE001 - one stream's failure is reported to it, never raised further
            if not isinstance(e, EngineError):
                log.exception("live decode failed")
            code = "engine_error" if isinstance(e, EngineError) else "server_error"
            message = f"transcription failed: {type(e).__name__}: {e}"
            if final:
                await self.emit(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item.id,
                    content_index=0,
                    error={"type": "server_error", "code": code, "message": message},
                )
            else:
                await self.error(code, message, kind="server_error")
            return None
        finally:
            self.tickets.difference_update(tickets)

    # ----- housekeeping

    def _trim(self) -> None:
        """Keep the current item's audio, or enough recent audio for the VAD's look-back padding."""
        if self.item is not None:
            keep = self.item.start  # bounded: VAD cuts items at max_speech_s, max_item_s caps the others
        else:
            pad = (self.vad_options.speech_pad_ms if self.vad_options else 0) * SAMPLE_RATE // 1000
            keep = self.audio.end - pad - SAMPLE_RATE
        if keep - self.audio.start > 4 * SAMPLE_RATE:  # move memory in big steps, not per chunk
            self.audio.drop_before(keep)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _cancel(self, item: _Item) -> None:
        for ticket in item.tickets:
            ticket.cancel()  # frees its engine slot at the next step
        item.tickets.clear()
        if item.partial is not None:
            item.partial.cancel()

    async def close(self) -> None:
        """The client is gone: stop every decode of this stream and free its engine slots."""
        self.closed = True
        for ticket in list(self.tickets):
            ticket.cancel()  # frees its engine slot at the next step
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
        self.item = None


_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def _from_ga(session: dict[str, Any]) -> dict[str, Any]:
    """A GA-style transcription session ({"type": "transcription", "audio": {"input": {"format": {"type":
    "audio/pcm", "rate": 24000}, "transcription": ..., "turn_detection": ...}}}) in the beta fields above."""
    audio = session.get("audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("input"), dict):
        return session
    given, out = audio["input"], {k: v for k, v in session.items() if k not in ("audio", "type")}
    fmt = given.get("format")
    if isinstance(fmt, dict):
        name = fmt.get("type")
        out["input_audio_format"] = _GA_FORMATS.get(name, name) if isinstance(name, str) else name
        if "rate" in fmt:
            out["input_audio_sample_rate"] = fmt["rate"]
    elif fmt is not None:
        out["input_audio_format"] = fmt
    for ga, beta in (("transcription", "input_audio_transcription"), ("turn_detection", "turn_detection")):
        if ga in given:
            out[beta] = given[ga]
    return out


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE
