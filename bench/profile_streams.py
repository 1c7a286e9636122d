"""Development profile of the live stream bench: where an engine iteration's time goes.

Runs ``voxserve bench --streams`` once (random weights, oracle VAD, short windows) with the engine's admission,
encoder passes, prefill and decode steps timed: host time (until the call returns) and wall time (until the
device has finished too, by a synchronisation after each call, which the real engine does not make). With
``--profile`` one admission is also recorded by torch.profiler (top CPU and device operations). Not a benchmark:
the synchronisations change the run; use the figures to find the cost, and ``voxserve bench --streams`` to
measure it. ``--stacks`` samples every thread's Python stack; the event loop thread's own CPU time is printed
per run; ``--host-only MS`` swaps the engine for one that does no device work (what the host alone sustains, e.g.
``--dims tiny --device cpu --host-only 20``). ``--phases`` times instead without any synchronisation: CUDA events
around the engine's calls and each part of an admission, read once the run is over (the device time of each, and
how much of the run's device time lay between the engine's calls).

python3 bench/profile_streams.py --streams 100 --dims large-v3 --device cuda --precision fp16 \\
    --audio .devdata/audio/hifitts-6097 \\
    --tiktoken .devdata/whisper-assets/multilingual.tiktoken [--profile N] [--stacks] \\
    [--variant packed=0 --variant packed=1 --variant torchthreads=1 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from voxserve.cli.bench import seconds_list
from voxserve.engine import mels
from voxserve.engine.audio_cache import AudioCache
from voxserve.engine.engine import Engine
from voxserve.engine.packed import pass_size
from voxserve.engine.runner import Runner
from voxserve.engine.types import EngineConfig, WindowOutput, WindowRequest
from voxserve.heap import freeze_alive
from voxserve.live import streambench
from voxserve.live.service import LiveService
from voxserve.live.streambench import StreamBenchPlan, run_streams

calls: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
shapes: dict[str, list[Any]] = collections.defaultdict(list)
recorded: list[profile] = []
# device time of steps and admissions, from CUDA events around the call (read once the run is over)
device_events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = collections.defaultdict(list)
loop_lag: list[float] = []  # how late a 10 ms timer of the callers' event loop fired, seconds
# the event loop thread's CPU time and the wall time over which it was measured (seconds), per run
loop_cpu: list[tuple[float, float]] = []
state = {"on": False, "profile_at": -1}
engines: list[Engine] = []  # the bench's engine, once built (steps beside admissions, per variant)


def pinned_allocations() -> tuple[int, float]:
    """The pinned host allocator's blocks created so far and the microseconds spent creating them (CUDA; a new
    block is a cudaHostAlloc, which may wait for the device): (0, 0.0) where torch does not count them."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "host_memory_stats"):
        return 0, 0.0
    stats = torch.cuda.host_memory_stats()
    return int(stats.get("num_host_alloc", 0)), float(stats.get("host_alloc_time.total", 0.0))


pinned_at_start: list[tuple[int, float]] = []  # at the start of the current variant
# Python's cyclic collections during the current variant: (generation, milliseconds). A full (generation 2)
# collection holds the GIL for all of it, stalling the event loop and the engine's thread alike.
collections_ms: list[tuple[int, float]] = []
_gc_started: list[float] = []


def _watch_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        collections_ms.append((info["generation"], 1e3 * (time.perf_counter() - _gc_started[0])))


