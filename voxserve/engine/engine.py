"""The batching engine: requests join and leave the running batch at every decode step.

One worker thread owns the device. Each turn it admits waiting windows into free slots (highest priority
first; their encoder pass and prefill run together), then runs one decode step over every active slot, then
retires the slots whose rows finished, so a freed slot takes a new request on the very next turn. With
``overlap_admissions`` (CUDA) an admission runs on a stream of its own while the turns go on stepping the running
rows; its rows join at the first turn after its device work is done, and the next admission waits for that.
Callers submit from any thread or event loop and get a :class:`Ticket`: a blocking ``result()``, or an async
iterator of token events followed by the :class:`WindowOutput`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import HOP_LENGTH
from ..model.whisper import Whisper
from . import audio_cache, threads
from .runner import Launched, PendingAdmission, Runner, slot_bytes
from .types import AudioWindow, EngineConfig, TokenEvent, WindowOutput, WindowRequest


class EngineError(RuntimeError):
    """The engine failed (e.g. a CUDA error) or was closed; requests it held end with this error."""


class Ticket:
    """A submitted request's handle: its token events and final output, from sync or async code."""

    def __init__(
        self,
        request: WindowRequest,
        listener: Callable[[Ticket, TokenEvent | WindowOutput | BaseException], None] | None = None,
    ) -> None:
        self.request = request
        # called (in the engine's thread) with this ticket and each event, the output or the error, instead of
        # queueing them for an event loop: how an engine process forwards them to its parent (engine/remote.py)
        self._listener = listener
        self._done = threading.Event()
        self._output: WindowOutput | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self.admitted_at: float | None = None  # time.monotonic() when it left the queue for a slot
        # False: the event loop gets only the final output, not an event per token (callers that only await
        # the output, such as live partials, spare the loop a wake-up per token at large batch sizes)
        self.token_events = True
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._events: asyncio.Queue | None = asyncio.Queue()
        except RuntimeError:  # submitted from plain threaded code: result() only
            self._loop, self._events = None, None

    @property
    def id(self) -> int:
        return self.request.id

    def cancel(self) -> None:
        """Stop decoding this request; its output ends with finish_reason "cancelled"."""
        self._cancelled = True

    def result(self, timeout: float | None = None) -> WindowOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._output is not None
        return self._output

    def __aiter__(self) -> AsyncIterator[TokenEvent | WindowOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent | WindowOutput]:
        if self._events is None:
            raise RuntimeError("iterate a ticket from the event loop it was submitted in")
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, WindowOutput):
                return

    async def wait(self) -> WindowOutput:
        """The final output, from async code (token events are skipped)."""
        async for item in self:
            if isinstance(item, WindowOutput):
                return item
        raise EngineError("request ended without output")

    # ----- called from the engine thread

    def _push(self, item: TokenEvent | WindowOutput | BaseException) -> None:
        if isinstance(item, TokenEvent) and not self.token_events:
            return
        if self._listener is not None:
            self._listener(self, item)
        elif self._loop is not None and self._events is not None:
            try:
                self._loop.call_soon_threadsafe(self._events.put_nowait, item)
            except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
                pass

    def _finish(self, output: WindowOutput | None, error: BaseException | None = None) -> None:
        self._output, self._error = output, error
        self._push(error if error is not None else output)  # type: ignore[arg-type]
        self._done.set()


@dataclass
class _Active:
    ticket: Ticket
    tokens: list[int] = field(default_factory=list)
    no_speech_prob: float = float("nan")
    language_token: int | None = None
    language_probs: tuple[float, ...] | None = None


