"""Development probe of engine builds on a GPU: build once, then load with and without warm-up and time the first
requests against the hundredth (not the official benchmark: see `voxserve bench`).

PYTHONPATH=. python3 bench/probe_build.py --dims large-v3 --precision fp8 --max-batch 64 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.bench.inputs import speech_clips, speech_windows
from voxserve.bench.weights import random_hf_dir, resolve_dims
from voxserve.build import BuildMismatchError, build_engine, load_build, load_engine
from voxserve.decoding.batched import BatchDecoder
from voxserve.decoding.options import DecodingOptions


def request_times(engine: object, loaded: object, mel: torch.Tensor, n: int) -> list[float]:
    """Seconds for ``n`` one-window requests in a row, each exactly 100 tokens (end-of-text suppressed)."""
    options = DecodingOptions(
        language="en",
        without_timestamps=True,
        sample_len=100,
        suppress_tokens=(-1, loaded.tokenizer.eot),
        suppress_blank=False,
    )
    decoder = BatchDecoder(engine, loaded.model, loaded.tokenizer)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        (result,) = decoder.decode(mel[None], options)
        times.append(time.perf_counter() - t)
        assert len(result.tokens) == 100, len(result.tokens)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="large-v3")
    ap.add_argument("--precision", default="fp8")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--tiktoken", type=Path, default=Path(".devdata/multilingual.tiktoken"))
    ap.add_argument("--audio", type=Path, default=Path(".devdata/hifitts-6097"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/voxserve-build"))
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None, help="folder for probe_build.json")
    args = ap.parse_args()

    dims = resolve_dims(args.dims)
    source = random_hf_dir(dims, args.work / f"random-{args.dims}", args.tiktoken)
    clips = speech_windows(speech_clips(args.audio), 30.0, 8)  # eight 30 s windows of joined speech
    build_dir = args.work / f"{args.dims}-{args.precision}-b{args.max_batch}"
    t = time.perf_counter()
    built = build_engine(
        source,
        build_dir,
        precision=args.precision,
        max_batch=args.max_batch,
        audio=clips,
        language="en",
        max_windows=8,
        sample_len=100,
        overwrite=True,
    )
    report: dict = {"build_s": round(time.perf_counter() - t, 1), "manifest": built.manifest}
    print(f"built {build_dir} in {report['build_s']} s: {json.dumps(built.manifest['target'])}", flush=True)
    if built.gate is not None:
        print(f"gate: {built.gate.summary()}", flush=True)

    audio = torch.as_tensor(clips[0])
    for warm in (False, True):
        t = time.perf_counter()
        engine, loaded, _ = load_engine(build_dir, warmup=warm)
        load_s = time.perf_counter() - t
        mel = pad_or_trim(log_mel_spectrogram(audio.to(loaded.device), dims.n_mels))
        try:
            times = request_times(engine, loaded, mel, args.requests)
        finally:
            engine.close()
        steady = statistics.median(times[len(times) // 10 :])
        key = "warm" if warm else "cold"
        report[key] = {
            "load_s": round(load_s, 2),
            "first_ms": round(times[0] * 1000, 2),
            "second_ms": round(times[1] * 1000, 2),
            "hundredth_ms": round(times[-1] * 1000, 2),
            "median_ms": round(steady * 1000, 2),
        }
        print(f"{key} load ({'with' if warm else 'without'} warm-up): {json.dumps(report[key])}", flush=True)
        del engine, loaded
        torch.cuda.empty_cache()

    elsewhere = args.work / "elsewhere"
    shutil.rmtree(elsewhere, ignore_errors=True)
    shutil.copytree(build_dir, elsewhere)
    manifest = json.loads((elsewhere / "manifest.json").read_text())
    manifest["target"]["compute_capability"] = "8.0"
    (elsewhere / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_build(elsewhere)
        report["mismatch"] = "NOT REFUSED"
    except BuildMismatchError as e:
        report["mismatch"] = str(e)
    print(f"mismatched manifest: {report['mismatch']}", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_build.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
