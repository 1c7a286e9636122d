"""``voxserve bench --streams N``: N simulated callers on the live path, at real-time pace.

Each caller is a :class:`LiveSession` on one shared :class:`LiveService` (the server's code below the WebSocket:
base64 pcm16 chunks, VAD batched across streams, partial re-decodes and finals on the shared engine at realtime
priority). Callers speak ../shared speech (utterances joined with short pauses, each caller starting elsewhere)
in ``chunk_ms`` chunks, sent on a real-time schedule with staggered starts.

The figure is the latency from audio arriving to its text appearing: for every chunk sent during speech, the
time from its scheduled send to the first delta (partial) or completed event whose audio covers it. So it
includes the wait for the next partial, the VAD, the engine queue, the encoder and every decode step. p50/p99
come from chunks sent after a warm-up; a stream count is held when p99 <= the target (300 ms). With random
weights each decode yields exactly ``tokens_per_second`` tokens per second of audio (end-of-text suppressed),
the length of real speech's transcripts; with a real checkpoint (``--model``) decoding is normal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import WhisperModel, load_model
from ..audio.vad import SileroVAD, VADError
from ..bench import machine
from ..bench.inputs import speech_clips
from ..bench.weights import BenchError, bench_tokenizer, resolve_dims
from ..config import SAMPLE_RATE, resolve_dtype
from ..decoding.batched import make_engine
from ..engine import mels, scatter
from ..engine.engine import Engine, EngineError
from ..engine.remote import EngineProcess, engine_info
from ..engine.threads import engine_owns_cpu_threads, engine_threads
from ..engine.types import EngineConfig
from ..heap import frozen_heap
from ..model import fp8rows
from ..model.load import CheckpointInfo, init_random
from ..model.quant import QuantizationError, quantize_encoder
from ..model.whisper import Whisper
from .callers import Track, caller_audio, chunk_payloads, pcm16, session_update, use_oracle
from .service import LiveOptions, LiveService
from .session import LiveSession

SCHEMA = "voxserve.bench.streams/1"
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class StreamBenchPlan:
    streams: tuple[int, ...]  # stream counts to measure, in order
    device: str
    precision: str
    audio: Path
    tiktoken: Path
    out: Path
    dims: str = "tiny"
    model: str | None = None  # a checkpoint (e.g. "default", the demo model) instead of random weights
    seconds: float = 20.0  # audio each caller sends
    chunk_ms: int = 100
    partial_interval_s: float = 0.3
    short_windows: bool = False
    # with short_windows: the window lengths (seconds) an utterance is padded up to; None: LiveOptions' own
    window_buckets_s: tuple[float, ...] | None = None
    tokens_per_second: float = 3.0
    slots: int | None = None  # engine slots; None: the engine's own choice
    max_admit: int = 32  # windows the engine admits (and encodes) per turn
    admit_wait_steps: int = EngineConfig.admit_wait_steps  # the engine's admission policy, as the server's
    admit_ratio: float = EngineConfig.admit_ratio
    packed_encoder: bool = EngineConfig.packed_encoder
    packed_prefill: bool = EngineConfig.packed_prefill
    # on, as the server's default (engine_overlap_admissions): it paid at every stream count measured
    overlap_admissions: bool = True
    mels: str = LiveOptions.mels  # log-mels made by the engine from audio ("engine"), or on the host
    # the encoder's block Linears in this quantized precision ("fp8"), the rest in ``precision``; None: all
    encoder_precision: str | None = None
    cross_kv: str = EngineConfig.cross_kv  # "int8": the cross K/V cache a byte an element (CUDA only)
    target_ms: float = 300.0
    warmup_s: float = 3.0  # chunks sent before this (per run) are not counted
    vad_model: Path | None = None
    # "silero" (the server's VAD) or "oracle" (events at the known utterance bounds; needs no onnxruntime)
    vad: str = "silero"
    # the engine in a process of its own (engine/remote.py), so its thread does not share the event loop's GIL
    engine_process: bool = False
    # "inproc": callers call the sessions directly; "ws": uvicorn and the WebSocket route, callers in client
    # processes (voxserve/live/wsbench.py); "server": the same callers against `voxserve serve`'s whole
    # application (voxserve/live/serverbench.py)
    transport: str = "inproc"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.streams or any(n < 1 for n in self.streams):
            raise BenchError(f"--streams needs positive stream counts, got {self.streams}")
        if self.seconds <= self.warmup_s:
            raise BenchError(f"--stream-seconds ({self.seconds}) must exceed the warm-up ({self.warmup_s} s)")
        if not 10 <= self.chunk_ms <= 2000:
            raise BenchError(f"--chunk-ms must be 10..2000, got {self.chunk_ms}")
        if self.transport not in ("inproc", "ws", "server"):
            raise BenchError(f"--transport must be inproc, ws or server, got {self.transport!r}")
        if self.vad not in ("silero", "oracle"):
            raise BenchError(f"--vad must be silero or oracle, got {self.vad!r}")
        if self.mels not in ("host", "engine"):
            raise BenchError(f"--mels must be host or engine, got {self.mels!r}")
        if self.window_buckets_s is not None and (
            not self.window_buckets_s or any(not 0 < b <= 30 for b in self.window_buckets_s)
        ):
            raise BenchError(f"--window-buckets must be seconds in (0, 30], got {self.window_buckets_s}")
        if self.precision not in PRECISIONS:
            raise BenchError(f"--precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.encoder_precision not in (None, "fp8"):
            raise BenchError(f"--encoder-precision must be fp8, got {self.encoder_precision!r}")
        if self.cross_kv not in ("model", "int8"):
            raise BenchError(f"--cross-kv must be model or int8, got {self.cross_kv!r}")
        if self.cross_kv == "int8" and not self.device.startswith("cuda"):
            raise BenchError("--cross-kv int8 runs on CUDA only: --device cuda")
        if self.encoder_precision is not None and self.precision == "fp32":
            raise BenchError(
                "--encoder-precision fp8 runs beside a half-precision model: --precision fp16 or bf16"
            )


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


ESPEAK = "espeak"  # --audio espeak: sentences the demo model was trained on, spoken by espeak-ng on the spot


def bench_clips(audio: Path | str) -> list[np.ndarray]:
    """The callers' utterances: WAV files under ``audio``, or with "espeak" 60 LJSpeech sentences of the demo
    model's training text's style synthesised by espeak-ng (real speech means nothing to the demo model)."""
    if str(audio) != ESPEAK:
        return speech_clips(Path(audio))
    from ..train.espeak import EspeakError
    from ..train.synth import speak
    from .window_accuracy import SHARED, sentences

    try:
        texts = sentences(SHARED / "text" / "ljspeech-metadata.csv", 60, ids=("LJ044", "LJ045", "LJ046"))
        return [speak(t) for t in texts]
    except (EspeakError, OSError) as e:
        raise BenchError(f"--audio espeak: {e}") from None


async def _caller(
    service: LiveService,
    track: Track,
    payloads: list[str],
    period: float,
    start: float,
    language: str | None,
    lag: list[float],
    oracle: bool,
) -> None:
    async def drop(event: dict[str, Any]) -> None:
        return None

    session = LiveSession(service, drop)
    if oracle:
        use_oracle(session, track)
    await session.handle(session_update(language))
    try:
        for k, payload in enumerate(payloads):
            due = start + k * period
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            lag.append(time.monotonic() - due)
            await session.append(payload, arrived=due)
        if session.item is not None:
            await session.commit()
        deadline = time.monotonic() + 30
        while session.tasks and time.monotonic() < deadline:  # the last finals
            await asyncio.sleep(0.05)
    finally:
        await session.close()


def start_offsets(n: int, plan: StreamBenchPlan) -> np.ndarray:
    """When each of ``n`` callers starts, in seconds after a common start: staggered over one partial interval,
    so callers do not all ask for partials at the same instant."""
    rng = np.random.default_rng(plan.seed + n)
    return rng.uniform(0, max(plan.partial_interval_s, plan.chunk_ms / 1000), n)


async def _simulate(
    n: int, tracks: list[Track], service: LiveService, plan: StreamBenchPlan, language: str | None
) -> tuple[float, list[float]]:
    chunk = plan.chunk_ms * SAMPLE_RATE // 1000
    # Every caller's chunks encoded before the schedule starts: the callers' own work is not the server's, and
    # done at each caller's start it took ~20% of the shared event loop (host-only profile, 400 streams, stop 25).
    payloads = [chunk_payloads(pcm16(tracks[i].audio), chunk) for i in range(n)]
    t0 = time.monotonic() + 0.5
    offsets = start_offsets(n, plan)
    lag: list[float] = []
    oracle = plan.vad == "oracle"
    await asyncio.gather(
        *(
            _caller(
                service, tracks[i], payloads[i], chunk / SAMPLE_RATE, t0 + offsets[i], language, lag, oracle
            )
            for i in range(n)
        )
    )
    await service.close()
    return t0 + float(offsets.max()) + plan.warmup_s, lag


def _over_websockets(
    n: int,
    tracks: list[Track],
    service: LiveService,
    plan: StreamBenchPlan,
    language: str | None,
    at_start: Callable[[], None],
) -> tuple[list[float], int, list[float]]:
    from . import wsbench

    server, thread, port = wsbench.serve(service, tracks, plan.vad == "oracle")
    try:
        return wsbench.run_clients(
            port,
            tracks[:n],
            plan.chunk_ms,
            start_offsets(n, plan).tolist(),
            language,
            plan.warmup_s,
            at_start,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _load_whisper(
    plan: StreamBenchPlan, device: torch.device, log: Any = print
) -> tuple[WhisperModel, float | None]:
    """The plan's model on ``device`` ("meta": its dims and tokenizer only, for a caller whose engine runs in a
    process of its own), and the fixed tokens per second of audio (random weights) or None."""
    dtype = resolve_dtype(PRECISIONS[plan.precision])
    if plan.model is not None:
        whisper = load_model(plan.model, device="cpu" if device.type == "meta" else device, dtype=dtype)
        log(f"model {whisper.checkpoint.source}")
        return whisper, _fixed_rate(plan)
    dims = resolve_dims(plan.dims)
    tok = bench_tokenizer(dims, plan.tiktoken)
    if device.type == "meta":
        with torch.device("meta"):
            model = Whisper(dims)
    else:
        model = init_random(dims, seed=plan.seed).to(device=device, dtype=dtype).eval()
    whisper = WhisperModel(model, tok, CheckpointInfo(f"random {plan.dims}", "random", None), is_random=True)
    log(f"random {plan.dims} weights, {plan.tokens_per_second:g} tokens per second of audio")
    if plan.encoder_precision is not None and device.type != "meta":
        try:  # per-token (dynamic) activation scales: random weights have no audio to calibrate on
            quantize_encoder(whisper.model, plan.encoder_precision)
        except QuantizationError as e:
            raise BenchError(f"--encoder-precision {plan.encoder_precision}: {e}") from None
        log(f"encoder Linears in {plan.encoder_precision}, the rest in {plan.precision}")
    return whisper, _fixed_rate(plan)


def _fixed_rate(plan: StreamBenchPlan) -> float | None:
    """Tokens each decode yields per second of audio: fixed for random weights, None for a checkpoint."""
    return None if plan.model is not None else plan.tokens_per_second


def _live_options(plan: StreamBenchPlan, streams: int, fixed: float | None) -> LiveOptions:
    """The sessions' options for ``streams`` callers (``fixed``: tokens per second of audio, random weights)."""
    buckets = {} if plan.window_buckets_s is None else {"window_buckets_s": tuple(plan.window_buckets_s)}
    return LiveOptions(
        partial_interval_s=plan.partial_interval_s,
        short_windows=plan.short_windows,
        **buckets,
        fixed_tokens_per_second=fixed,
        max_streams=streams,
        max_streams_per_key=streams,
        max_ahead_s=5.0,
        idle_timeout_s=3600.0,
        mels=plan.mels,
    )


