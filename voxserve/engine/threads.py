"""Who runs torch's intra-op threads on the CPU: the engine's worker thread, not its callers.

Every thread that runs a parallel torch op keeps its own OpenMP team for good, and libgomp counts them all: once
they outnumber the cores it stops spinning between parallel regions, so each small op of a decode step waits
for a sleeping thread to wake. The engine decodes in its own worker thread, so a caller that ran multi-threaded
torch work first (loading, log-mel) leaves two teams on the cores. Measured on the 2-core bench machine, one 30 s
request (100 tokens) through the engine, 2 threads, medians of 5 (/tmp scratch script, alternating runs):
tiny fp32 1,221 ms with the caller's team (decode step 9.3 ms, its decoder layers on 1 thread as
``EngineConfig.cpu_step_threads`` sets) and 1,011 ms when the caller never ran a team (step 7.6 ms, every part
on 2 threads); base fp32 2,124-2,273 against 1,843-2,136 ms. A caller that had run a team and then dropped to
one thread gained nothing: its idle team still counts.

:func:`engine_owns_cpu_threads` is the process policy that avoids the second team. Called first thing, before
any torch work, it makes this thread and threads started later run torch single-threaded, and engines created
afterwards give their worker the thread count torch had. Without it nothing changes: each engine's worker sets
its own count at start (torch's count in the creating thread, or ``EngineConfig.cpu_threads``) and the creator's
default for new threads is put back.
"""

from __future__ import annotations

import torch

_engine_threads: int | None = None  # set by engine_owns_cpu_threads


def engine_owns_cpu_threads(threads: int | None = None) -> int:
    """The process policy (see the module): ``threads`` (default: torch's current count) go to engines' worker
    threads; this and later threads run torch single-threaded. Returns the engines' count. Call it before any
    torch work in the process; calling it again changes nothing."""
    global _engine_threads
    if _engine_threads is None:
        _engine_threads = threads or torch.get_num_threads()
        torch.set_num_threads(1)
    return _engine_threads


def engine_threads() -> int | None:
    """The engines' thread count under the policy, or None when the process did not adopt it."""
    return _engine_threads
