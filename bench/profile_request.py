"""Development profile of one request on an idle engine: where a 5 s or 30 s request's latency goes.

Runs the bench's latency request (random weights, English, no timestamps, exactly N tokens) through the default
engine a few times, then once more with each engine phase stamped on the host clock (no synchronisation added):
the log-mel, the hand-over to the engine's thread, admission (encoder graph, prefill, first select, the read of
the first token), the decode steps, and the hand-back. Then one request under torch.profiler: device busy time
against wall time, the top CPU operations, and a Chrome trace written to --out. Not a benchmark (see `voxserve
bench --suite latency`): use it to find the cost.

python3 bench/profile_request.py --dims large-v3 --seconds 5 --tiktoken .devdata/whisper-assets/multilingual.tiktoken
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probe_engine import DIMS  # noqa: I001 - a sibling script
from torch.profiler import ProfilerActivity, profile

from voxserve.bench.inputs import features
from voxserve.bench.subjects import bench_options
from voxserve.config import ModelDims
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.engine.engine import Engine
from voxserve.engine.runner import Runner
from voxserve.engine.types import EngineConfig
from voxserve.model.load import init_random
from voxserve.tokenizer import Tokenizer

events: list[tuple[str, float, float]] = []  # (phase, start, end) on the host clock
state = {"on": False}


def stamped(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if state["on"]:
                events.append((name, t0, time.perf_counter()))

    return wrapper


def instrument() -> None:
    for cls, names in (
        (Engine, ("_launch_admission", "_finish_admission", "_step")),
        (Runner, ("encode", "_run_prefill", "launch", "collect", "_detect_languages", "finish_admission")),
    ):
        for name in names:
            setattr(cls, name, stamped(f"{cls.__name__}.{name}", getattr(cls, name)))


def timeline(start: float, end: float) -> None:
    """Each phase's first start and last end (ms from the request's start), its count and summed host time."""
    spans: dict[str, list[float]] = collections.defaultdict(lambda: [float("inf"), 0.0, 0, 0.0])
    for name, t0, t1 in events:
        s = spans[name]
        s[0], s[1], s[2], s[3] = min(s[0], t0), max(s[1], t1), s[2] + 1, s[3] + (t1 - t0)
    print(f"request: {1e3 * (end - start):.2f} ms wall")
    for name, (t0, t1, n, total) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        print(
            f"  {name:26s} from {1e3 * (t0 - start):7.2f} to {1e3 * (t1 - start):7.2f} ms, "
            f"{n:4d} calls, {1e3 * total:7.2f} ms in them"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="large-v3")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=None, help="default: the bench's (5 s: 20, 30 s: 100)")
    ap.add_argument("--tiktoken", default=".devdata/whisper-assets/multilingual.tiktoken")
    ap.add_argument("--out", type=Path, default=Path("/tmp"))
    ap.add_argument("--prefill-graphs", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    n = args.tokens or (100 if args.seconds >= 30 else 20)
    dims = ModelDims(n_audio_ctx=1500, n_text_ctx=448, **DIMS[args.dims])
    tok = Tokenizer.from_tiktoken(args.tiktoken, num_languages=dims.num_languages)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = init_random(dims, seed=0).to(device, getattr(torch, args.dtype))
    eng = make_engine(model, tok, EngineConfig(prefill_graphs=bool(args.prefill_graphs)))
    batch = BatchDecoder(eng, model, tok)
    audio = np.random.default_rng(0).standard_normal(int(16000 * args.seconds)).astype(np.float32) * 0.1
    options = bench_options(tok, n)

    def request() -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        mel = features([audio], dims.n_mels, device)
        events.append(("log-mel (host)", start, time.perf_counter()))
        out = batch.decode(mel, options)
        assert len(out[0].tokens) == n, len(out[0].tokens)
        sync()
        return start, time.perf_counter()

    try:
        with torch.inference_mode():
            for _ in range(5):
                request()
            instrument()
            for _ in range(3):
                events.clear()
                state["on"] = True
                start, end = request()
                state["on"] = False
                timeline(start, end)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                start, end = request()
            kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
            busy = sum(e.device_time for e in kernels) / 1e3
            print(f"\nprofiled request: {1e3 * (end - start):.2f} ms wall, {busy:.2f} ms of kernels")
            print(
                prof.key_averages().table(
                    sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60
                )
            )
            args.out.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(args.out / f"request-{args.seconds:g}s.json"))
    finally:
        eng.close()


if __name__ == "__main__":
    main()