def _engine_config(plan: StreamBenchPlan, whisper: WhisperModel) -> EngineConfig:
    buckets = {} if plan.window_buckets_s is None else {"window_buckets_s": tuple(plan.window_buckets_s)}
    frames = LiveOptions(short_windows=plan.short_windows, **buckets).short_window_frames(
        2 * whisper.model.dims.n_audio_ctx
    )
    return EngineConfig(
        max_slots=plan.slots,
        max_admit=plan.max_admit,
        short_window_frames=frames,
        admit_wait_steps=plan.admit_wait_steps,
        admit_ratio=plan.admit_ratio,
        packed_encoder=plan.packed_encoder,
        packed_prefill=plan.packed_prefill,
        overlap_admissions=plan.overlap_admissions,
        cross_kv=plan.cross_kv,
    )


def bench_engine(plan: StreamBenchPlan, threads: int) -> Engine:
    """The plan's engine, warmed up: what ``--engine-process`` builds in the engine's process, with the caller's
    CPU threads (on the CPU under engine/threads.py's policy, as the bench's own process)."""
    if plan.device == "cpu":
        engine_owns_cpu_threads(threads)
    else:
        torch.set_num_threads(threads)
    whisper, _ = _load_whisper(plan, torch.device(plan.device))
    engine = make_engine(whisper.model, whisper.tokenizer, _engine_config(plan, whisper))
    print(f"warming up the engine ({engine.n_slots} slots)", flush=True)
    engine.runner.warmup()
    return engine


