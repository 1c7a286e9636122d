"""How long a live partial's log-mel takes on this host's CPU, alone and with many at once: the stream bench runs
~370 of them a second at 100 streams (0.2 s partials), each in a worker thread beside the engine's.

python3 bench/cpu_contention.py [--threads-list 16,1] [--workers 20] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from voxserve.audio.features import log_mel_power


def one_mel(samples: int) -> float:
    x = torch.randn(samples)
    t0 = time.perf_counter()
    log_mel_power(x, 128)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads-list", default="16,1")
    p.add_argument("--workers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=8.0, help="audio per log-mel (a partial's window so far)")
    args = p.parse_args()
    print(f"os.cpu_count {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}")
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        if os.path.exists(path):
            print(path, open(path).read().strip())
    samples = int(16000 * args.seconds)
    for threads in (int(t) for t in args.threads_list.split(",")):
        torch.set_num_threads(threads)
        alone = [one_mel(samples) for _ in range(20)]
        with ThreadPoolExecutor(args.workers) as pool:
            t0 = time.perf_counter()
            many = list(pool.map(one_mel, [samples] * 400))
            wall = time.perf_counter() - t0
        print(
            f"torch threads {threads}: alone median {1e3 * statistics.median(alone):.2f} ms; {args.workers} workers: "
            f"median {1e3 * statistics.median(many):.2f} ms each, {400 / wall:.0f} log-mels/s"
        )


if __name__ == "__main__":
    main()
