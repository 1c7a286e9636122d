"""Admission: how many requests decode at once, who goes next, and when to say 429.

At most ``capacity`` requests decode at once (their windows all feed the one engine, which batches them).
Others wait in one queue ordered by priority, then arrival; each priority's waiting line is bounded, and a
request beyond its bound is refused at once with a Retry-After estimated from recent service times, so memory
(uploads held while waiting) stays bounded however hard the server is pushed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..engine.types import Priority


class Overloaded(Exception):
    def __init__(self, priority: Priority, retry_after: int) -> None:
        super().__init__(
            f"too many {priority.name.lower()} requests are waiting; retry after {retry_after} s"
        )
        self.priority, self.retry_after = priority, retry_after


class Admission:
    def __init__(self, capacity: int, limits: dict[Priority, int]) -> None:
        self.capacity = capacity
        self.limits = limits
        self.running = 0
        self._heap: list[tuple[int, int, asyncio.Future]] = []
        self._arrival = itertools.count()
        self.waiting = {p: 0 for p in Priority}
        # exponentially weighted mean of how long a request holds its turn (seconds); None until one finishes
        self._mean_service: float | None = None

    def retry_after(self) -> int:
        """Seconds until the waiting line has probably moved up by one capacity's worth."""
        mean = self._mean_service if self._mean_service is not None else 1.0
        ahead = sum(self.waiting.values()) + self.running
        return max(1, math.ceil(mean * ahead / self.capacity))

    @asynccontextmanager
    async def turn(self, priority: Priority) -> AsyncIterator[float]:
        """Wait for a decoding turn; yields the seconds spent waiting. Raises Overloaded when the line is full."""
        t0 = time.monotonic()
        if self.running < self.capacity and not self._heap:
            self.running += 1
        else:
            if self.waiting[priority] >= self.limits[priority]:
                raise Overloaded(priority, self.retry_after())
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._heap, (int(priority), next(self._arrival), future))
            self.waiting[priority] += 1
            try:
                await future  # _release hands its turn over by resolving this
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # the turn arrived as the client left: pass it on
                else:
                    future.cancel()
                raise
            finally:
                self.waiting[priority] -= 1
        started = time.monotonic()
        try:
            yield started - t0
        finally:
            held = time.monotonic() - started
            m = self._mean_service
            self._mean_service = held if m is None else 0.8 * m + 0.2 * held
            self._release()

    def _release(self) -> None:
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)  # the turn passes straight to the next waiter
                return
        self.running -= 1
