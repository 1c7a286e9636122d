"""An engine in a process of its own, used through the same calls as an in-process :class:`Engine`.

Why: an in-process engine's worker thread and the event loop that serves the streams (sessions, VAD, base64,
agreement, JSON) share one GIL. On the GPU machine at 400 live streams the loop was busy 43-48% of a core beside
an engine thread launching ~15 admissions (21 ms of host time each) and ~50 steps a second, and every
GIL-releasing call of one hands the GIL to the other for up to the switch interval (bench/README.md, "The GIL
between the event loop and the engine's thread"). In a process of its own the engine's thread has a GIL to
itself; the caller pays for pickling each request and result through two pipes.

What crosses: a request's row spec, priority, deadline (``time.monotonic`` is system-wide on Linux) and window.
A log-mel crosses as a numpy array. A keyed audio window (a live utterance from its first sample, AudioWindow.key)
sends only the samples its key gained since its last window, as the engine's audio cache does towards the device:
the engine's process keeps each key's samples, so a partial every 0.2 s sends ~0.2 s of audio, not the utterance.
Back come token events (only for requests that want them), outputs and errors, several per pipe write.

Use :class:`EngineProcess` (``factory`` builds the engine in the new process; it must be picklable: a
module-level function, or a functools.partial of one) where an Engine is used: ``submit``, ``counters``,
``n_slots``, ``failure``, ``queued``, ``active``, ``close``; tickets carry ``admitted_at``. The factory loads the
model in the engine's process; the caller needs only its dims and tokenizer (the stream bench builds it on the
meta device). An ``observer`` hears the engine's encoder passes and decode steps (engine/observe.py): the
engine's process gathers them and sends them with its next results, so they cost no pipe write of their own.
Used by ``voxserve bench --streams --engine-process`` and ``voxserve serve --engine-process``.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from ..heap import freeze_alive
from .audio_cache import CAPACITY
from .engine import Engine, EngineError, Ticket
from .observe import Observer, observe_engine
from .types import AudioWindow, Priority, TokenEvent, WindowOutput, WindowRequest

log = logging.getLogger("voxserve.engine")

MAX_KEYS = 4096  # live utterances whose audio the engine's process keeps (oldest forgotten past it)
KEY_BYTES = (
    CAPACITY  # and their samples' bytes at most, as the device's audio cache (oldest forgotten past it)
)
_PIPE_BYTES = 1 << 20  # each pipe's kernel buffer, where Linux allows (fewer wake-ups of the sender)
# Errors a request's ticket raises as their own type; any other comes back as a RuntimeError naming it.
# EngineError means the engine itself failed or closed (callers may fail over), never one bad request.
_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "EngineError": EngineError,
}


class EngineProcess:
    """An engine built by ``factory()`` in a spawned process (see the module). ``info`` holds what the engine
    reported when it was ready (``n_slots``, ``device``, ``audio_cache``, ``overlap_admissions``); ``queued``,
    ``active`` and ``device_bytes`` are its queue, busy slots and GPU memory as it last reported them (with each
    batch of results it sends).

    The caller's threads never write to a pipe: ``submit`` pickles its message and queues the bytes for a sender
    thread, so a slow or stopped engine process cannot block an event loop."""

    def __init__(
        self,
        factory: Callable[[], Engine],
        *,
        observer: Observer | None = None,
        start_timeout_s: float = 900.0,
    ) -> None:
        try:
            pickle.dumps(factory)  # spawn sends it pickled: say why it cannot, before anything is started
        except Exception as e:  # noqa: BLE001 - pickling raises PicklingError, AttributeError, TypeError...
            raise EngineError(
                f"the engine's factory cannot be sent to its process ({type(e).__name__}: {e}); use a "
                "module-level function or a functools.partial of one"
            ) from None
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        requests_in, self._requests = ctx.Pipe(duplex=False)
        self._events, events_out = ctx.Pipe(duplex=False)
        for conn in (self._requests, events_out):
            _widen(conn)
        self._process = ctx.Process(
            target=_serve,
            args=(factory, requests_in, events_out, observer is not None),
            name="voxserve-engine",
            daemon=True,
        )
        self._process.start()
        requests_in.close()  # the parent's copies: the child's exit must end the parent's reads
        events_out.close()
        self._lock = threading.Lock()  # tickets, calls, keys and the closed / failed state
        self._tickets: dict[int, _RemoteTicket] = {}
        self._calls: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._call_ids = itertools.count()
        self._keys: OrderedDict[Hashable, list[int]] = OrderedDict()  # key -> [key id, samples sent]
        self._key_samples = 0  # samples sent for the keys in _keys
        self._key_ids = itertools.count()
        self.failure: BaseException | None = None
        self._observer = observer
        self.queued = self.active = 0
        self.device_bytes = 0  # GPU memory its tensors hold (CUDA), as last reported
        self._closed = False
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        try:
            self.info = self._wait_ready(start_timeout_s)
        except BaseException:
            self._stop_process()
            self._requests.close()
            self._events.close()
            raise
        self.n_slots: int = self.info["n_slots"]
        self._sender = threading.Thread(target=self._write, name="voxserve-engine-requests", daemon=True)
        self._reader = threading.Thread(target=self._read, name="voxserve-engine-events", daemon=True)
        self._sender.start()
        self._reader.start()

    def _wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        try:
            while not self._events.poll(0.5):
                if not self._process.is_alive():
                    break  # its end of the pipe is closed: recv below says so
                if time.monotonic() > deadline:
                    raise EngineError(f"the engine process was not ready after {timeout_s:g} s")
            kind, payload = self._events.recv()
        except (EOFError, OSError):
            self._process.join(10)
            raise EngineError(
                f"the engine process exited while starting (code {self._process.exitcode})"
            ) from None
        if kind != "ready":
            raise EngineError(f"the engine process could not start: {payload}")
        return payload

    # ----- the Engine's calls

    def submit(
        self,
        request: WindowRequest,
        *,
        token_events: bool = True,
        listener: Callable[[Any], None] | None = None,
    ) -> Ticket:
        """As Engine.submit; the window's checks run in the engine's process and a bad window's error comes
        back through the ticket."""
        if listener is not None:
            raise ValueError("an engine process takes no listener")
        mel = request.mel
        if not isinstance(mel, AudioWindow) and mel.device.type != "cpu":
            raise ValueError("an engine process takes log-mels on the CPU")
        ticket = _RemoteTicket(request, self)
        ticket.token_events = token_events
        with self._lock:
            self._check_open()
            window, commit = self._window(mel)
            data = _dumps(
                (
                    "submit",
                    request.id,
                    window,
                    request.spec,
                    int(request.priority),
                    request.deadline,
                    token_events,
                )
            )
            # Only now, with the message made: a request that cannot be sent changes nothing.
            forgets = commit()
            self._tickets[request.id] = ticket
        for key_id in forgets:
            self._outbox.put(_dumps(("forget", key_id)))
        self._outbox.put(data)
        return ticket

    def counters(self, timeout_s: float = 30.0) -> dict[str, int]:
        """The engine's Engine.counters(), asked of its process."""
        done, box = threading.Event(), []
        with self._lock:
            self._check_open()
            call = next(self._call_ids)
            self._calls[call] = (done, box)
        self._outbox.put(_dumps(("counters", call)))
        if not done.wait(timeout_s):
            with self._lock:
                self._calls.pop(call, None)
            raise EngineError(f"the engine process did not answer within {timeout_s:g} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def close(self) -> None:
        """Close the engine (requests still held end with EngineError) and wait for its process (killed if it
        does not exit within a minute)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.put(_dumps(("close",)))
        self._outbox.put(None)
        self._process.join(60)
        self._stop_process()
        self._reader.join(10)
        self._sender.join(10)
        self._requests.close()
        self._events.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed or self.failure is not None:
            raise EngineError(
                "the engine is closed" if self._closed else f"the engine failed: {self.failure}"
            )

    def _stop_process(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(10)

    # ----- requests out

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            if self._closed or self.failure is not None:
                return  # the ticket ends with the closing or the failure instead
        self._outbox.put(_dumps(("cancel", request_id)))

    def _window(self, mel: torch.Tensor | AudioWindow) -> tuple[tuple, Callable[[], list[int]]]:
        """What crosses for a window (under the lock; see the module): ("mel", array), ("audio", samples,
        frames), or ("keyed", key id, first sample, new samples, frames, last); and the function that records
        it as sent, returning the key ids the engine's process is to forget."""
        if not isinstance(mel, AudioWindow):
            return ("mel", mel.detach().to(torch.float32).numpy()), list
        if mel.key is None:
            return ("audio", mel.samples, mel.frames), list
        key, n = mel.key, len(mel.samples)
        entry = self._keys.get(key)
        grows = entry is not None and n >= entry[1]  # else a new key, or one that did not grow: sent anew
        key_id, start = (entry[0], entry[1]) if grows else (next(self._key_ids), 0)

        def commit() -> list[int]:
            forgets = []
            if entry is not None:
                self._key_samples -= entry[1]
                if not grows:
                    forgets.append(entry[0])
                del self._keys[key]
            if not mel.last:  # a key's last window drops it in the engine's process too
                self._keys[key] = [key_id, n]
                self._key_samples += n
            while self._keys and (len(self._keys) > MAX_KEYS or 4 * self._key_samples > KEY_BYTES):
                _, (oldest, sent) = self._keys.popitem(last=False)
                self._key_samples -= sent
                forgets.append(oldest)
            return forgets

        return ("keyed", key_id, start, mel.samples[start:], mel.frames, mel.last), commit

    def _write(self) -> None:
        """The sender thread: queued messages to the pipe, in order."""
        while (data := self._outbox.get()) is not None:
            try:
                self._requests.send_bytes(data)
            except (OSError, ValueError):
                return  # the process is gone: the reader fails what it held

    # ----- events in (the reader thread)

    def _read(self) -> None:
        error: EngineError | None = None
        try:
            while True:
                for message in self._events.recv():
                    self._handle(message)
        except (EOFError, OSError):
            pass
        except BaseException as e:  # noqa: BLE001 - no request may wait for a reader that is gone
            error = EngineError(f"reading the engine process's results failed: {type(e).__name__}: {e}")
        finally:
            self._process.join(5)
            if error is None:
                error = (
                    EngineError("the engine was closed before this request finished")
                    if self._closed
                    else EngineError(f"the engine process exited (code {self._process.exitcode})")
                )
            self._fail_pending(error)
            if self._process.is_alive():
                self._process.kill()  # it can no longer be heard

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "event":
            ticket = self._tickets.get(message[1])
            if ticket is not None:
                ticket._push(message[2])
        elif kind in ("done", "error"):
            with self._lock:
                ticket = self._tickets.pop(message[1], None)
            if ticket is not None:
                if kind == "done":
                    ticket.admitted_at = message[3]
                    ticket._finish(message[2])
                else:
                    ticket._finish(None, _error(*message[2]))
        elif kind == "counters":
            with self._lock:
                done, box = self._calls.pop(message[1], (None, None))
            if done is not None:
                box.append(message[2])
                done.set()
        elif kind == "observe":
            if self._observer is not None:
                for name, value in message[1]:
                    try:
                        self._observer(name, value)
                    except Exception:  # noqa: BLE001 - a metrics bug must not fail the requests
                        log.exception("the engine process's observer failed")
        elif kind == "load":
            self.queued, self.active, self.device_bytes = message[1], message[2], message[3]
        elif kind == "failed":  # the engine failed there: its requests' errors came before this
            with self._lock:
                if self.failure is None:
                    self.failure = EngineError(message[1])

    def _fail_pending(self, error: EngineError) -> None:
        with self._lock:
            if not self._closed and self.failure is None:
                self.failure = error
            self.queued = self.active = self.device_bytes = 0  # nothing runs there any more
            tickets, self._tickets = self._tickets, {}
            calls, self._calls = self._calls, {}
        for ticket in tickets.values():
            if not ticket._done.is_set():
                ticket._finish(None, error)
        for done, box in calls.values():
            box.append(error)
            done.set()


class _RemoteTicket(Ticket):
    """A request's ticket in the caller's process; cancelling tells the engine's process."""

    def __init__(self, request: WindowRequest, owner: EngineProcess) -> None:
        super().__init__(request)
        self._owner = owner

    def cancel(self) -> None:
        if not self._cancelled and not self._done.is_set():
            self._owner._cancel(self.id)
        super().cancel()


def _dumps(message: tuple) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _widen(conn: Any) -> None:
    try:
        fcntl.fcntl(conn.fileno(), 1031, _PIPE_BYTES)  # F_SETPIPE_SZ (Linux)
    except OSError:
        pass  # the kernel's limit: the default buffer then


def _error(kind: str, text: str) -> Exception:
    """An error from the engine's process, as its own type where the caller may tell them apart."""
    if kind in _ERRORS:
        return _ERRORS[kind](text)
    return RuntimeError(f"{kind}: {text}")


# ----- the engine's process


def _serve(factory: Callable[[], Engine], requests: Any, events: Any, observed: bool) -> None:
    """The engine's process: build the engine, then take requests until "close" or the parent's end.
    ``observed``: the parent wants the engine's encoder passes and steps (engine/observe.py)."""
    # Ctrl-C and a SIGTERM to the process group are the parent's to handle: it finishes what it holds, then
    # closes this engine (or its exit ends the requests pipe, which ends this process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine = factory()
        ready = ("ready", engine_info(engine))
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        events.send(("failed", f"{type(e).__name__}: {e}"))
        return
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    observations: collections.deque | None = None  # (name, value), sent with the next results
    if observed:
        observations = collections.deque()
        observe_engine(engine, lambda name, value: observations.append((name, value)))
    # The model, its graphs and torch's objects live as long as this process: out of the collector's sight, as
    # a serving process's are (heap.py), so a full collection does not stop the engine's thread for them.
    freeze_alive()
    events.send(ready)
    sender = threading.Thread(
        target=_forward, args=(outbox, events, engine, observations), name="voxserve-engine-out", daemon=True
    )
    sender.start()
    requests_held = _Held(engine, outbox)
    audio = _KeyedAudio()
    try:
        while True:
            try:
                message = requests.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            kind = message[0]
            if kind == "submit":
                requests_held.submit(message, audio)
            elif kind == "cancel":
                requests_held.cancel(message[1])
            elif kind == "forget":
                audio.forget(message[1])
            elif kind == "counters":
                outbox.put(("counters", message[1], engine.counters()))
            elif kind == "close":
                break
    finally:
        engine.close()  # held requests end with EngineError, forwarded before the sender stops
        outbox.put(None)
        sender.join()
        events.close()


class _Held:
    """The engine process's requests in flight, by id (for cancelling), and how their results leave."""

    def __init__(self, engine: Engine, outbox: Any) -> None:
        self.engine, self.outbox = engine, outbox
        self._lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}
        self._finished: set[int] = set()  # finished before submit() had entered them
        self._failure_sent = False

    def submit(self, message: tuple, audio: _KeyedAudio) -> None:
        _, request_id, window, spec, priority, deadline, token_events = message
        try:
            request = WindowRequest(audio.window(window), spec, Priority(priority), deadline, request_id)
            ticket = self.engine.submit(request, token_events=token_events, listener=self._on_item)
        except Exception as e:  # noqa: BLE001 - a bad request fails alone
            self._send_error(request_id, e)
            return
        with self._lock:
            if request_id in self._finished:
                self._finished.discard(request_id)
            else:
                self._tickets[request_id] = ticket

    def cancel(self, request_id: int) -> None:
        with self._lock:
            ticket = self._tickets.get(request_id)
        if ticket is not None:
            ticket.cancel()

    def _on_item(self, ticket: Ticket, item: TokenEvent | WindowOutput | BaseException) -> None:
        """The engine's thread: a request's event, output or error."""
        request_id = ticket.id
        if isinstance(item, TokenEvent):
            self.outbox.put(("event", request_id, item))
            return
        with self._lock:
            if self._tickets.pop(request_id, None) is None:
                self._finished.add(request_id)
        if isinstance(item, BaseException):
            self._send_error(request_id, item)
        else:
            self.outbox.put(("done", request_id, item, ticket.admitted_at))  # None: never admitted

    def _send_error(self, request_id: int, error: BaseException) -> None:
        self.outbox.put(("error", request_id, (type(error).__name__, str(error))))
        failure = self.engine.failure
        if (
            failure is not None and not self._failure_sent
        ):  # the engine itself failed: the parent is told once
            self._failure_sent = True
            self.outbox.put(("failed", f"engine failed: {type(failure).__name__}: {failure}"))