gc.callbacks.append(_watch_gc)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not state["on"]:
            return fn(self, *args, **kwargs)
        if name == "admit" and len(calls["admit"]) == state["profile_at"]:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                out = fn(self, *args, **kwargs)
                sync()
            recorded.append(prof)
            state["profile_at"] = -1  # one admission in the whole run
            calls["admit"].append((float("nan"), float("nan")))
            return out
        if name != "mel":  # log-mels run in the loop's worker threads: no device-wide wait from there
            sync()
        events = None
        if torch.cuda.is_available() and name in ("admit", "step"):
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        t0 = time.perf_counter()
        out = fn(self, *args, **kwargs)
        t1 = time.perf_counter()
        if events is not None:
            events[1].record()
            device_events[name].append(events)
        if name != "mel":
            sync()
        calls[name].append((t1 - t0, time.perf_counter() - t0))
        if name == "admit":
            shapes["admitted rows"].append(len(args[0]))
        elif name == "encode":
            shapes["encoder (batch, frames)"].append((args[0].shape[0], args[0].shape[-1]))
        elif name == "packed":
            used = sum(m.shape[-1] for m in args[0]) // 2
            size = pass_size(used, self.model.dims.n_audio_ctx)
            graphed = (
                self._packed_graphed and self._packed_capturable(size) and len(args[0]) <= self.max_encode
            )
            shapes["packed encoder positions (rows, used, pass)"].append(
                (len(args[0]), used, size if graphed else used)  # an eager pass runs at its exact size
            )
        elif name == "prefill":
            shapes["prefill (rows, tokens)"].append(tuple(args[1].shape))
        elif name == "packed prefill":  # (rows, prompt tokens in all)
            shapes["packed prefill (rows, tokens)"].append(
                (len(args[0]), sum(len(s.initial_tokens) for s in args[1]))
            )
        elif name == "step":
            shapes["step rows"].append(len(self._active))
        return out

    return wrapper


# --phases: (name, start event, end event, host seconds, the calling thread's CPU seconds) per call, in call
# order, without synchronisations
marks: list[tuple[str, torch.cuda.Event, torch.cuda.Event, float, float]] = []


def marked(
    name: str, fn: Callable[..., Any], stream: Callable[..., Any] = lambda *args: None
) -> Callable[..., Any]:
    """``fn`` with CUDA events recorded before and after it and its host time kept, nothing synchronised: what
    an engine call and each part of an admission take on the device as the real engine runs them (a part's
    device time includes any wait for the host's launches inside it). ``stream(*args)``: the stream its work
    goes to, where not the current one (decode steps beside overlapped admissions)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not state["on"]:
            return fn(*args, **kwargs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        on = stream(*args)  # None: the current stream
        start.record(on)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = fn(*args, **kwargs)
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
        end.record(on)
        marks.append((name, start, end, dt, cpu))
        return out

    return wrapper


def instrument_phases() -> None:
    """Mark the engine's calls and an admission's parts (log-mels, encoder, prefill, token choice) for
    ``report_phases``."""
    from voxserve.engine import runner
    from voxserve.engine.policy import PolicyState

    # inside the admission stream's context where admissions overlap steps
    Runner._launch_admission = marked("admit", Runner._launch_admission)
    Engine._step = marked(
        "step", Engine._step, lambda engine: engine.runner.step_stream if engine.runner.overlap else None
    )
    runner.window_mels = marked("  mels", runner.window_mels)
    Runner._encode_admitted_packed = marked("  encoded", Runner._encode_admitted_packed)
    PolicyState.reset = marked("  reset", PolicyState.reset)
    Runner._first_tokens = marked("  first", Runner._first_tokens)
    Runner.encode = marked("  encode", Runner.encode)
    Runner.encode_packed = marked("  packed", Runner.encode_packed)
    Runner._run_prefill = marked("  prefill", Runner._run_prefill)
    Runner._run_prefill_packed = marked("  prefill", Runner._run_prefill_packed)
    PolicyState.select_packed = marked("  select", PolicyState.select_packed)


def report_phases() -> None:
    """Mean host and device time of each marked call, and how much of the run's device time lay between the
    engine's calls (the device idle, waiting for the engine thread)."""
    if not marks:
        return
    torch.cuda.synchronize()
    by_name: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    for name, start, end, host, cpu in marks:
        by_name[name].append((1e3 * host, start.elapsed_time(end), 1e3 * cpu))
    for name, pairs in by_name.items():
        print(
            f"{name:10s} {len(pairs):5d} calls, host mean {statistics.mean(p[0] for p in pairs):6.2f} ms (thread CPU "
            f"{statistics.mean(p[2] for p in pairs):6.2f}), device mean {statistics.mean(p[1] for p in pairs):6.2f} ms, "
            f"median {statistics.median(p[1] for p in pairs):6.2f} ms, total {sum(p[1] for p in pairs) / 1e3:6.2f} s"
        )
    top = [m for m in marks if not m[0].startswith(" ")]
    if top:  # calls as intervals from the first call's start (admissions and steps may overlap: their union)
        origin = top[0][1]
        spans = sorted((origin.elapsed_time(s), origin.elapsed_time(e)) for _, s, e, _, _ in top)
        span = max(e for _, e in spans) - spans[0][0]
        inside, reach = 0.0, spans[0][0]
        for a, b in spans:
            inside += max(0.0, b - max(a, reach))
            reach = max(reach, b)
        if span > 0:
            print(
                f"engine calls: {span / 1e3:.2f} s from the first to the last on the device, {inside / 1e3:.2f} s "
                f"inside calls ({100 * inside / span:.0f}%), {100 * (span - inside) / span:.0f}% between them"
            )
    marks.clear()


