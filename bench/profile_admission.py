"""Development profile: one live-like admission's host time on CUDA, without the live load, and where it goes.

Why: in the live profile at 400 streams (bench/profile_streams.py --phases, large-v3 fp16, H100, stop 25) an
admission took ~45 ms of the engine thread's time while its marked parts (log-mels, packed encoder pass, prefill,
token choice) took ~19 ms, and the parts' device times added up to the admission's: the thread most likely waits
for the device somewhere after the packed pass's launch, outside those parts. So running admissions beside the
decode steps (EngineConfig.overlap_admissions) gained nothing: the thread spent as long launching an admission as
the device spent running it. This runs admissions of ``--rows`` growing live windows (keyed, as a live session's
partials, so the audio cache applies) on a warmed engine with nothing else in the process, times
``Runner.launch_admission``'s host time, then records one under cProfile (Python functions by cumulative time) and
one under torch.profiler (operators and CUDA runtime calls by self CPU time). Not a benchmark: prints, writes
nothing.

    PYTHONPATH=. python3 bench/profile_admission.py --tiktoken .devdata/whisper-assets/multilingual.tiktoken \\
        [--dims large-v3] [--rows 50] [--overlap-admissions]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from voxserve.bench.weights import bench_tokenizer, resolve_dims
from voxserve.config import SAMPLE_RATE
from voxserve.decoding.batched import make_engine
from voxserve.decoding.decode import WindowDecoder
from voxserve.decoding.options import DecodingOptions
from voxserve.engine.runner import Runner
from voxserve.engine.types import AudioWindow, EngineConfig, RowSpec
from voxserve.model.load import init_random

BUCKETS = (100, 200, 400, 800, 1600)  # the live default window lengths (1, 2, 4, 8, 16 s), in mel frames


class LiveWindows:
    """``rows`` utterances of 0.3-12 s, each 0.2 s longer at every turn (a partial interval), restarting past 12 s
    under a new key: a live admission's mix of window lengths and keys."""

    def __init__(self, rows: int, rng: np.random.Generator) -> None:
        self.audio = [rng.standard_normal(SAMPLE_RATE * 13).astype(np.float32) * 0.1 for _ in range(rows)]
        self.phase = rng.uniform(0.0, 11.7, rows)

    def at(self, turn: int) -> list[AudioWindow]:
        out = []
        for i, (audio, phase) in enumerate(zip(self.audio, self.phase, strict=True)):
            t = phase + 0.2 * turn
            n = int(((t % 11.7) + 0.3) * SAMPLE_RATE)
            frames = next(b for b in BUCKETS if b * 160 >= n)
            out.append(AudioWindow(audio[:n], frames, (i, int(t // 11.7))))
        return out


def synchronizing_calls(
    runner: Runner, slots: list[int], specs: list[RowSpec], windows: list[AudioWindow]
) -> None:
    """Print where one admission's launch makes the host wait for the device: torch's sync debug mode warns at
    each synchronising call (an item(), a pageable copy, a nonzero...), and each warning's stack is printed."""
    seen: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        stack = "".join(traceback.format_stack(limit=14)[:-2])
        seen.append(f"--- {message}\n{stack}")

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        # on before the listing starts: switching it on warns that the mode is a prototype (not a device wait)
        torch.cuda.set_sync_debug_mode("warn")
        warnings.simplefilter("always")
        warnings.showwarning = show
        try:
            pending = runner.launch_admission(slots, specs, windows)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    runner.finish_admission(pending)
    print(f"synchronising calls in one admission's launch: {len(seen)}")
    for text in seen[:12]:
        print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="large-v3")
    p.add_argument("--tiktoken", type=Path, required=True)
    p.add_argument("--rows", type=int, default=50, help="windows an admission takes (default 50)")
    p.add_argument(
        "--turns", type=int, default=40, help="timed admissions (default 40; the first 5 not counted)"
    )
    p.add_argument(
        "--overlap-admissions", action="store_true", help="the engine as --overlap-admissions builds it"
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_admission times the CUDA engine's admissions: no CUDA device here")
    dims = resolve_dims(args.dims)
    tok = bench_tokenizer(dims, args.tiktoken)
    model = init_random(dims).to("cuda", torch.float16).eval()
    config = EngineConfig(
        max_slots=max(64, args.rows),
        max_admit=max(64, args.rows),
        short_window_frames=BUCKETS,
        packed_encoder=True,
        packed_prefill=True,
        overlap_admissions=args.overlap_admissions,
    )
    engine = make_engine(model, tok, config)
    try:
        t0 = time.perf_counter()
        engine.runner.warmup()
        print(f"warm-up {time.perf_counter() - t0:.0f} s")
        runner, live = engine.runner, LiveWindows(args.rows, np.random.default_rng(0))
        options = DecodingOptions(language="en", without_timestamps=True, sample_len=15)
        specs = [WindowDecoder(model, tok, options).row_spec()] * args.rows
        slots = list(range(args.rows))

        def admit(turn: int) -> float:
            windows = live.at(turn)
            torch.cuda.synchronize()
            start = time.perf_counter()
            pending = runner.launch_admission(slots, specs, windows)
            host = time.perf_counter() - start
            runner.finish_admission(pending)
            return host

        stats = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
        host = [admit(turn) for turn in range(args.turns)][5:]
        if (
            stats
        ):  # pinned blocks created while admitting: each a cudaHostAlloc, which may wait for the device
            after = torch.cuda.host_memory_stats()
            created = after.get("num_host_alloc", 0) - stats.get("num_host_alloc", 0)
            spent = after.get("host_alloc_time.total", 0) - stats.get("host_alloc_time.total", 0)
            print(
                f"pinned host blocks created over {args.turns} admissions: {created} ({spent / 1e3:.1f} ms)"
            )
        print(
            f"launch_admission host time, {args.rows} rows: median {1e3 * statistics.median(host):.2f} ms, "
            f"max {1e3 * max(host):.2f} ms ({len(host)} admissions)"
        )
        windows = live.at(args.turns)
        torch.cuda.synchronize()
        with cProfile.Profile() as prof:
            pending = runner.launch_admission(slots, specs, windows)
        runner.finish_admission(pending)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        windows = live.at(args.turns + 1)
        torch.cuda.synchronize()
        # with CUDA activity the runtime's calls are listed too, with their host time: a synchronisation
        # (cudaStreamSynchronize, cudaEventSynchronize, a pageable cudaMemcpy) or a pinned allocation (cudaHostAlloc,
        # which under load stalled for up to ~12 ms a call in vLLM's measurements, vllm-project/vllm#37006)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as ops:
            pending = runner.launch_admission(slots, specs, windows)
        runner.finish_admission(pending)
        print(ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
        # last: its windows are longer than the profiled ones, so before them it would leave the cache nothing to send
        synchronizing_calls(runner, slots, specs, live.at(args.turns + 2))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
