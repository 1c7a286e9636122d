"""``voxserve bench``: speed of voxserve and its peers on the same work, written to one JSON file per run.

The work is fixed so that every side does exactly the same: seeded random weights at named Whisper dimensions
(one Hugging Face directory read by all sides), real speech cut into 30 s and 5 s windows, the prompt
<|startoftranscript|><|en|><|transcribe|><|notimestamps|>, greedy decoding with end-of-text suppressed, so a
30 s window decodes exactly 100 tokens and a 5 s window 20. bench/README.md describes the suites and figures;
the work itself is in ``voxserve.bench.runner``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def seconds_list(text: str) -> tuple[float, ...]:
    """ "1,2,4" -> (1.0, 2.0, 4.0), for argparse (a clear error on anything else)."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed against transformers and CTranslate2 on the same work",
        description="Measure offline throughput, request latency and decode-step latency of voxserve and of "
        "peer implementations on identical random weights and real speech; write one JSON per run and print "
        "a short table.",
    )
    p.add_argument(
        "--suite",
        choices=("offline", "latency", "step", "peers", "all"),
        default="all",
        help="offline, latency or step: that measurement of voxserve (peers only with --peers); "
        "peers: all three measurements of the peers alone; all: everything (default)",
    )
    p.add_argument("--dims", default="tiny", help="model dimensions: tiny, base or large-v3 (default tiny)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument(
        "--precision",
        help="voxserve's weights: fp32, fp16, bf16, or quantized: int8-dynamic (CPU; its output projection "
        "too), int8, fp8 (default fp32 on cpu, fp16 on cuda)",
    )
    p.add_argument(
        "--subject",
        default="reference",
        help="voxserve paths to measure, comma-separated: reference, engine (default reference)",
    )
    p.add_argument("--batch", type=int, default=1, help="offline batch size (default 1)")
    p.add_argument("--n-inputs", type=int, default=4, help="offline: number of 30 s inputs (default 4)")
    p.add_argument("--passes", type=int, default=1, help="offline: timed passes, median kept (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="latency and step: timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="latency and step: untimed runs first (default 1)")
    p.add_argument(
        "--isolate",
        action="store_true",
        help="measure each subject in a fresh process of its own, so nothing one leaves in the process (thread "
        "pools, allocator state) slows the next; costs a process start per subject and round",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every subject this many times, the subjects alternating round by round, so drift of a "
        "shared machine hits them alike; the file keeps every round, the table shows medians (default 1)",
    )
    p.add_argument("--step-batches", default="1,4", help="step: batch sizes, comma-separated (default 1,4)")
    p.add_argument(
        "--peers",
        help="comma-separated transformers, ctranslate2-int8, ctranslate2-float32, or none "
        "(default for --suite peers/all: transformers on cuda, all three on cpu)",
    )
    p.add_argument("--hf-precision", help="transformers' weights (default fp16 on cuda, fp32 on cpu)")
    p.add_argument(
        "--hf-cache",
        choices=("static", "dynamic"),
        default="static",
        help="transformers' KV cache (default static, its fastest)",
    )
    p.add_argument(
        "--hf-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="transformers' automatic torch.compile of static-cache decoding: 'auto' (default) leaves it on "
        "on CUDA, as transformers does by default and as DESIGN.md's reference figures were measured, and off "
        "on the CPU",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and CTranslate2 (default: usable cores); on the CPU voxserve's engine worker "
        "gets them and the calling thread (log-mel, the reference decoder) runs single-threaded",
    )
    p.add_argument(
        "--audio",
        type=Path,
        default=SHARED / "audio" / "hifitts-6097",
        help="folder of 16 kHz mono 16-bit WAV files, searched recursively (--streams: or 'espeak', sentences "
        "the demo model knows, synthesised on the spot)",
    )
    p.add_argument(
        "--tiktoken",
        type=Path,
        default=SHARED / "whisper-assets" / "multilingual.tiktoken",
        help="Whisper's multilingual.tiktoken ranks file",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=ROOT / ".cache" / "bench",
        help="where random-weight model directories are kept between runs",
    )
    p.add_argument("--seed", type=int, default=0, help="random weight seed (default 0)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="result folder")
    live = p.add_argument_group("live streams (--streams; voxserve/live/streambench.py)")
    live.add_argument(
        "--streams",
        help="simulate this many live callers (comma-separated counts, e.g. 1,4,16): "
        "partial-result latency p50/p99 and the streams held at p99 <= --target-ms",
    )
    live.add_argument(
        "--model", help="streams: a checkpoint (e.g. default, the demo model) instead of random --dims"
    )
    live.add_argument(
        "--stream-seconds", type=float, default=20.0, help="audio each caller sends (default 20)"
    )
    live.add_argument("--chunk-ms", type=int, default=100, help="audio per append event (default 100)")
    live.add_argument(
        "--partial-interval",
        type=float,
        default=0.3,
        help="seconds between a stream's partial re-decodes (default 0.3)",
    )
    live.add_argument(
        "--short-windows",
        action="store_true",
        help="encode only the audio an utterance has instead of a padded 30 s window",
    )
    live.add_argument(
        "--window-buckets",
        type=seconds_list,
        help="with --short-windows: the window lengths in seconds an utterance is padded up to, comma-separated "
        "(default 1,2,4,8,16; fewer lengths mean fewer encoder passes per admission, more padding)",
    )
    live.add_argument(
        "--tokens-per-second",
        type=float,
        default=3.0,
        help="random weights: tokens decoded per second of audio (default 3)",
    )
    live.add_argument("--slots", type=int, help="engine KV-cache slots (default: the engine's choice)")
    live.add_argument(
        "--max-admit", type=int, default=32, help="windows the engine admits per turn (default 32)"
    )
    live.add_argument(
        "--admit-wait-steps",
        type=int,
        default=0,
        help="decode steps the running rows may run before waiting windows join them, unless those number "
        "--admit-ratio times the running rows (default 0, as `voxserve serve`: join at every step)",
    )
    live.add_argument("--admit-ratio", type=float, default=2.0, help="see --admit-wait-steps (default 2)")
    live.add_argument(
        "--packed-encoder",
        action="store_true",
        help="encode an admission's short windows in one packed pass (EngineConfig.packed_encoder; default: one "
        "batch per window length, as `voxserve serve`)",
    )
    live.add_argument(
        "--packed-prefill",
        action="store_true",
        help="prefill an admission's prompts end to end in one pass (EngineConfig.packed_prefill; default: a "
        "batch padded to a captured shape, as `voxserve serve`)",
    )
    live.add_argument(
        "--overlap-admissions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run admissions on a CUDA stream of their own beside the decode steps (EngineConfig."
        "overlap_admissions; default: on, as `voxserve serve`; --no-overlap-admissions: one after the other)",
    )
    live.add_argument(
        "--encoder-precision",
        choices=("fp8",),
        help="the encoder's block Linears in this precision (fp8: E4M3 with per-token scales, compute capability "
        ">= 8.9), the rest of the model in --precision; default: the whole model in --precision",
    )
    live.add_argument(
        "--cross-kv",
        choices=("model", "int8"),
        default="model",
        help="the engine's cross-attention K/V cache: in the model's precision, or int8 with a scale per (position, "
        "head) (half the bytes each decode step reads; CUDA only; as `voxserve serve --cross-kv`; for live streams it "
        "measured slower: bench/README.md, stop 27)",
    )
    live.add_argument(
        "--mels",
        choices=("host", "engine"),
        default="engine",
        help="where each window's log-mel is made: engine (from the window's audio on the engine's device, batched "
        "per admission; the default, as `voxserve serve`'s VOXSERVE_REALTIME_MELS) or host (worker threads)",
    )
    live.add_argument(
        "--engine-process",
        action="store_true",
        help="run the engine in a process of its own (engine/remote.py), so that its thread does not share a GIL "
        "with the event loop serving the streams; default: a thread of this process, as `voxserve serve`",
    )
    live.add_argument("--target-ms", type=float, default=300.0, help="p99 target for a held stream count")
    live.add_argument(
        "--vad-model", type=Path, default=SHARED / "vad" / "silero_vad.onnx", help="Silero VAD ONNX file"
    )
    live.add_argument(
        "--transport",
        choices=("inproc", "ws", "server"),
        default="inproc",
        help="inproc: callers drive the sessions directly; ws: uvicorn and the WebSocket route, callers in "
        "client processes; server: the same callers against `voxserve serve`'s whole application (its "
        "registry, runtime and metrics; with --engine-process, as `voxserve serve --engine-process`)",
    )
    live.add_argument(
        "--vad",
        choices=("silero", "oracle"),
        default="silero",
        help="silero: the server's VAD; oracle: speech events at the known utterance bounds (no onnxruntime)",
    )
    p.set_defaults(func=run)  # fmt: skip


# switches that are on unless --no-... is given: spelled out when off
ON_BY_DEFAULT = ("overlap_admissions",)


def command_line(args: argparse.Namespace) -> list[str]:
    """The run as one command line with every option spelled out (defaults included), for the result file."""
    parts = ["voxserve", "bench"]
    for key, value in sorted(vars(args).items()):
        if key in ON_BY_DEFAULT and value is False:
            parts.append("--no-" + key.replace("_", "-"))
            continue
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, tuple):  # as typed: comma-separated
            value = ",".join(f"{v:g}" for v in value)
        parts += [flag] if value is True else [flag, str(value)]
    return parts