def watch_loop(simulate: Callable[..., Any]) -> Callable[..., Any]:
    """``streambench._simulate`` with a 10 ms timer on the callers' event loop beside it, its lateness kept: how
    long the loop (sessions, VAD, results) keeps a ready callback waiting."""

    async def watched(*args: Any) -> Any:
        since: list[float] = []  # the loop thread's CPU clock and the wall clock when timing began

        async def tick() -> None:
            while True:
                due = time.perf_counter() + 0.01
                await asyncio.sleep(0.01)
                if state["on"]:
                    loop_lag.append(time.perf_counter() - due)
                    if not since:
                        since.extend((time.thread_time(), time.perf_counter()))

        ticker = asyncio.create_task(tick())
        try:
            return await simulate(*args)
        finally:
            ticker.cancel()
            if since:
                loop_cpu.append((time.thread_time() - since[0], time.perf_counter() - since[1]))

    return watched


VARIANT_KEYS = {
    "wait": int,
    "ratio": float,
    "switch": float,
    "enginemels": int,
    "packed": int,
    "prefill": int,
    "every": float,
    "torchthreads": int,
    "mergedmels": int,
    "audiocache": int,
    "overlap": int,
    "gcfreeze": int,
}


def parse_variant(text: str) -> dict[str, float]:
    """ "wait=16,ratio=1,switch=0.0005,enginemels=1" -> its settings (an empty text: the defaults)."""
    out: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS:
            raise SystemExit(f"--variant: unknown key {key!r} (known: {', '.join(VARIANT_KEYS)})")
        out[key] = VARIANT_KEYS[key](value)
    return out


