"""Objects alive once a long-running process has started, kept out of Python's cyclic collector.

Why: a full (generation 2) collection walks every tracked object while holding the GIL, so the event loop and
the engine's thread both stop for all of it. A live server holds ~174k such objects after start-up (torch, the
web stack, the model's modules), nearly all of them for good. At 400 host-only live streams on the 2-core CPU
machine (`bench/profile_streams.py --dims tiny --device cpu --host-only 20 --seconds 30 --streams 400 --variant
gcfreeze=0|1`, alternating twice, stop 26) three full collections ran in each 30 s run: the longest 157-160 ms
with everything in the collector's sight, 23-30 ms with start-up's objects frozen; the event loop's 10 ms timer
at most 160-166 against 24-30 ms late; partial-result p99 285-322 against 224 ms.

The price: frozen objects that become garbage inside reference cycles are not freed. A model and its engine's
runner are such cycles (a tiny model and engine, deleted, stayed alive until a collection: measured, stop 26), so
whatever drops start-up objects for good (the registry evicting a model) calls ``release_frozen``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect once, then move every object alive now to the collector's permanent generation (``gc.freeze``)
    for the block; put them back after it (``gc.unfreeze``), so an embedding process's later collections see
    them again."""
    freeze_alive()
    try:
        yield
    finally:
        gc.unfreeze()


def freeze_alive() -> None:
    """Collect once, then move every object still alive to the collector's permanent generation."""
    gc.collect()
    gc.freeze()


def release_frozen() -> None:
    """After dropping objects that may be frozen (an evicted model): put every frozen object back in the
    collector's sight, collect, and freeze what is still alive. One full collection, as at start-up."""
    if gc.get_freeze_count():
        gc.unfreeze()
        freeze_alive()
