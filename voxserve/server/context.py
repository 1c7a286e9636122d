"""Everything the routes share, built once per application and started / stopped by its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..config import N_FRAMES
from ..engine.remote import EngineProcess
from ..engine.types import EngineConfig, Priority
from ..live.service import LiveOptions
from .admission import Admission
from .chunking import Chunker
from .jobs import JobRunner, JobStore
from .metrics import ServerMetrics
from .registry import ModelRegistry
from .runtime import ModelLoader
from .service import Transcriber
from .settings import ServerSettings

log = logging.getLogger("voxserve.server")
T = TypeVar("T")


def default_loader(source: str, *, device: str | None = None, dtype: str | None = None) -> Any:
    from ..api import load_model

    return load_model(source, device=device, dtype=dtype)


@dataclass
class ServerContext:
    settings: ServerSettings
    metrics: ServerMetrics
    registry: ModelRegistry
    admission: Admission
    transcriber: Transcriber
    jobs: JobRunner
    # worker threads for blocking work (decoding audio, the seek loops); sized to the admission capacity
    pool: ThreadPoolExecutor
    ready: bool = False
    shutting_down: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # for mounted routers (e.g. realtime) to keep state

    @classmethod
    def build(cls, settings: ServerSettings, *, loader: ModelLoader | None = None) -> ServerContext:
        metrics = ServerMetrics()
        # realtime short windows: warm-up captures the encoder at their lengths too
        live = LiveOptions(
            short_windows=settings.realtime_short_windows,
            window_buckets_s=tuple(settings.realtime_window_buckets_s),
        )
        engine_config = EngineConfig(
            max_slots=settings.engine_slots,
            short_window_frames=live.short_window_frames(N_FRAMES),
            cross_kv=settings.engine_cross_kv,
            admit_wait_steps=settings.engine_admit_wait_steps,
            admit_ratio=settings.engine_admit_ratio,
            max_admit=settings.engine_max_admit,
            packed_encoder=settings.engine_packed_encoder,
            packed_prefill=settings.engine_packed_prefill,
            overlap_admissions=settings.engine_overlap_admissions,
        )
        registry = ModelRegistry(
            settings.models,
            settings.default_model,
            loader=loader or default_loader,
            device=settings.device,
            dtype=settings.dtype,
            engine_config=engine_config,
            metrics=metrics,
            memory_budget=settings.memory_budget_bytes,
            cpu_fallback=settings.cpu_fallback,
            engine_process=settings.engine_process,
        )
        limits = {p: settings.queue_limits[p.name.lower()] for p in Priority}
        admission = Admission(settings.max_concurrency, limits)
        transcriber = Transcriber(
            metrics, Chunker(), settings.split_above_seconds, pool_size=settings.engine_slots or 8
        )
        pool = ThreadPoolExecutor(
            max_workers=settings.max_concurrency + settings.job_workers, thread_name_prefix="voxserve-req"
        )
        ctx = cls(settings, metrics, registry, admission, transcriber, None, pool)  # type: ignore[arg-type]
        ctx.jobs = JobRunner(JobStore(settings.jobs_db, settings.jobs_dir), ctx)
        ctx._register_live_metrics()
        return ctx

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def start(self) -> None:
        if self.settings.preload:
            await self.registry.get(self.settings.default_model)
        self.ready = True
        await self.jobs.start()

    async def stop(self) -> None:
        self.shutting_down = True
        self.ready = False
        await self.jobs.stop()
        self.transcriber.close()
        await asyncio.get_running_loop().run_in_executor(None, self.registry.close)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _register_live_metrics(self) -> None:
        m, reg, adm = self.metrics, self.registry, self.admission

        def engines() -> list[tuple[str, str, Any]]:
            out = []
            for alias, rt in list(reg.loaded.items()):
                for e in (rt.primary, rt.fallback):
                    if e is not None:
                        out.append((alias, e.whisper.device.type, e.engine))
            return out

        m.add_live(
            "voxserve_queue_depth",
            "Requests waiting for a decoding turn, by priority",
            ["priority"],
            lambda: [(p.name.lower(), n) for p, n in adm.waiting.items()],
        )
        m.add_live(
            "voxserve_requests_decoding", "Requests holding a decoding turn", [], lambda: [(adm.running,)]
        )
        m.add_live(
            "voxserve_engine_active_slots",
            "KV-cache slots decoding a window",
            ["model", "device"],
            lambda: [(a, d, e.active) for a, d, e in engines()],
        )
        m.add_live(
            "voxserve_engine_queued_windows",
            "Windows waiting for an engine slot",
            ["model", "device"],
            lambda: [(a, d, e.queued) for a, d, e in engines()],
        )
        m.add_live(
            "voxserve_engine_healthy",
            "1 while the model's primary engine works, 0 after it failed",
            ["model"],
            lambda: [(a, int(rt.healthy)) for a, rt in list(reg.loaded.items())],
        )
        m.add_live(
            "voxserve_model_memory_bytes",
            "Estimated memory of each loaded model and its engines",
            ["model"],
            lambda: [(a, rt.memory_bytes()) for a, rt in list(reg.loaded.items())],
        )
        m.add_live("voxserve_jobs", "Jobs by state", ["state"], lambda: self.jobs.counts().items())

        def gpu_memory() -> list[tuple[str, int]]:
            if not torch.cuda.is_available():
                return []
            held = {f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}
            for _, _, engine in engines():  # engine processes: as each last reported
                name = engine.info["device"] if isinstance(engine, EngineProcess) else ""
                if name.startswith("cuda"):
                    key = name if ":" in name else f"{name}:0"
                    held[key] = held.get(key, 0) + engine.device_bytes
            return list(held.items())

        m.add_live(
            "voxserve_gpu_memory_bytes",
            "Memory the server holds on each GPU (allocated by tensors; its engine processes' as each last "
            "reported)",
            ["device"],
            gpu_memory,
        )