def run_variants(variants: list[dict[str, float]]) -> None:
    """Apply the next variant whenever the bench starts its next stream count (one per variant, on the same
    warmed engine): the engine's admission policy, the GIL switch interval and where log-mels are made; print
    the previous variant's figures first."""
    pending = list(variants)
    options = streambench.LiveOptions
    current: dict[str, float] = {}
    init = LiveService.__init__

    begun: list[bool] = []  # whether a variant has run (its figures are reported when the next one starts)

    def next_variant(self: LiveService, whisper: Any, engine: Engine, *args: Any, **kwargs: Any) -> None:
        if begun or calls or marks:
            report()
            clear()
        begun[:] = [True]
        current.clear()
        current.update(pending.pop(0))
        engines[:] = [engine]
        pinned_at_start[:] = [pinned_allocations()] if torch.cuda.is_available() else []
        print(f"--- variant {current or 'defaults'}")
        engine.config = replace(
            engine.config,
            admit_wait_steps=int(current.get("wait", EngineConfig.admit_wait_steps)),
            admit_ratio=float(current.get("ratio", EngineConfig.admit_ratio)),
        )
        sys.setswitchinterval(current.get("switch", 0.005))
        if "torchthreads" in current:  # process-wide: the log-mel workers' count too
            torch.set_num_threads(int(current["torchthreads"]))
        if "packed" in current:
            engine.runner.packed_encoder = bool(current["packed"])
        if "prefill" in current:
            engine.runner.packed_prefill = bool(current["prefill"])
        if "mergedmels" in current:
            mels.MERGE_LENGTHS = bool(current["mergedmels"])
        if "overlap" in current:  # only where the engine was built with overlapped admissions (its streams)
            if current["overlap"] and engine.runner.admit_stream is None:
                raise SystemExit("--variant overlap=1 needs --overlap-admissions (the engine's own streams)")
            torch.cuda.synchronize()  # nothing of the other mode's streams still running
            engine.runner.overlap = bool(current["overlap"])
        if "gcfreeze" in current:  # everything alive now out of the collector's sight (or back in it)
            if current["gcfreeze"]:
                freeze_alive()
            else:
                gc.unfreeze()
        collections_ms.clear()
        if "audiocache" in current:  # a fresh one, or none: every window's audio sent whole
            on = current["audiocache"] and engine.runner.device.type == "cuda"
            engine.runner.audio_cache = AudioCache(engine.runner.device) if on else None
        init(self, whisper, engine, *args, **kwargs)

    def variant_options(**kw: Any) -> Any:
        # Built before the service whose __init__ starts the next variant: the options are that variant's.
        upcoming = pending[0] if pending else current
        if "every" in upcoming:  # short windows every S seconds up to the model's 30 s
            step = upcoming["every"]
            kw["window_buckets_s"] = tuple(step * k for k in range(1, int(30 / step)) if step * k < 30)
        if "enginemels" in upcoming:
            kw["mels"] = "engine" if upcoming["enginemels"] else "host"
        return options(**kw)

    LiveService.__init__ = next_variant  # type: ignore[method-assign]
    streambench.LiveOptions = variant_options  # type: ignore[misc]


def clear() -> None:
    for store in (calls, shapes, device_events):
        store.clear()
    marks.clear()
    loop_lag.clear()
    loop_cpu.clear()


def instrument() -> None:
    streambench._simulate = watch_loop(streambench._simulate)
    LiveService.mel = timed("mel", LiveService.mel)
    Engine._launch_admission = timed("admit", Engine._launch_admission)
    Engine._step = timed("step", Engine._step)
    Runner.encode = timed("encode", Runner.encode)
    Runner.encode_packed = timed("packed", Runner.encode_packed)
    Runner._run_prefill = timed("prefill", Runner._run_prefill)
    Runner._run_prefill_packed = timed("packed prefill", Runner._run_prefill_packed)
    Runner.warmup = timed_warmup(Runner.warmup)


def timed_warmup(
    warmup: Callable[[Runner], list[tuple[str, int]]],
) -> Callable[[Runner], list[tuple[str, int]]]:
    """``Runner.warmup`` that reports its time and graphs, warms the other encoder form too where a variant may
    switch to it, and starts the timing once done."""

    def warm_then_time(self: Runner) -> list[tuple[str, int]]:
        t0 = time.perf_counter()
        ran = warmup(self)
        graphs = sum(
            map(len, (self._graphs, self._encoder_graphs, self._prefill_graphs, self._packed_prefill_graphs))
        )
        memory = torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0
        print(
            f"warm-up {time.perf_counter() - t0:.1f} s: {graphs} graphs ({len(self._prefill_graphs)} prefill, "
            f"{len(self._packed_graphs)} packed encoder), {memory:.1f} GiB reserved"
        )
        if len(self.window_frames) > 1:  # a variant may switch packing: the other forms' graphs too
            t0 = time.perf_counter()
            for name in ("packed_encoder", "packed_prefill"):
                setattr(self, name, not getattr(self, name))
                warmup(self)
                setattr(self, name, not getattr(self, name))
            print(
                f"the other encoder and prefill forms' graphs as well: {time.perf_counter() - t0:.1f} s more"
            )
        state["on"] = True  # time the run, not the warm-up
        return ran

    return warm_then_time