def _forward(outbox: Any, events: Any, engine: Engine, observations: collections.deque | None) -> None:
    """Send what the engine's thread put in ``outbox``, everything waiting in one write, led by the engine's
    queue and busy slots as they are after it (so the parent knows them before it hands out the results) and the
    observations gathered meanwhile. Should a write fail other than by the parent being gone, the process exits:
    its parent then fails what it held."""
    while True:
        item = outbox.get()
        batch = []
        while item is not None:
            batch.append(item)
            try:
                item = outbox.get_nowait()
            except queue.Empty:
                break
        if batch:
            lead: list[tuple] = [("load", engine.queued, engine.active, _device_bytes(engine))]
            if observations:
                lead.append(("observe", [observations.popleft() for _ in range(len(observations))]))
            batch = lead + batch
            try:
                events.send(batch)
            except (OSError, ValueError):
                return  # the parent is gone
            except BaseException as e:  # noqa: BLE001
                print(f"voxserve engine process: sending results failed: {e!r}", file=sys.stderr, flush=True)
                os._exit(70)
        if item is None:
            return


def _device_bytes(engine: Engine) -> int:
    """GPU memory the process's tensors hold on the engine's device (0 on the CPU)."""
    device = engine.runner.device
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def engine_info(engine: Engine | EngineProcess) -> dict[str, Any]:
    """What an engine runs with, for a result file: its slots, device, audio cache and overlapped admissions (an
    engine process's as it reported them when it was ready)."""
    if isinstance(engine, EngineProcess):
        return dict(engine.info)
    runner = engine.runner
    return {
        "n_slots": engine.n_slots,
        "device": str(runner.device),
        "audio_cache": runner.audio_cache is not None,
        "overlap_admissions": bool(runner.overlap),
    }