class Engine:
    """Continuous batching over a fixed set of KV-cache slots on one device."""

    def __init__(
        self,
        model: Whisper,
        *,
        eot: int,
        no_timestamps: int,
        no_speech: int,
        timestamp_begin: int,
        blank_ids: list[int],
        config: EngineConfig | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model = model
        self.eot = eot
        self.n_slots = self._slot_count(model)
        owned = threads.engine_threads()
        self._cpu_threads = None
        if model.device.type == "cpu":
            self._cpu_threads = self.config.cpu_threads or owned or torch.get_num_threads()
        self.runner = Runner(
            model,
            n_slots=self.n_slots,
            eot=eot,
            no_timestamps=no_timestamps,
            no_speech=no_speech,
            timestamp_begin=timestamp_begin,
            blank_ids=blank_ids,
            buckets=self.config.buckets,
            cuda_graphs=self.config.cuda_graphs,
            max_encode=self.config.max_admit,
            compile=self.config.compile,
            cpu_step_threads=None if owned else self.config.cpu_step_threads,
            cpu_step_threads_rows=self.config.cpu_step_threads_rows,
            short_window_frames=self.config.short_window_frames,
            fused_step=self.config.fused_step,
            prefill_graphs=self.config.prefill_graphs,
            cross_kv=self.config.cross_kv,
            packed_encoder=self.config.packed_encoder,
            packed_prefill=self.config.packed_prefill,
            overlap_admissions=self.config.overlap_admissions,
        )
        lookahead = self.config.lookahead
        self.lookahead = model.device.type == "cuda" if lookahead is None else lookahead
        self._queue: list[tuple[int, int, Ticket]] = []  # heap of (priority, arrival, ticket)
        self._arrival = itertools.count()
        self._cv = threading.Condition()
        self._free = list(range(self.n_slots - 1, -1, -1))  # a stack: the lowest slot is reused first
        self._active: dict[int, _Active] = {}
        # taken off the queue, not yet active: a failure must reach them too
        self._admitting: list[Ticket] = []
        self._pending: PendingAdmission | None = None  # the admission in flight (at most one)
        self._closed = False
        self.failure: BaseException | None = None
        self.steps = 0
        self.steps_beside_admissions = 0  # decode steps launched while an admission was on the device
        self._admission_step = 0  # self.steps at the last admission
        self._ahead: tuple[Launched, list[_Active]] | None = None  # a step launched before the last was read
        self._thread = threading.Thread(target=self._run, name="voxserve-engine", daemon=True)
        if self._cpu_threads is None:
            self._thread.start()
            return
        # The worker sets its own thread count first thing; torch also keeps that count as the default for
        # threads started later, so once it has, put back the default this (creating) thread had.
        creator = torch.get_num_threads()
        self._worker_ready = threading.Event()
        self._thread.start()
        self._worker_ready.wait()
        torch.set_num_threads(creator)

    def _slot_count(self, model: Whisper) -> int:
        cfg = self.config
        if cfg.max_slots is not None:
            return cfg.max_slots
        if model.device.type != "cuda":
            return cfg.cpu_slots
        free, _ = torch.cuda.mem_get_info(model.device)
        need = slot_bytes(model, cfg.cross_kv)
        # the runner's audio cache (live utterances' audio, on CUDA) may grow to its capacity: the same budget
        allowed = max(int(free * cfg.memory_fraction) - audio_cache.CAPACITY, 0)
        fit = allowed // need
        if fit < 1:
            raise EngineError(
                f"not enough free GPU memory for one decoding slot ({need / 2**20:.0f} MiB needed, "
                f"{allowed / 2**20:.0f} MiB allowed: {cfg.memory_fraction:.0%} of "
                f"{free / 2**20:.0f} MiB free, less {audio_cache.CAPACITY / 2**20:.0f} MiB for the audio cache)"
            )
        return min(fit, max(cfg.buckets))

    # ----- public

    def submit(
        self,
        request: WindowRequest,
        *,
        token_events: bool = True,
        listener: Callable[[Ticket, TokenEvent | WindowOutput | BaseException], None] | None = None,
    ) -> Ticket:
        """Queue ``request``; its ticket gives its token events (unless ``token_events`` is False: only the
        output, as live partials wait for) and output, or hands each to ``listener`` (see Ticket)."""
        self._check_mel(request)
        ticket = Ticket(request, listener)
        ticket.token_events = token_events
        with self._cv:
            if self._closed or self.failure is not None:
                raise EngineError(
                    "the engine is closed" if self._closed else f"the engine failed: {self.failure}"
                )
            heapq.heappush(self._queue, (int(request.priority), next(self._arrival), ticket))
            self._cv.notify()
        return ticket

    def _check_mel(self, request: WindowRequest) -> None:
        # Checked here, in the caller's thread: a bad shape inside the worker would fail every request it holds.
        d, mel = self.model.dims, request.mel
        if isinstance(mel, AudioWindow):
            x, frames = mel.samples, mel.frames
            if not (isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype == np.float32):
                raise ValueError("an audio window's samples must be a 1-D float32 numpy array")
            if isinstance(frames, bool) or not isinstance(frames, int | np.integer):
                raise ValueError(f"an audio window's frames must be an integer, got {frames!r}")
            shape = f"{len(x)} samples for {frames} frames"
            fits = len(x) <= frames * HOP_LENGTH
        else:
            frames = mel.shape[-1] if mel.dim() == 2 else -1
            shape = str(tuple(mel.shape))
            fits = mel.dim() == 2 and mel.shape[0] == d.n_mels
        if not fits or frames < 2 or frames % 2 or frames > 2 * d.n_audio_ctx:
            raise ValueError(
                f"a window must be a mel [{d.n_mels}, frames] or at most frames * {HOP_LENGTH} samples, with an "
                f"even number of frames up to {2 * d.n_audio_ctx}; got {shape}"
            )

    def counters(self) -> dict[str, int]:
        """Decode steps run so far, and how many of them ran while an admission was on the device."""
        return {"steps": self.steps, "steps_beside_admissions": self.steps_beside_admissions}

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return len(self._active)

    def close(self) -> None:
        """Stop the worker; requests still queued or running end with EngineError."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- worker thread

    def _run(self) -> None:
        if self._cpu_threads is not None:
            # torch gives a thread its count lazily, copying the process default at the thread's first query or
            # parallel op: query first, or that copy would later undo this thread's own setting.
            torch.get_num_threads()
            torch.set_num_threads(self._cpu_threads)
            self._worker_ready.set()
        try:
            while True:
                with self._cv:
                    while not (self._closed or self._queue or self._active or self._pending is not None):
                        self._cv.wait()
                    if self._closed:
                        break
                    due = self._pending is None and self._admission_due(self.steps)
                    admit = self._take_admissions() if due else []
                if admit:
                    self._launch_admission(admit)
                # Overlapped, an admission's rows join once its device work is done and steps run meanwhile;
                # otherwise they join at once, as its device work runs before any later step anyway.
                pending = self._pending
                if pending is not None and (not self.runner.overlap or not self._active or pending.done()):
                    self._finish_admission()
                if self._active:
                    self._step()
        except BaseException as e:  # noqa: BLE001 - every held request must learn about the failure
            self.failure = e
            error = EngineError(f"engine failed: {type(e).__name__}: {e}")
            error.__cause__ = e
            self._fail_all(error)
            return
        try:
            if self._pending is not None and self._pending.ready is not None:
                self._pending.ready.synchronize()  # closed mid-admission: its inputs stay in use until it is done
        finally:
            self._fail_all(EngineError("the engine was closed before this request finished"))

    def _admission_due(self, steps: int) -> bool:
        """Whether waiting requests join the running batch before decode step number ``steps`` (under _cv):
        see EngineConfig.admit_wait_steps."""
        if not self._queue or not self._free:
            return False
        cfg = self.config
        if (
            not self._active
            or cfg.admit_wait_steps == 0
            or steps - self._admission_step >= cfg.admit_wait_steps
        ):
            return True
        ready = min(len(self._queue), len(self._free), cfg.max_admit)
        return ready >= cfg.admit_ratio * len(self._active)

    def _take_admissions(self) -> list[Ticket]:
        taken = []
        now = time.monotonic()
        while self._queue and len(taken) < min(len(self._free), self.config.max_admit):
            _, _, ticket = heapq.heappop(self._queue)
            deadline = ticket.request.deadline
            if ticket._cancelled or (deadline is not None and now > deadline):
                reason = "cancelled" if ticket._cancelled else "deadline"
                ticket._finish(WindowOutput((), 0.0, float("nan"), reason))
                continue
            taken.append(ticket)
        return taken

    def _launch_admission(self, tickets: list[Ticket]) -> None:
        now = time.monotonic()
        for ticket in tickets:
            ticket.admitted_at = now
        self._admitting = tickets
        slots = [self._free.pop() for _ in tickets]
        requests = [t.request for t in tickets]
        self._pending = self.runner.launch_admission(
            slots, [r.spec for r in requests], [r.mel for r in requests]
        )
        self._admission_step = self.steps

    def _finish_admission(self) -> None:
        assert self._pending is not None
        admitted = self.runner.finish_admission(self._pending)
        tickets, self._pending = self._admitting, None
        for ticket, a in zip(tickets, admitted, strict=True):
            state = _Active(ticket, [], a.no_speech_prob, a.language_token, a.language_probs)
            self._active[a.slot] = state
            self._record(a.slot, state, a.token, a.done, a.sum_logprob)
        self._admitting = []  # only now: a failure above must still reach every ticket of the admission

    def _step(self) -> None:
        """Collect one decode step and act on it. With ``lookahead`` the next step of the same rows is launched
        before this one's results are read, so the device works while the host handles them; its results for a
        row that has finished, or whose slot went to another request meanwhile, are dropped."""
        if self._pending is not None:
            self.steps_beside_admissions += 1
        launched = self._ahead or self._launch()
        self._ahead = None
        if self.lookahead:
            with self._cv:
                # (overlapped, an admission does not hold steps back: always launch ahead)
                admitting = not self.runner.overlap and self._admission_due(self.steps + 1)
            if not admitting:  # a waiting request joins the step after the next instead
                self._ahead = self._launch()
        step, states = launched
        tokens, done, sum_logprob = self.runner.collect(step)
        self.steps += 1
        now = time.monotonic()
        for slot, launched_for, token, finished, lp in zip(
            step.slots, states, tokens, done, sum_logprob, strict=True
        ):
            state = self._active.get(slot)
            if state is not launched_for:
                continue  # retired since the launch (its slot may serve another request now)
            request = state.ticket.request
            if state.ticket._cancelled:
                self._retire(slot, state, lp, "cancelled")
            elif request.deadline is not None and now > request.deadline and not finished:
                self._record(slot, state, token, False, lp)
                self._retire(slot, state, lp, "deadline")
            else:
                self._record(slot, state, token, finished, lp)
        if not self._active:
            self._ahead = None  # every row it ran has finished: nothing to read from it

    def _launch(self) -> tuple[Launched, list[_Active]]:
        slots = list(self._active)
        states = [self._active[s] for s in slots]
        sample = any(state.ticket.request.spec.temperature > 0 for state in states)
        return self.runner.launch(slots, sample), states

    def _record(self, slot: int, state: _Active, token: int, finished: bool, sum_logprob: float) -> None:
        if slot not in self._active:
            return
        if token != self.eot:
            state.ticket._push(TokenEvent(state.ticket.id, len(state.tokens), token))
            state.tokens.append(token)
        if finished:
            self._retire(slot, state, sum_logprob, "stop" if token == self.eot else "length")

    def _retire(self, slot: int, state: _Active, sum_logprob: float, reason: str) -> None:
        del self._active[slot]
        self._free.append(slot)
        self._free.sort(reverse=True)
        state.ticket._finish(
            WindowOutput(
                tuple(state.tokens),
                sum_logprob,
                state.no_speech_prob,
                reason,
                state.language_token,
                state.language_probs,
            )
        )

    def _fail_all(self, error: BaseException) -> None:
        with self._cv:
            queued = [t for _, _, t in self._queue]
            self._queue.clear()
        held = {id(t): t for t in queued + self._admitting + [s.ticket for s in self._active.values()]}
        # (emptied first: what a ticket's listener reads of the engine's load is then already true)
        self._active.clear()
        self._admitting = []
        for ticket in held.values():
            if not ticket._done.is_set():
                ticket._finish(None, error)
