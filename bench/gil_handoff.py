"""Development probe: what a call that releases the GIL costs a thread while another thread wants it.

The live server runs its event loop (sessions, VAD, results) and the engine's thread in one process. Many small
calls on the loop's path release the GIL (numpy copies and ufuncs on a chunk's samples, zlib for a result's
compression ratio, tiktoken); when the engine's thread is waiting for the GIL at that moment, it takes it and
keeps it until it releases it or the switch interval (5 ms) runs out, and only then does the loop's call return.
This times such calls alone and beside a thread that is (a) always runnable Python, (b) Python half the time.

    python3 bench/gil_handoff.py [--switch 0.005]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np


def busy(duty: float, stop: threading.Event) -> None:
    """Python work for ``duty`` of every 8 ms, sleeping (the GIL released) for the rest."""
    while not stop.is_set():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.008 * duty:
            sum(range(100))
        if duty < 1:
            time.sleep(0.008 * (1 - duty))


def timed(fn: Callable[[int], object], n: int = 300) -> tuple[float, float, float]:
    """Median, 90th percentile and mean wall time of ``fn`` in microseconds, a short pause between calls."""
    walls = []
    for k in range(n):
        t0 = time.perf_counter()
        fn(k)
        walls.append((time.perf_counter() - t0) * 1e6)
        time.sleep(0.0003)
    walls.sort()
    return walls[n // 2], walls[int(n * 0.9)], statistics.fmean(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--switch", type=float, default=sys.getswitchinterval(), help="sys.setswitchinterval (s)")
    args = p.parse_args()
    sys.setswitchinterval(args.switch)
    buffer = np.zeros(16000 * 60, np.float32)
    chunk = np.ones(1600, np.float32)  # 100 ms at 16 kHz, a live chunk
    view, chunk_view = memoryview(buffer), memoryview(chunk)
    payload = base64.b64encode(
        (np.random.default_rng(0).standard_normal(1600) * 1000).astype(np.int16).tobytes()
    )
    text = ("and the words of a partial transcript " * 3).encode()
    calls: dict[str, Callable[[int], object]] = {
        "numpy copy of a chunk (releases)": lambda k: buffer.__setitem__(slice(k % 500 * 1600, k % 500 * 1600 + 1600), chunk),
        "memoryview copy of a chunk (holds)": lambda k: view.__setitem__(slice(k % 500 * 1600, k % 500 * 1600 + 1600), chunk_view),
        "zlib.compress of a transcript (releases)": lambda k: zlib.compress(text),
        "pcm16 chunk to float32 (numpy)": lambda k: np.frombuffer(base64.b64decode(payload), np.int16).astype(np.float32) / 32768,
        "pure Python, 200 additions": lambda k: sum(range(200)),
    }  # fmt: skip
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; wall time per call, microseconds")
    for label, duty in (
        ("alone", None),
        ("beside a thread always running Python", 1.0),
        ("beside one half the time", 0.5),
    ):
        stop = threading.Event()
        thread = None if duty is None else threading.Thread(target=busy, args=(duty, stop), daemon=True)
        if thread is not None:
            thread.start()
        print(f"-- {label}")
        for name, fn in calls.items():
            median, p90, mean = timed(fn)
            print(f"   {name:42s} median {median:8.1f}  p90 {p90:8.1f}  mean {mean:8.1f}")
        stop.set()
        if thread is not None:
            thread.join()


if __name__ == "__main__":
    main()
