"""Development profile of one decode step and one encoder pass: which kernels, how many, how long.

python3 bench/profile_step.py --dims large-v3
python3 bench/profile_step.py --dims large-v3 --live   # steps at live shapes instead (see live_steps)
python3 bench/profile_step.py --live-sweep              # the attention kernel's launches at live shapes, alone
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import numpy as np
import torch
from probe_engine import DIMS  # noqa: I001 - a sibling script
from torch.profiler import ProfilerActivity, profile

from voxserve.config import ModelDims
from voxserve.decoding.batched import make_engine
from voxserve.engine import fused
from voxserve.engine.runner import Runner
from voxserve.engine.types import EngineConfig
from voxserve.model.load import init_random
from voxserve.tokenizer import Tokenizer


def table(prof: profile, title: str, rows: int = 18) -> None:
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in events)
    print(f"\n== {title}: {total / 1000:.3f} ms of kernels, {sum(e.count for e in events)} launches")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:rows]:
        print(f"{e.device_time_total / 1000:8.3f} ms {e.count:6d}x  {e.key[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="large-v3")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--tiktoken", default=".devdata/whisper-assets/multilingual.tiktoken")
    ap.add_argument("--cross-kv", default="model", choices=("model", "int8"), help="EngineConfig.cross_kv")
    ap.add_argument("--live", action="store_true", help="decode steps at the live engine's shapes instead")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    dims = ModelDims(n_audio_ctx=1500, n_text_ctx=448, **DIMS[args.dims])
    tok = Tokenizer.from_tiktoken(args.tiktoken, num_languages=dims.num_languages)
    model = init_random(dims, seed=0).to("cuda", dtype)
    if args.live:
        live_steps(model, tok, args.cross_kv)
        return
    eng = make_engine(
        model, tok, EngineConfig(max_slots=64, cuda_graphs=False, fused_step=True, cross_kv=args.cross_kv)
    )
    runner = eng.runner
    try:
        with torch.no_grad():
            # (label, fused step, programmatic dependent launch): PDL is read at each launch (engine/pdl.py)
            variants = [
                ("unfused", False, "0"), ("fused", True, "0"), ("fused+pdl", True, "1"),
                ("fused+pdl+prefetch", True, "prefetch"),
            ]  # fmt: skip
            for label, fused, use_pdl in variants if runner.fused_step else variants[:1]:
                os.environ["VOXSERVE_PDL"] = use_pdl
                runner.fused_step = runner.policy.use_kernel = fused
                for b in (1, 64):
                    rows = torch.arange(b, device="cuda")
                    runner.policy.length[:b] = 10
                    runner.policy.sample_len[:b] = 10**6
                    for _ in range(3):
                        runner._step(rows, False)
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        runner._step(rows, False)
                        torch.cuda.synchronize()
                    table(prof, f"decode step b={b}, {label}")
                # A fresh pool for the next variant's graphs: capturing into the pool of graphs just freed trips
                # an internal assert of the caching allocator (seen on torch 2.11).
                runner._graphs.clear()
                runner._pools = dict.fromkeys(runner._pools)
                graph_timing(runner, label)
            os.environ.pop("VOXSERVE_PDL")
            mel = torch.randn(1, dims.n_mels, 3000, device="cuda", dtype=dtype)
            model.encoder(mel)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model.encoder(mel)
                torch.cuda.synchronize()
            table(prof, "encoder b=1")
    finally:
        eng.close()


def live_steps(model: torch.nn.Module, tok: Tokenizer, cross_kv: str = "model") -> None:
    """Decode steps as the live stream bench runs them: the bench's engine (149 slots at large-v3 on an H100),
    rows whose windows are short (cross K/V of 50-400 positions: the 1, 2, 4 and 8 s buckets, in proportions
    near the bench's ~2.6 s utterances) and sequences of ~20 tokens, against the same rows at 30 s windows (1,500
    positions, the offline bench's step). GPU time of a graph replay per batch bucket, and the kernels of one
    eager step at the largest bucket."""
    eng = make_engine(model, tok, EngineConfig(max_slots=149, cross_kv=cross_kv))
    runner = eng.runner
    rng = np.random.default_rng(0)
    n = runner.n_slots
    live = rng.choice([50, 100, 200, 400], p=[0.3, 0.35, 0.25, 0.1], size=n)
    print(f"live steps: {n} slots, buckets {runner.buckets}, fused up to {fused.MAX_ROWS} rows")
    try:
        with torch.no_grad():
            for label, lengths in (("live windows", live), ("30 s windows", np.full(n, 1500))):
                runner.cross_len[:n] = torch.from_numpy(lengths).to("cuda")
                for b in runner.buckets:
                    if b >= 8:
                        ms = replay_ms(runner, b, length=20, replays=20)
                        print(f"{label}: step b={b}: graph replay {ms:.3f} ms GPU", flush=True)
            runner.cross_len[:n] = torch.from_numpy(live).to("cuda")
            rows = torch.arange(n, device="cuda")
            runner.policy.length[:n] = 20
            runner._step(rows, False)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                runner._step(rows, False)
                torch.cuda.synchronize()
            table(prof, f"eager decode step b={n}, live windows", rows=24)
    finally:
        eng.close()


def replay_ms(runner: Runner, b: int, length: int, replays: int) -> float:
    """GPU time of one replay of bucket ``b``'s step graph over rows 0..b-1 (CUDA events over back-to-back
    replays, after five untimed), the rows kept at ``length`` tokens and never finishing."""
    runner.policy.sample_len[:b] = 10**6
    graph = runner._graph(b, False)[0]
    runner._rows[:b].copy_(torch.arange(b, device="cuda"))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(5 + replays):
        if i == 5:
            start.record()
        runner.policy.length[:b] = length  # keep the rows at the same length
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def graph_timing(runner: Runner, label: str) -> None:
    """The step as the engine runs it: GPU time of one graph replay (CUDA events over back-to-back replays) and
    wall time of ``Runner.step`` (upload of the rows, replay, the one read-back), per batch bucket."""
    runner.use_graphs = True
    for b in (1, 8, 16, 32, 64):
        if b > runner.n_slots:
            continue
        slots = list(range(b))
        replay = replay_ms(runner, b, length=10, replays=50)
        walls = []
        for _ in range(50):
            runner.policy.length[:b] = 10
            t = time.perf_counter()
            runner.step(slots)
            walls.append((time.perf_counter() - t) * 1000)
        print(
            f"{label} step b={b}: graph replay {replay:.3f} ms GPU, Runner.step {statistics.median(walls):.3f} ms wall"
        )


def projection_sweep() -> None:
    """Each large-v3 decoder projection as ``rows_linear`` (tuned; layer norm, GELU, residual folded in as the
    fused step uses them) against the unfused step's ops (layer norm, cuBLAS product, GELU, residual add), GPU
    time per call from CUDA-graph replays, at several row counts."""
    import triton.testing
    from torch import nn

    c = 1280
    shapes = {  # name: (N, K, layer norm, GELU, residual)
        "qkv": (3 * c, c, True, False, False),
        "attn out": (c, c, False, False, True),
        "cross q": (c, c, True, False, False),
        "fc1": (4 * c, c, True, True, False),
        "fc2": (c, 4 * c, False, False, True),
        "logits": (51866, c, True, False, False),
    }
    per_layer = {"qkv": 1, "attn out": 2, "cross q": 1, "fc1": 1, "fc2": 1}  # cross out is attn out's shape
    for m in (1, 8, 16, 32, 64):
        totals = [0.0, 0.0]
        for name, (n, k, has_ln, gelu, res) in shapes.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k**0.5
            b = torch.randn(n, device="cuda", dtype=torch.float16)
            ln = nn.LayerNorm(k).to("cuda", torch.float16) if has_ln else None
            r = torch.randn(m, n, device="cuda", dtype=torch.float16) if res else None
            kw = dict(ln=ln, gelu=gelu, residual=r)
            fused.rows_linear(x, w, b, **kw)  # tune outside the capture
            fused_call = functools.partial(fused.rows_linear, x, w, b, **kw)
            eager_call = functools.partial(fused._reference, x, w, b, ln, gelu, r)
            t_fused = triton.testing.do_bench_cudagraph(fused_call, rep=50)
            t_eager = triton.testing.do_bench_cudagraph(eager_call, rep=50)
            calls = 32 * per_layer.get(name, 0) or 1
            totals[0] += calls * t_fused
            totals[1] += calls * t_eager
            gb = n * k * 2 / 1e9
            print(
                f"rows={m:2d} {name:8s} N={n:5d} K={k:4d}: rows_linear {t_fused * 1000:7.1f} us "
                f"({gb / t_fused * 1e3:5.0f} GB/s), eager {t_eager * 1000:7.1f} us ({gb / t_eager * 1e3:5.0f} GB/s)",
                flush=True,
            )
        print(
            f"rows={m:2d} all projections of a step: rows_linear {totals[0]:.3f} ms, eager {totals[1]:.3f} ms"
        )


def attention_sweep(live: bool = False) -> None:
    """Time the decode-attention kernel over its launch parameters, for the cross (1500) and self (448) cases;
    with ``live`` at the live bench's shapes instead: cross rows of 50-400 positions (as ``live_steps``) and
    self rows of 20, at 64 and 149 rows. Each case prints its four fastest launches and the engine's own."""
    import triton.testing

    from voxserve.engine.attention import choose_splits, decode_attention

    h, d = 20, 64
    rng = np.random.default_rng(0)
    cases = [(1500, "live", b) for b in (64, 149)] + [(448, 20, b) for b in (64, 149)] if live else [
        (t, length, b) for t, length in ((1500, 1500), (448, 40)) for b in (1, 16, 64)
    ]  # fmt: skip
    for t, length, b in cases:
        k = torch.randn(b + 1, t, h * d, device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        q = torch.randn(b, h, d, device="cuda", dtype=torch.float16)
        rows = torch.arange(b, device="cuda")
        if length == "live":
            lengths = torch.from_numpy(rng.choice([50, 100, 200, 400], p=[0.3, 0.35, 0.25, 0.1], size=b))
        else:
            lengths = torch.full((b,), length)
        lengths = lengths.cuda()
        best = {}
        for splits in (1, 2) if live else (1, 2, 4, 8, 16, 32):  # (each launch compiles: few where enough)
            for block_n in (32, 64, 128):
                for warps in (2, 4, 8):
                    best[(splits, block_n, warps)] = triton.testing.do_bench(
                        functools.partial(
                            decode_attention,
                            q,
                            k,
                            v,
                            rows,
                            lengths,
                            splits=splits,
                            block_n=block_n,
                            num_warps=warps,
                        ),
                        warmup=5,
                        rep=20,
                    )
        ranked = sorted((ms, key) for key, ms in best.items())
        gb = 2 * int(lengths.sum()) * h * d * 2 / 1e9
        top = ", ".join(f"{ms * 1000:.1f}us s{s} n{n} w{w}" for ms, (s, n, w) in ranked[:4])
        # the engine's launch: its splits for the context, and 128-key tiles of two warps for cross-attention
        # (runner._logits; self-attention beyond the fused step's rows takes the kernel's defaults, 64 and 4)
        own = (choose_splits(b, h, t, torch.cuda.get_device_properties(0).multi_processor_count),)
        own += (128, 2) if t == 1500 else (64, 4)
        print(
            f"T={t} len={length} b={b}: {top}; the engine's s{own[0]} n{own[1]} w{own[2]} "
            f"{best.get(own, float('nan')) * 1000:.1f}us (floor {gb / 3.35e3 * 1e6:.1f}us at 3.35 TB/s)",
            flush=True,
        )


if __name__ == "__main__":
    if "--live-sweep" in sys.argv:  # the live shapes' sweep alone
        attention_sweep(live=True)
        sys.exit()
    if "--sweep" in sys.argv:
        sys.argv.remove("--sweep")
        attention_sweep()
    if "--projections" in sys.argv:
        sys.argv.remove("--projections")
        projection_sweep()
    main()