class _KeyedAudio:
    """Each key's samples so far, in the engine's process, rebuilt from the samples each window adds."""

    def __init__(self) -> None:
        self._buffers: dict[int, list[Any]] = {}  # key id -> [buffer, samples in it]

    def window(self, window: tuple) -> torch.Tensor | AudioWindow:
        kind = window[0]
        if kind == "mel":
            return torch.from_numpy(window[1])
        if kind == "audio":
            return AudioWindow(window[1], window[2])
        _, key_id, start, new, frames, last = window
        entry = self._buffers.get(key_id)
        if start == 0:
            entry = self._buffers[key_id] = [np.empty(max(len(new), 1 << 15), np.float32), 0]
        elif entry is None or entry[1] != start:
            raise RuntimeError(f"audio for key {key_id} from sample {start} does not follow what was sent")
        buffer, n = entry
        end = n + len(new)
        if end > len(buffer):  # a new buffer: windows already made keep views of the old one
            grown = np.empty(max(end, 2 * len(buffer)), np.float32)
            grown[:n] = buffer[:n]
            buffer = entry[0] = grown
        buffer[n:end] = new
        entry[1] = end
        if last:
            del self._buffers[key_id]
        # Later samples are written past ``end`` only, so this view never changes (AudioWindow's contract).
        return AudioWindow(buffer[:end], frames, key_id, last)

    def forget(self, key_id: int) -> None:
        self._buffers.pop(key_id, None)
