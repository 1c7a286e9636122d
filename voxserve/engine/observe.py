"""What an engine's worker does, told to an observer: each encoder pass's host time and each decode step's rows.

The engine knows nothing of metrics (it sits below the server), so its runner's two device calls are wrapped on
one instance. The observer is called in the engine's worker thread with ``("encoder", seconds)`` or
``("batch_size", rows)``; the server records them in its metrics, and an engine process forwards them to its
parent (engine/remote.py). A ticket's admission time needs no wrapping: the engine stamps ``Ticket.admitted_at``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import Tensor

from .engine import Engine

Observer = Callable[[str, float], None]


def observe_engine(engine: Engine, observer: Observer) -> None:
    """Wrap ``engine``'s runner so that ``observer`` hears of every encoder pass and decode step."""
    runner = engine.runner
    encode, launch = runner.encode, runner.launch

    def timed_encode(mel: Tensor, slots: Tensor | None = None) -> Tensor:
        t0 = time.monotonic()
        out = encode(mel, slots)
        observer("encoder", time.monotonic() - t0)
        return out

    def counted_launch(slots: list[int], sample: bool) -> object:
        observer("batch_size", len(slots))
        return launch(slots, sample)

    runner.encode, runner.launch = timed_encode, counted_launch
