"""CPU timing of each precision: encoder pass over one 30 s window and one cached decoder step at batch 1.

``python -m voxserve.quant.cpu_bench --dims tiny base`` prints one line per (dims, precision). Random weights;
the decoder step runs the model's own cached ``decoder.forward`` for one token at position ``--position``
(the middle of a 100-token decode), so it times the Linears and attention, not the engine's scheduling.
Times are the minimum and the median over repeats: the minimum is the machine's speed, the median shows noise
from other work on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch

from ..bench.weights import NAMED_DIMS
from ..model.load import init_random
from ..model.quant import quantize_model
from ..model.whisper import Whisper

CPU_PRECISIONS = ("fp32", "bf16", "int8", "int8-dynamic")


def _times(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3, statistics.median(ts) * 1e3


@torch.inference_mode()
def time_model(model: Whisper, *, encoder_repeats: int, step_repeats: int, position: int) -> dict[str, float]:
    d = model.dims
    mel = torch.randn(1, d.n_mels, 3000, generator=torch.Generator().manual_seed(0))
    enc_min, enc_med = _times(lambda: model.encoder(mel.to(model.dtype)), encoder_repeats)
    features = model.encoder(mel.to(model.dtype))
    cache = model.new_cache(1)
    cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(features)
    token = torch.tensor([[1000]])
    pos = torch.tensor([[position]])
    step_min, step_med = _times(
        lambda: model.decoder(token, pos, cache, position + 1), step_repeats, warmup=5
    )
    return {
        "encoder_ms": enc_min,
        "encoder_median_ms": enc_med,
        "step_ms": step_min,
        "step_median_ms": step_med,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", nargs="+", default=["tiny", "base"], choices=sorted(NAMED_DIMS))
    p.add_argument("--precisions", nargs="+", default=list(CPU_PRECISIONS), choices=CPU_PRECISIONS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoder-repeats", type=int, default=5)
    p.add_argument("--step-repeats", type=int, default=50)
    p.add_argument("--position", type=int, default=54)
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.dims:
        base = init_random(NAMED_DIMS[name], seed=0)
        for precision in args.precisions:
            model = quantize_model(copy.deepcopy(base), precision)
            r = time_model(
                model,
                encoder_repeats=args.encoder_repeats,
                step_repeats=args.step_repeats,
                position=args.position,
            )
            row = {"dims": name, "precision": precision, "threads": args.threads, **r}
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{name:5s} {precision:12s} encoder {r['encoder_ms']:8.1f} ms (median {r['encoder_median_ms']:.1f})"
                    f"   decode step {r['step_ms']:6.2f} ms (median {r['step_median_ms']:.2f})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
