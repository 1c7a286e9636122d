"""The CPU decode step at one row: the one-row decoder layers (voxserve/engine/cpu_row.py) against the general path,
or with ``--part select`` the one-row token pick (PolicyState.select_row) against ``select``, alternating in one
process so that the shared machine's drift hits both alike.

python3 bench/profile_cpu_row.py --dims tiny --pairs 8 [--part layers|select]

Each pair decodes one 30 s window of real speech (100 tokens, end-of-text suppressed, as `voxserve bench`) once
per path, through the engine on `--threads` intra-op threads; the engine's steps are timed by wrapping the
runner's CPU step, its decoder layers and the output projection. Prints each path's per-pair median times and their
median over pairs, the median of the pairs' differences, and checks that both paths decoded the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from voxserve.engine import threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="tiny", help="tiny or base (random weights, as voxserve bench)")
    ap.add_argument("--pairs", type=int, default=8, help="decodes per path, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"), help="random weights' directory")
    ap.add_argument(
        "--part", choices=("layers", "select"), default="layers", help="which one-row path to toggle"
    )
    args = ap.parse_args()
    threads.engine_owns_cpu_threads(args.threads)  # before any torch work (engine/threads.py)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# python3 bench/profile_cpu_row.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%dT%H:%M')}, {commit})"
    )

    from voxserve.bench.inputs import features, speech_clips, speech_windows
    from voxserve.bench.subjects import engine_subject
    from voxserve.bench.weights import bench_tokenizer, random_hf_dir, resolve_dims
    from voxserve.cli.bench import SHARED
    from voxserve.engine import cpu_row, policy
    from voxserve.engine.runner import Runner
    from voxserve.model import whisper

    dims = resolve_dims(args.dims)
    tiktoken = SHARED / "whisper-assets" / "multilingual.tiktoken"
    hf_dir = random_hf_dir(dims, args.cache / f"whisper-{args.dims}-random-seed0", tiktoken)
    tok = bench_tokenizer(dims, tiktoken)
    times: dict[str, list[float]] = defaultdict(list)

    def timed(cls: type, name: str, label: str) -> None:
        inner = getattr(cls, name)

        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            out = inner(*a, **k)
            times[label].append(time.perf_counter() - t)
            return out

        setattr(cls, name, wrapper)

    timed(Runner, "_step_cpu", "step")
    timed(Runner, "_decoder_layers", "layers (general)")
    timed(cpu_row.RowLayers, "__call__", "layers (one row)")
    timed(whisper.TextDecoder, "logits", "output projection")
    timed(policy.PolicyState, "select", "select")
    timed(policy.PolicyState, "select_row", "select (one row)")
    subject = engine_subject(hf_dir, tok, torch.device("cpu"), "fp32")
    runner = subject.close.__self__.runner  # the engine's runner (the subject's close is the engine's)
    row_layers = runner._row_layers
    if row_layers is None:
        raise SystemExit("the one-row path does not apply to this model")
    audio = speech_windows(speech_clips(SHARED / "audio" / "hifitts-6097"), 30.0, 1)
    mel = features(audio, dims.n_mels, torch.device("cpu"))
    results: dict[str, dict[str, list[float]]] = {"one-row": defaultdict(list), "general": defaultdict(list)}
    tokens = {}
    for _ in range(args.pairs):
        for path in results:
            if args.part == "layers":
                runner._row_layers = row_layers if path == "one-row" else None
            else:
                runner.row_select = path == "one-row"
            times.clear()
            tokens[path] = subject.decode(mel, 100)
            for label, values in times.items():
                results[path][label].append(statistics.median(values) * 1e3)
    subject.close()
    if tokens["one-row"] != tokens["general"]:
        print("warning: the two paths decoded different tokens")
    for path, figures in results.items():
        print(f"{path}:")
        for label, values in figures.items():
            print(
                f"  {label:18s} median {statistics.median(values):6.3f} ms  [{' '.join(f'{v:.2f}' for v in values)}]"
            )
    pairs = {
        "step": ("step", "step"),
        "output projection": ("output projection", "output projection"),
        **(
            {"decoder layers": ("layers (general)", "layers (one row)")}
            if args.part == "layers"
            else {"token pick": ("select", "select (one row)")}
        ),
    }
    for name, (general, one_row) in pairs.items():
        gains = zip(results["general"][general], results["one-row"][one_row], strict=True)
        print(
            f"{name}, general minus one-row, pair by pair: median {statistics.median(g - o for g, o in gains):+.3f} ms"
        )


if __name__ == "__main__":
    main()
