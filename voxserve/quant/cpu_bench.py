"""CPU timing of each precision: encoder pass over one 30 s window and one cached decoder step at batch 1.

``python -m voxserve.quant.cpu_bench --dims tiny base`` prints one line per (dims, precision). Random weights;
the decoder step runs the model's own cached ``decoder.forward`` for one token at position ``--position``
(the middle of a 100-token decode), so it times the Linears and attention, not the engine's scheduling.
Precisions are timed in interleaved rounds; times are the minimum (the machine's speed) and the median (which
shows the noise from other work on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from ..bench.weights import NAMED_DIMS
from ..model.load import init_random
from ..model.quant import quantize_model
from ..model.whisper import Whisper

CPU_PRECISIONS = ("fp32", "bf16", "int8", "int8-dynamic")


class _Case:
    """One model ready to time: its encoder input and a decoder cache holding one window's cross K/V."""

    def __init__(self, model: Whisper, position: int) -> None:
        d = model.dims
        self.model, self.position = model, position
        self.mel = torch.randn(1, d.n_mels, 3000, generator=torch.Generator().manual_seed(0)).to(model.dtype)
        with torch.inference_mode():
            features = model.encoder(self.mel)
            self.cache = model.new_cache(1)
            self.cache.cross_k[:], self.cache.cross_v[:] = model.decoder.cross_kv(features)
        self.token, self.pos = torch.tensor([[1000]]), torch.tensor([[position]])
        self.encoder: list[float] = []
        self.step: list[float] = []

    @torch.inference_mode()
    def run(self, steps: int) -> None:
        t = time.perf_counter()
        self.model.encoder(self.mel)
        self.encoder.append(time.perf_counter() - t)
        for _ in range(steps):
            t = time.perf_counter()
            self.model.decoder(self.token, self.pos, self.cache, self.position + 1)
            self.step.append(time.perf_counter() - t)


def time_precisions(
    base: Whisper, precisions: list[str], *, rounds: int, steps: int, position: int
) -> dict[str, dict[str, float]]:
    """Interleaved rounds (each precision in turn, ``rounds`` times), so load from other processes on a shared
    machine spreads over all precisions alike; the minimum over rounds is the uncontended speed."""
    cases = {p: _Case(quantize_model(copy.deepcopy(base), p), position) for p in precisions}
    for case in cases.values():  # warm-up: allocator, packed weights, thread pool
        case.run(3)
        case.encoder.clear()
        case.step.clear()
    for _ in range(rounds):
        for case in cases.values():
            case.run(steps)
    return {
        p: {
            "encoder_ms": min(c.encoder) * 1e3,
            "encoder_median_ms": statistics.median(c.encoder) * 1e3,
            "step_ms": min(c.step) * 1e3,
            "step_median_ms": statistics.median(c.step) * 1e3,
        }
        for p, c in cases.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", nargs="+", default=["tiny", "base"], choices=sorted(NAMED_DIMS))
    p.add_argument("--precisions", nargs="+", default=list(CPU_PRECISIONS), choices=CPU_PRECISIONS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="encoder passes per precision, interleaved")
    p.add_argument("--steps", type=int, default=20, help="decoder steps per precision per round")
    p.add_argument("--position", type=int, default=54)
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.dims:
        base = init_random(NAMED_DIMS[name], seed=0)
        results = time_precisions(
            base, args.precisions, rounds=args.rounds, steps=args.steps, position=args.position
        )
        for precision, r in results.items():
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
