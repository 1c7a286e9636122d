"""Models by alias: loaded on first use, evicted least-recently-used under a memory budget.

A request holds a lease on its model (``async with registry.lease(alias) as runtime``); a leased model is never
evicted, so a budget too small for the models in use at once makes the new request wait for none and fail
with 503 instead of unloading a model under someone's feet. Loading runs in a worker thread, one load per alias
at a time; other aliases keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..engine.types import EngineConfig
from ..heap import release_frozen
from .errors import APIError
from .metrics import ServerMetrics
from .runtime import ModelLoader, ModelRuntime

log = logging.getLogger("voxserve.server")

OPENAI_DEFAULT_NAMES = ("whisper-1",)  # OpenAI's model names, answered by the default alias


class ModelRegistry:
    def __init__(
        self,
        sources: dict[str, str],
        default: str,
        *,
        loader: ModelLoader,
        device: str | None,
        dtype: str | None,
        engine_config: EngineConfig,
        metrics: ServerMetrics,
        memory_budget: int | None = None,
        cpu_fallback: bool = True,
        engine_process: bool = False,
    ) -> None:
        self.sources, self.default = dict(sources), default
        self.loader, self.device, self.dtype = loader, device, dtype
        self.engine_config, self.metrics = engine_config, metrics
        self.memory_budget, self.cpu_fallback = memory_budget, cpu_fallback
        self.engine_process = engine_process
        # called with an evicted model's alias (under the guard), so that what else holds it lets it go (the
        # realtime route's live service per model)
        self.on_evict: list[Callable[[str], None]] = []
        self.loaded: OrderedDict[str, ModelRuntime] = OrderedDict()  # least recently used first
        self._leases: dict[str, int] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._guard = threading.Lock()

    def resolve(self, name: str | None) -> str:
        """The alias a request's ``model`` field names; 404 for an unknown one."""
        if not name or name in OPENAI_DEFAULT_NAMES:
            return self.default
        if name not in self.sources:
            raise APIError(
                404,
                f"model {name!r} does not exist; available: {', '.join(sorted(self.sources))}",
                code="model_not_found",
                param="model",
            )
        return name

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[ModelRuntime]:
        alias = self.resolve(name)
        runtime = await self._get(alias, lease=True)
        try:
            yield runtime
        finally:
            with self._guard:
                self._leases[alias] -= 1

    async def get(self, alias: str) -> ModelRuntime:
        return await self._get(alias, lease=False)

    async def _get(self, alias: str, *, lease: bool) -> ModelRuntime:
        """The loaded runtime of ``alias`` (loaded now if need be); with ``lease``, leased under the same hold of
        the guard that found it, so that a load in a worker thread cannot evict it in between."""
        with self._guard:
            if alias in self.loaded:
                self.loaded.move_to_end(alias)
                return self._taken(alias, lease)
        lock = self._load_locks.setdefault(alias, asyncio.Lock())
        async with lock:
            with self._guard:
                if alias in self.loaded:
                    return self._taken(alias, lease)
            runtime = await asyncio.to_thread(self._load, alias)
            with self._guard:
                self.loaded[alias] = runtime
                return self._taken(alias, lease)

    def _taken(self, alias: str, lease: bool) -> ModelRuntime:
        """(under _guard) ``alias``'s runtime, its lease count raised when ``lease``."""
        if lease:
            self._leases[alias] = self._leases.get(alias, 0) + 1
        return self.loaded[alias]

    def _load(self, alias: str) -> ModelRuntime:
        source = self.sources[alias]
        log.info("loading model %r from %s", alias, source)
        whisper = self.loader(source, device=self.device, dtype=self.dtype)
        runtime = ModelRuntime(
            alias,
            source,
            whisper,
            loader=self.loader,
            engine_config=self.engine_config,
            metrics=self.metrics,
            cpu_fallback=self.cpu_fallback,
            engine_process=self.engine_process,
            dtype=self.dtype,
        )
        try:
            self._make_room(alias, runtime.memory_bytes())
            runtime.warm_up()
        except BaseException:
            runtime.close()
            raise
        self.metrics.model_loads.labels(alias).inc()
        return runtime

    def _make_room(self, alias: str, needed: int) -> None:
        if self.memory_budget is None:
            return
        evicted: list[ModelRuntime] = []
        try:
            with self._guard:
                held = {a: r.memory_bytes() for a, r in self.loaded.items()}
                used = sum(held.values())
                idle = [a for a in self.loaded if self._leases.get(a, 0) == 0]  # least recently used first
                freeable = sum(held[a] for a in idle)
                if used - freeable + needed > self.memory_budget:  # evicting cannot make the room: evict none
                    raise APIError(
                        503,
                        f"model {alias!r} needs {needed / 2**20:.0f} MiB but the memory budget "
                        f"({self.memory_budget / 2**20:.0f} MiB) is held by models in use; retry later",
                        code="memory_budget",
                        headers={"Retry-After": "1"},
                    )
                while used + needed > self.memory_budget:
                    victim = idle.pop(0)
                    evicted.append(self._evict(victim, alias))
                    used -= held[victim]
        finally:
            # Closed outside the guard, which the event loop takes: an engine process may take seconds to stop.
            closed = bool(evicted)
            while evicted:  # (popped: no reference left here when the collection below runs)
                evicted.pop().close()
            if closed:
                release_frozen()  # a model frozen after start-up is freed only by a collection (heap.py)

    def _evict(self, victim: str, alias: str) -> ModelRuntime:
        """Take model ``victim`` out (under _guard) to make room for ``alias``; the caller closes it."""
        runtime = self.loaded.pop(victim)
        log.info("evicting model %r (least recently used) to load %r", victim, alias)
        self.metrics.model_evictions.labels(victim).inc()
        for forget in self.on_evict:
            forget(victim)
        return runtime

    def close(self) -> None:
        with self._guard:
            runtimes = list(self.loaded.values())
            self.loaded.clear()
        for r in runtimes:
            r.close()
