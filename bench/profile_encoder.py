"""Development profile: the live engine's packed encoder pass, in fp16 and with the encoder's block Linears in
fp8, by kernel.

Why: at 400 live streams an admission's packed encoder pass is the largest part of the device's time (~26 ms for
~4,500 positions on an H100), and the fp8 encoder (`voxserve bench --streams --encoder-precision fp8`) did not
shorten it (29.0 against 26.0-28.1 ms, stop 24) although the matrix products were ~64% of the fp16 pass. This
times one pass of ``--rows`` live-like windows (the bench's window lengths: 1, 2, 4 and 8 s in proportions near
its ~2.6 s utterances) as the engine replays it, from its CUDA graph, then lists one pass's kernels under
torch.profiler, for fp16 and then fp8 (the same weights, quantized as the stream bench does: per-token
activation scales, no calibration), and fp8 with the layer norms and GELU inside the activations' quantization
(``fp8-folded``; off by default since it measured slower, qlinear.FOLD_INTO_FP8). Prints, writes nothing.

    PYTHONPATH=. python3 bench/profile_encoder.py --tiktoken .devdata/whisper-assets/multilingual.tiktoken \\
        [--dims large-v3] [--rows 52] [--precisions fp16,fp8,fp8-folded]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from profile_step import table  # noqa: I001 - a sibling script
from torch.profiler import ProfilerActivity, profile

from voxserve.bench.weights import bench_tokenizer, resolve_dims
from voxserve.decoding.batched import make_engine
from voxserve.engine.types import EngineConfig
from voxserve.live.service import LiveOptions
from voxserve.model import qlinear
from voxserve.model.load import init_random
from voxserve.model.qlinear import Fp8Linear
from voxserve.model.quant import quantize_encoder

KINDS = (
    ("matrix products", ("gemm", "nvjet", "cutlass", "scaled_mm", "sm90")),
    ("attention", ("flash",)),
    ("fp8 quantization", ("_quantize_rows",)),  # (with the layer norms and GELU where folded)
)


def kind(name: str) -> str:
    low = name.lower()
    return next((label for label, keys in KINDS if any(k in low for k in keys)), "other")


@contextmanager
def folded() -> Iterator[None]:
    """fp8 Linears with their layer norm / GELU inside the activations' quantization (qlinear.FOLD_INTO_FP8)."""
    before = qlinear.FOLD_INTO_FP8
    qlinear.FOLD_INTO_FP8 = True
    try:
        yield
    finally:
        qlinear.FOLD_INTO_FP8 = before


def one_precision(model: torch.nn.Module, tok: object, precision: str, rows: int, frames: list[int]) -> None:
    if precision.startswith("fp8") and not any(isinstance(m, Fp8Linear) for m in model.modules()):
        quantize_encoder(model, "fp8")
    with folded() if precision == "fp8-folded" else nullcontext():
        time_pass(model, tok, precision, rows, frames)


def time_pass(model: torch.nn.Module, tok: object, precision: str, rows: int, frames: list[int]) -> None:
    lengths = LiveOptions(short_windows=True).short_window_frames(2 * model.dims.n_audio_ctx)
    config = EngineConfig(max_slots=rows, max_admit=rows, short_window_frames=lengths, packed_encoder=True)
    eng = make_engine(model, tok, config)  # (no warm-up: the untimed passes below capture the pass's graph)
    eng.close()
    runner = eng.runner
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(model.dims.n_mels, f, generator=g).clamp(-1, 1).cuda() for f in frames]
    slots = list(range(rows))
    with torch.inference_mode():
        for _ in range(3):
            runner.encode_packed(mels, slots)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            runner.encode_packed(mels, slots)
        end.record()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.encode_packed(mels, slots)
            torch.cuda.synchronize()
    used = sum(frames) // 2
    print(
        f"== {precision}: {rows} windows, {used} positions: {start.elapsed_time(end) / 20:.2f} ms a pass (graph)"
    )
    by_kind: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA":
            by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0.0) + e.device_time_total / 1000
    print("   by kind: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(by_kind.items())))
    table(prof, f"{precision} packed pass", rows=14)
    del eng, runner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="large-v3")
    p.add_argument("--tiktoken", type=Path, required=True)
    p.add_argument("--rows", type=int, default=52, help="windows in the pass (default 52, as at 400 streams)")
    p.add_argument(
        "--precisions",
        default="fp16,fp8,fp8-folded",
        help="comma-separated, in order (fp8 quantizes in place; fp8-folded: norms and GELU inside the quantization)",
    )
    args = p.parse_args()
    dims = resolve_dims(args.dims)
    tok = bench_tokenizer(dims, args.tiktoken)
    model = init_random(dims, seed=0).to("cuda", torch.float16).eval()
    rng = np.random.default_rng(0)
    frames = [int(f) for f in rng.choice([100, 200, 400, 800], p=[0.3, 0.35, 0.25, 0.1], size=args.rows)]
    for precision in args.precisions.split(","):
        one_precision(model, tok, precision.strip(), args.rows, frames)


if __name__ == "__main__":
    main()
