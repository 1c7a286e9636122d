"""The stream bench against the whole server (``--transport server``): ``voxserve serve``'s own application
(its model registry, ``ModelRuntime``, metrics and realtime route; with ``--engine-process`` the engine in a
process of its own, as ``voxserve serve --engine-process`` runs it) under uvicorn in this process, the callers in
client processes over real WebSockets as with ``--transport ws`` (voxserve/live/wsbench.py).

What differs from a deployed server is only what makes the work comparable: the model comes from the plan
(random weights at its dimensions, or its checkpoint), decodes have the plan's fixed length per second of audio,
and with ``--vad oracle`` a caller's speech events come from its track's known utterance bounds.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..api import WhisperModel
from ..bench.weights import BenchError
from . import wsbench
from .callers import Track
from .service import LiveOptions, LiveService, LiveStats

if TYPE_CHECKING:
    from .streambench import StreamBenchPlan

ALIAS = "bench"  # the one model the bench's server serves
START_TIMEOUT_S = 1800.0  # loading, warming up and capturing large-v3's graphs, in one or two processes
DRAIN_TIMEOUT_S = 60.0  # for the server to close the sessions of callers that have left


def bench_model(
    plan: StreamBenchPlan, source: str, *, device: str | None = None, dtype: str | None = None
) -> Any:
    """The bench server's model loader (module level: an engine process gets it pickled): the plan's model on
    ``device``, whatever ``source`` and ``dtype`` say (the plan's precision decides)."""
    from .streambench import _load_whisper

    return _load_whisper(plan, torch.device(device or plan.device), lambda *_: None)[0]


class ServedBench:
    """The server, started (its model loaded and warmed up) by the constructor; :meth:`run` measures ``n``
    callers, :meth:`close` stops it. Errors are BenchErrors."""

    def __init__(self, plan: StreamBenchPlan, tracks: list[Track], options: LiveOptions) -> None:
        from ..server.app import create_app
        from ..server.realtime import realtime_router

        self.plan, self.tracks = plan, tracks
        self._jobs = tempfile.TemporaryDirectory(prefix="voxserve-bench-server-")
        oracle = wsbench.oracle_hook(tracks, plan.vad == "oracle")

        def hook(session: Any, ws: Any) -> None:
            session.service.stats.keep = True  # the route's service keeps no figures by default (a server's)
            oracle(session, ws)

        self.app = create_app(
            _settings(plan, options, Path(self._jobs.name)),
            loader=functools.partial(bench_model, plan),
            realtime=lambda ctx: realtime_router(ctx, options=options, api_keys=[], on_session=hook),
            freeze_heap=True,  # as `voxserve serve` runs
        )
        self.ctx = self.app.state.ctx
        try:
            self._server, self._thread, self.port = wsbench.serve_app(self.app, START_TIMEOUT_S)
        except RuntimeError as e:
            self._jobs.cleanup()
            raise BenchError(str(e)) from None
        self.runtime = self.ctx.registry.loaded[ALIAS]  # preloaded by the start-up (settings.preload)

    @property
    def whisper(self) -> WhisperModel:
        return self.runtime.whisper

    @property
    def engine(self) -> Any:
        return self.runtime.current.engine

    def run(
        self, n: int, offsets: list[float], language: str | None, at_start: Callable[[], None] | None = None
    ) -> tuple[list[float], int, list[float]]:
        """``n`` callers (the first ``n`` tracks) from client processes: (latencies, chunks without text,
        sender lags), as wsbench.run_clients; :meth:`stats` then holds the server's figures for them alone (the
        run ends once the server has closed every session)."""
        service = self._service()
        if (
            service is not None
        ):  # fresh figures for each run (the route makes the service at its first session)
            service.stats = LiveStats(keep=True, observe=service.stats.observe)
        measured = wsbench.run_clients(
            self.port, self.tracks[:n], self.plan.chunk_ms, offsets, language, self.plan.warmup_s, at_start
        )
        service = self._service()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while service is not None and service.open_streams and time.monotonic() < deadline:
            time.sleep(0.05)  # the callers are gone; the server finishes their sessions
        if service is not None and service.open_streams:
            raise BenchError(
                f"{service.open_streams} sessions still open {DRAIN_TIMEOUT_S:g} s after the callers left"
            )
        if not self.runtime.healthy:
            raise BenchError(
                f"the server's engine failed during the run: {self.runtime.primary.engine.failure}"
            )
        return measured

    def stats(self) -> LiveStats:
        service = self._service()
        if service is None:
            raise BenchError("no caller reached the server's realtime route")
        return service.stats

    def _service(self) -> LiveService | None:
        return self.ctx.extras.get("live", {}).get(ALIAS)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=300)  # (its shutdown closes the engine, an engine process too)
        if self._thread.is_alive():
            raise BenchError("the benchmark's server did not stop within 300 s")
        self._jobs.cleanup()


def _settings(plan: StreamBenchPlan, options: LiveOptions, jobs: Path) -> Any:
    """The server's settings from the plan, and from nothing else: no VOXSERVE_* variable of the environment
    changes the server under test (an API key there would refuse every caller)."""
    from ..server.settings import ServerSettings

    class BenchSettings(ServerSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **sources: Any) -> tuple:
            return (init_settings,)

    return BenchSettings(
        models={ALIAS: ALIAS},
        default_model=ALIAS,
        device=plan.device,
        engine_slots=plan.slots,
        engine_cross_kv=plan.cross_kv,
        engine_admit_wait_steps=plan.admit_wait_steps,
        engine_admit_ratio=plan.admit_ratio,
        engine_max_admit=plan.max_admit,
        engine_packed_encoder=plan.packed_encoder,
        engine_packed_prefill=plan.packed_prefill,
        engine_overlap_admissions=plan.overlap_admissions,
        engine_process=plan.engine_process,
        cpu_fallback=False,  # a failed engine ends the run (ServedBench.run) instead of measuring a CPU engine
        preload=True,
        vad_model=plan.vad_model,
        realtime_short_windows=options.short_windows,
        realtime_window_buckets_s=options.window_buckets_s,
        realtime_mels=options.mels,
        jobs_db=jobs / "jobs.sqlite3",
        jobs_dir=jobs / "jobs",
    )