def run_streams(plan: StreamBenchPlan, command: list[str], log: Any = print) -> tuple[dict[str, Any], Path]:
    """Measure every stream count of ``plan``; returns the result document and the file written."""
    from ..bench.results import result_filename, write_new

    device = torch.device(plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but no CUDA device is available")
    try:  # (the server transport's server loads its own)
        vad = SileroVAD(plan.vad_model) if plan.vad == "silero" and plan.transport != "server" else None
    except VADError as e:
        raise BenchError(f"{e} (--vad oracle needs no onnxruntime)") from None
    clips = bench_clips(plan.audio)
    tracks = caller_audio(clips, max(plan.streams), plan.seconds, plan.seed)
    # (the VAD and the audio first: nothing to close when they fail)
    served, engine = None, None  # closed below, whatever fails after they start
    try:
        if plan.transport == "server":
            from .serverbench import ServedBench

            fixed = _fixed_rate(plan)
            log(
                "the server's application, loading and warming up its model"
                + (" (in an engine process)" if plan.engine_process else "")
            )
            served = ServedBench(plan, tracks, _live_options(plan, max(plan.streams), fixed))
            whisper, engine = served.whisper, served.engine
        elif plan.engine_process:
            # here the model's dims and tokenizer only: the engine's process loads the model
            whisper, fixed = _load_whisper(plan, torch.device("meta"), log)
            log("the engine in a process of its own (loading the model there)")
            try:
                engine: Engine | EngineProcess = EngineProcess(
                    functools.partial(bench_engine, plan, engine_threads() or torch.get_num_threads())
                )
            except EngineError as e:
                raise BenchError(str(e)) from None
        else:
            whisper, fixed = _load_whisper(plan, device, log)
            engine = make_engine(whisper.model, whisper.tokenizer, _engine_config(plan, whisper))
        setup = engine_info(engine)
        language = "en" if whisper.tokenizer.is_multilingual else None

        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()}
        settings.update(
            model_dims=whisper.model.dims.to_dict(),
            engine_slots=engine.n_slots,
            # the Triton kernels (on by default; VOXSERVE_SCATTER_KERNEL=0, ..._FP8ROWS_KERNEL=0 turn them off)
            scatter_kernel=scatter.KERNEL,
            fp8rows_kernel=fp8rows.KERNEL,
            # live utterances' audio kept on the device between partials (engine/audio_cache.py; on CUDA)
            audio_cache=setup["audio_cache"],
            # as the engine runs: overlapped admissions are CUDA only (inert elsewhere, whatever was asked)
            overlap_admissions=setup["overlap_admissions"],
            # objects alive after the warm-up kept out of the cyclic collector, as `voxserve serve` (heap.py; stop 26)
            heap_frozen=True,
            merged_mels=mels.MERGE_LENGTHS,  # engine log-mels: every window length in one transform (VOXSERVE_MERGED_MELS)
            decoding="greedy, no timestamps, language en"
            + (f"; exactly {fixed:g} tokens per second of audio (end-of-text suppressed)" if fixed else ""),
        )
        info = machine.machine_info(device)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "suite": "streams",
            "command": command,
            "machine": info,
            "settings": settings,
            "figures": {"streams": []},
            "conditions": {"start": machine.load_snapshot()},
            "definitions": {
                "text_latency": "per chunk sent during speech: from its scheduled send time to the first delta or "
                "completed event covering its audio (includes the wait for the next partial); with --transport ws "
                "or server timed by the client processes on receipt",
                "held": f"p99 text latency <= {plan.target_ms:g} ms",
                "final": "from the end of speech (VAD) to the completed event",
                "rates": "decodes_per_s and engine_steps_per_s over the run's wall time; with --transport ws or "
                "server from the callers' common start (the client processes' start-up excluded, since stop 31)",
            },
        }
        if served is None and isinstance(engine, Engine):  # (an engine process, a server, warmed theirs up)
            log(f"warming up the engine ({engine.n_slots} slots)")
            engine.runner.warmup()
        # as `voxserve serve` runs (voxserve/heap.py); the server transport's application freezes its own
        with frozen_heap() if served is None else contextlib.nullcontext():
            for n in plan.streams:
                snap = machine.load_snapshot()
                # rates run from here, or over WebSockets from the callers' common start (after the client
                # processes' own start-up, which would dilute them)
                mark = {"counters": engine.counters(), "time": time.monotonic()}

                def at_start(mark: dict = mark) -> None:
                    mark.update(counters=engine.counters(), time=time.monotonic())

                if served is not None:
                    lat, missing, lag = served.run(n, start_offsets(n, plan).tolist(), language, at_start)
                    st = served.stats()
                else:
                    service = LiveService(whisper, engine, vad, _live_options(plan, n, fixed))
                    if plan.transport == "ws":
                        lat, missing, lag = _over_websockets(n, tracks, service, plan, language, at_start)
                    else:
                        counted_from, lag = asyncio.run(_simulate(n, tracks, service, plan, language))
                        lat, missing = [x for t, x in service.stats.text_latency if t >= counted_from], None
                    st = service.stats
                wall = time.monotonic() - mark["time"]
                counted = {k: v - mark["counters"][k] for k, v in engine.counters().items()}
                p99 = _percentile(lat, 99)
                row = {
                    "streams": n,
                    "chunks_counted": len(lat),
                    "chunks_without_text": missing,
                    "p50_ms": _ms(_percentile(lat, 50)),
                    "p90_ms": _ms(_percentile(lat, 90)),
                    "p99_ms": _ms(p99),
                    "max_ms": _ms(max(lat) if lat else None),
                    "held": p99 is not None and p99 * 1000 <= plan.target_ms,
                    "final_p50_ms": _ms(_percentile(st.final_latency, 50)),
                    "final_p99_ms": _ms(_percentile(st.final_latency, 99)),
                    "partials": st.partials,
                    "finals": st.finals,
                    "decodes_per_s": round(len(st.decode_seconds) / wall, 1),
                    "decode_p50_ms": _ms(_percentile(st.decode_seconds, 50)),
                    "engine_steps_per_s": round(counted["steps"] / wall, 1),
                    # decode steps launched while an admission was on the device (overlap_admissions)
                    "steps_beside_admissions": counted["steps_beside_admissions"],
                    "sender_lag_p99_ms": _ms(_percentile(lag, 99)),
                    "cpu_contention_pct": machine.contention_pct(snap, machine.load_snapshot()),
                }
                doc["figures"]["streams"].append(row)
                log(
                    f"{n} streams: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms ({'held' if row['held'] else 'NOT held'}), "
                    f"final p50 {row['final_p50_ms']} ms, {row['decodes_per_s']} decodes/s"
                )
                gc.collect()
    finally:
        if served is not None:
            served.close()  # (its engine with it)
        elif engine is not None:
            engine.close()
    doc["conditions"]["end"] = machine.load_snapshot()
    held = [r["streams"] for r in doc["figures"]["streams"] if r["held"]]
    doc["streams_held"] = max(held) if held else 0
    name = result_filename(
        {**doc, "settings": {**settings, "dims": plan.model and "model" or plan.dims}},
        machine.machine_label(info),
    )
    return doc, write_new(doc, plan.out, name)


def format_streams(doc: dict[str, Any]) -> str:
    rows = [["streams", "p50 ms", "p99 ms", "held", "final p50 ms", "decodes/s", "steps/s", "contention %"]]
    for r in doc["figures"]["streams"]:
        rows.append(
            [str(r["streams"]), str(r["p50_ms"]), str(r["p99_ms"]), "yes" if r["held"] else "no",
             str(r["final_p50_ms"]), str(r["decodes_per_s"]), str(r["engine_steps_per_s"]),
             str(r["cpu_contention_pct"])]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    target = doc["settings"]["target_ms"]
    lines.append(f"streams held at p99 <= {target:g} ms: {doc['streams_held']}")
    return "\n".join(lines)