def run(args: argparse.Namespace) -> int:
    if args.streams:
        return run_streams(args)
    import torch

    from ..bench.report import format_table
    from ..bench.runner import BenchPlan, run_plan
    from ..bench.weights import BenchError

    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = device == "cuda"
        try:
            step_batches = tuple(sorted({int(b) for b in args.step_batches.split(",") if b.strip()}))
        except ValueError:
            raise BenchError(
                f"--step-batches must be comma-separated integers, not {args.step_batches!r}"
            ) from None
        if args.peers is not None:
            peers = tuple(p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none")
        elif args.suite in ("peers", "all"):
            peers = ("transformers",) if cuda else ("transformers", "ctranslate2-int8", "ctranslate2-float32")
        else:
            peers = ()
        plan = BenchPlan(
            suite=args.suite,
            dims=args.dims,
            device=device,
            precision=args.precision or ("fp16" if cuda else "fp32"),
            peers=peers,
            audio=args.audio,
            tiktoken=args.tiktoken,
            cache=args.cache,
            out=args.out,
            subjects=tuple(s.strip() for s in args.subject.split(",") if s.strip()),
            batch=args.batch,
            n_inputs=args.n_inputs,
            passes=args.passes,
            repeats=args.repeats,
            warmup=args.warmup,
            step_batches=step_batches,
            threads=args.threads or len(os.sched_getaffinity(0)),
            hf_precision=args.hf_precision or ("fp16" if cuda else "fp32"),
            hf_cache=args.hf_cache,
            hf_compile=args.hf_compile == "on" or (args.hf_compile == "auto" and cuda),
            seed=args.seed,
            rounds=args.rounds,
            isolate=args.isolate,
        )
        doc, path = run_plan(plan, command_line(args))
    except BenchError as e:
        print(f"voxserve bench: error: {e}", file=sys.stderr)
        return 1
    print(f"bench: wrote {path}", file=sys.stderr)
    print(format_table(doc))
    return 0


def run_streams(args: argparse.Namespace) -> int:
    import torch

    from ..bench.weights import BenchError
    from ..engine.threads import engine_owns_cpu_threads
    from ..live.streambench import StreamBenchPlan, format_streams
    from ..live.streambench import run_streams as measure

    try:
        try:
            counts = tuple(int(n) for n in args.streams.split(",") if n.strip())
        except ValueError:
            raise BenchError(f"--streams must be comma-separated integers, not {args.streams!r}") from None
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":  # the engine's worker gets the threads, the callers one each (engine/threads.py)
            engine_owns_cpu_threads(args.threads)
        elif args.threads:
            torch.set_num_threads(args.threads)
        plan = StreamBenchPlan(
            streams=counts,
            device=device,
            precision=args.precision or ("fp16" if device == "cuda" else "fp32"),
            audio=args.audio,
            tiktoken=args.tiktoken,
            out=args.out,
            dims=args.dims,
            model=args.model,
            seconds=args.stream_seconds,
            chunk_ms=args.chunk_ms,
            partial_interval_s=args.partial_interval,
            short_windows=args.short_windows,
            window_buckets_s=args.window_buckets,
            tokens_per_second=args.tokens_per_second,
            slots=args.slots,
            max_admit=args.max_admit,
            admit_wait_steps=args.admit_wait_steps,
            admit_ratio=args.admit_ratio,
            packed_encoder=args.packed_encoder,
            encoder_precision=args.encoder_precision,
            cross_kv=args.cross_kv,
            packed_prefill=args.packed_prefill,
            overlap_admissions=args.overlap_admissions,
            mels=args.mels,
            target_ms=args.target_ms,
            vad_model=args.vad_model,
            vad=args.vad,
            transport=args.transport,
            engine_process=args.engine_process,
            seed=args.seed,
        )
        doc, path = measure(
            plan, command_line(args), log=lambda line: print(f"bench: {line}", file=sys.stderr)
        )
    except BenchError as e:
        print(f"voxserve bench: error: {e}", file=sys.stderr)
        return 1
    print(f"bench: wrote {path}", file=sys.stderr)
    print(format_streams(doc))
    return 0