class StackSampler:
    """Every ``interval`` seconds, where each thread is (its Python stack, via sys._current_frames): counts of
    each thread kind's innermost voxserve-or-torch frame and of its three innermost frames. A thread inside a C
    call (torch work, a lock, a sleep) shows at the Python line that made it. Pure Python, so it runs where
    py-spy cannot attach; it takes the GIL ~``1 / interval`` times a second itself."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.stack: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        self.leaf.clear()
        self.stack.clear()
        self.samples = 0

    @staticmethod
    def _kind(name: str) -> str:
        if name.startswith("asyncio_") or name.startswith("ThreadPoolExecutor"):
            return "worker threads"
        return name

    def _run(self) -> None:
        names = {}
        me = threading.get_ident()
        while True:
            time.sleep(self.interval)
            if not state["on"]:
                continue
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                if ident not in names:
                    names = {t.ident: t.name for t in threading.enumerate()}
                kind = self._kind(names.get(ident, "?"))
                frames = []
                f = frame
                while f is not None and len(frames) < 40:
                    code = f.f_code
                    frames.append(f"{Path(code.co_filename).name}:{code.co_name}:{f.f_lineno}")
                    f = f.f_back
                ours = [x for x in frames if not x.startswith(("threading.py", "thread.py", "queue.py"))]
                if not ours:
                    ours = frames[:1]
                self.leaf[kind][ours[0]] += 1
                self.stack[kind][" < ".join(ours[:3])] += 1

    def report(self) -> None:
        print(f"stack samples: {self.samples} rounds every {1e3 * self.interval:.0f} ms")
        for kind, counts in sorted(self.leaf.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(counts.values())
            print(f"  [{kind}] {total} thread-samples")
            for where, n in counts.most_common(12):
                print(f"    {100 * n / total:5.1f}%  {where}")
            for where, n in self.stack[kind].most_common(6):
                print(f"      stack {100 * n / total:5.1f}%  {where}")


sampler: StackSampler | None = None


class HostOnlyEngine:
    """An engine that does no device work: every request returns its ``sample_len`` tokens after ``delay_s``.
    With it the run measures what the host alone (sessions, event loop, log-mels, results) sustains."""

    class _Ticket:
        def __init__(self, tokens: tuple[int, ...], delay_s: float) -> None:
            self.token_events, self.tokens, self.delay_s = True, tokens, delay_s

        def cancel(self) -> None:
            pass

        async def wait(self) -> WindowOutput:
            await asyncio.sleep(self.delay_s)
            return WindowOutput(self.tokens, -1.0, 0.0, "length")

    def __init__(self, token: int, delay_s: float) -> None:
        self.token, self.delay_s = token, delay_s
        self.n_slots, self.steps, self.steps_beside_admissions = 1024, 0, 0
        self.config = EngineConfig()
        runner = {
            "device": torch.device("cpu"),
            "warmup": lambda self: [],
            "audio_cache": None,
            "overlap": False,
        }
        self.runner = type("HostRunner", (), runner)()

    def submit(self, request: WindowRequest, *, token_events: bool = True) -> HostOnlyEngine._Ticket:
        self.steps += 1
        ticket = self._Ticket((self.token,) * request.spec.sample_len, self.delay_s)
        ticket.token_events = token_events
        return ticket

    def counters(self) -> dict[str, int]:
        return {"steps": self.steps, "steps_beside_admissions": self.steps_beside_admissions}

    def close(self) -> None:
        pass


def host_only(delay_s: float) -> None:
    """Make the stream bench build a ``HostOnlyEngine`` instead of the real one."""

    def make(model: Any, tokenizer: Any, config: EngineConfig) -> HostOnlyEngine:
        state["on"] = True  # nothing to warm up: time from the start
        return HostOnlyEngine(tokenizer.encode(" the")[0], delay_s)

    streambench.make_engine = make  # type: ignore[assignment]


def report() -> None:
    report_phases()
    if engines:
        eng = engines[0]
        print(f"decode steps launched while an admission was on the device: {eng.steps_beside_admissions}")
        eng.steps_beside_admissions = 0
    if pinned_at_start:
        (n0, t0), (n1, t1) = pinned_at_start[0], pinned_allocations()
        print(f"pinned host blocks created: {n1 - n0} ({(t1 - t0) / 1e3:.1f} ms in cudaHostAlloc)")
    full = [ms for generation, ms in collections_ms if generation == 2]
    young = [ms for generation, ms in collections_ms if generation < 2]
    print(
        f"gc: {len(full)} full collections ({sum(full):.0f} ms, longest {max(full, default=0):.1f} ms), "
        f"{len(young)} younger ({sum(young):.0f} ms, longest {max(young, default=0):.1f} ms), "
        f"{gc.get_freeze_count()} objects frozen, {len(gc.get_objects())} tracked"
    )
    collections_ms.clear()
    if sampler is not None:
        sampler.report()
        sampler.reset()
    for name in ("admit", "encode", "packed", "prefill", "packed prefill", "step", "mel"):
        timed_calls = [c for c in calls[name] if c[0] == c[0]]  # without the profiled one
        if timed_calls:
            host = 1e3 * sum(c[0] for c in timed_calls) / len(timed_calls)
            wall = 1e3 * sum(c[1] for c in timed_calls) / len(timed_calls)
            print(
                f"{name:14s} {len(timed_calls):5d} calls, mean host {host:7.1f} ms, mean wall {wall:7.1f} ms"
            )
    for name, pairs in device_events.items():
        ms = [a.elapsed_time(b) for a, b in pairs]
        print(
            f"{name:8s} device time: mean {statistics.mean(ms):7.1f} ms, median {statistics.median(ms):7.1f} ms"
        )
    for cpu, wall in loop_cpu:
        print(f"event loop thread CPU: {cpu:.2f} s in {wall:.1f} s ({100 * cpu / wall:.0f}% of a core)")
    if loop_lag:
        lag = sorted(loop_lag)
        print(
            f"event loop 10 ms timer lateness: p50 {1e3 * lag[len(lag) // 2]:.1f} ms, "
            f"p99 {1e3 * lag[int(0.99 * (len(lag) - 1))]:.1f} ms, max {1e3 * lag[-1]:.1f} ms ({len(lag)} ticks)"
        )
    for name, values in shapes.items():
        if name.endswith("prefill (rows, tokens)"):
            print(f"{name}: {sorted(collections.Counter(values).items())}")
        elif name == "encoder (batch, frames)":
            frames = collections.Counter(v[1] for v in values)
            mean_batch = sum(v[0] for v in values) / len(values)
            print(f"{name}: mean batch {mean_batch:.1f}, passes by frames {sorted(frames.items())}")
        elif name.startswith("packed"):
            means = [sum(v[k] for v in values) / len(values) for k in range(3)]
            print(f"{name}: mean rows {means[0]:.1f}, positions used {means[1]:.0f} of {means[2]:.0f} a pass")
        else:
            print(f"{name}: mean {sum(values) / len(values):.1f}")
    for prof in recorded:
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50)
        )
        if torch.cuda.is_available():
            print(
                prof.key_averages().table(
                    sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=50
                )
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0, help="audio each caller sends")
    p.add_argument("--dims", default="large-v3")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--audio", type=Path, required=True)
    p.add_argument("--tiktoken", type=Path, required=True)
    p.add_argument("--partial-interval", type=float, default=0.2)
    p.add_argument("--stacks", action="store_true", help="sample every thread's Python stack every 5 ms")
    p.add_argument(
        "--host-only",
        type=float,
        metavar="MS",
        help="no device work: every decode returns its tokens after MS milliseconds (what the host alone "
        "sustains; use --device cpu --dims tiny)",
    )
    p.add_argument(
        "--threads", type=int, help="torch's intra-op threads for the whole process (as bench --threads)"
    )
    p.add_argument("--max-admit", type=int, default=64)
    p.add_argument(
        "--encoder-precision",
        choices=["fp8"],
        help="the encoder's Linears in fp8 beside a half-precision model (as bench --encoder-precision)",
    )
    p.add_argument(
        "--overlap-admissions",
        action="store_true",
        help="build the engine with admissions on their own CUDA stream (as bench --overlap-admissions); "
        "variant overlap=0 then runs them one after the other on the same engine",
    )
    p.add_argument(
        "--window-buckets",
        type=seconds_list,
        help="short windows' lengths in seconds, comma-separated (default: LiveOptions', 1,2,4,8,16)",
    )
    p.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="record the first variant's N-th admission with torch.profiler (top CPU and device operations)",
    )
    p.add_argument(
        "--phases",
        action="store_true",
        help="nothing synchronised: CUDA events around the engine's calls and an admission's parts, as the real "
        "engine runs them (instead of the per-call host and wall times)",
    )
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="one run per variant, on one warmed engine: comma-separated wait=N (EngineConfig.admit_wait_steps), "
        "ratio=X (admit_ratio), switch=S (sys.setswitchinterval, seconds), enginemels=0|1 (log-mels made by the "
        "engine from audio, LiveOptions.mels), packed=0|1 (short windows encoded in one packed pass, "
        "Runner.packed_encoder), prefill=0|1 (prompts prefilled end to end, Runner.packed_prefill), every=S (short "
        "windows every S seconds instead of --window-buckets; with packed=1 only, whose graphs cover any length), "
        "torchthreads=N (torch.set_num_threads for the process from this variant on), mergedmels=0|1 (an "
        "admission's engine log-mels in one transform for every window length, or one per length: engine/mels.py "
        "MERGE_LENGTHS), audiocache=0|1 (live utterances' audio kept on the device between partials, or sent whole "
        "each time: engine/audio_cache.py), overlap=0|1 (admissions beside the decode steps, with "
        "--overlap-admissions), gcfreeze=0|1 (gc.freeze() everything alive at the variant's start, or "
        "gc.unfreeze()); repeat for more runs (default: one run with the defaults)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variant or [{}]
    if args.profile is not None:
        state["profile_at"] = args.profile
    if args.phases:
        if args.profile is not None or args.host_only is not None or args.device != "cuda":
            raise SystemExit("--phases times a CUDA engine's calls, without --profile or --host-only")
        instrument_phases()
        streambench._simulate = watch_loop(streambench._simulate)
        Runner.warmup = timed_warmup(Runner.warmup)
    elif args.overlap_admissions:
        raise SystemExit(
            "--overlap-admissions needs --phases (the timed mode synchronises around every call)"
        )
    else:
        instrument()
    if args.host_only is not None:
        host_only(args.host_only / 1e3)
    if args.stacks:
        global sampler
        sampler = StackSampler()
        sampler.start()
    run_variants(variants)
    plan = StreamBenchPlan(
        streams=(args.streams,) * len(variants),
        device=args.device,
        precision=args.precision,
        audio=args.audio,
        tiktoken=args.tiktoken,
        out=Path(tempfile.mkdtemp()),  # the result file of an instrumented run is not a benchmark result
        dims=args.dims,
        seconds=args.seconds,
        partial_interval_s=args.partial_interval,
        short_windows=True,
        window_buckets_s=args.window_buckets,
        max_admit=args.max_admit,
        encoder_precision=args.encoder_precision,
        overlap_admissions=args.overlap_admissions,
        vad="oracle",
    )
    doc, _ = run_streams(plan, sys.argv, log=lambda *a: None)
    report()
    keys = ("streams", "p50_ms", "p99_ms", "decodes_per_s", "engine_steps_per_s", "sender_lag_p99_ms")
    for variant, figures in zip(variants, doc["figures"]["streams"], strict=True):
        print(variant or "defaults", {k: figures[k] for k in keys})


if __name__ == "__main__":
    main()
