"""One benchmark run: a validated :class:`BenchPlan` in, one result document (and file) out.

The run prepares the shared random-weight directory and the speech windows, then builds each subject in turn
(voxserve's first, then the peers), measures it in every planned suite and frees it before the next, so only
one model occupies memory at a time. With ``rounds`` > 1 that sequence runs again, so the subjects alternate and
slow drift of a shared machine hits all of them alike; every round's figures are kept (each row carries its
``round``). A peer that cannot run (package missing, did not do the same work) is recorded under ``skipped``
with the reason and not tried again; a failure of voxserve's own subject fails the run.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import threads
from . import machine, results, suites
from .inputs import speech_clips, speech_windows
from .subjects import VOXSERVE_SUBJECTS, Subject, prompt_tokens
from .weights import NAMED_DIMS, BenchError, bench_tokenizer, random_hf_dir, resolve_dims

SUITE_CHOICES = ("offline", "latency", "step", "peers", "all")
PEERS = ("transformers", "ctranslate2-int8", "ctranslate2-float32")


@dataclass(frozen=True)
class BenchPlan:
    suite: str  # offline | latency | step: that measurement; peers: all three, peers only; all: everything
    dims: str  # a name in NAMED_DIMS
    device: str  # "cpu" or "cuda"
    precision: str  # voxserve's weights: fp32, fp16 or bf16
    peers: tuple[str, ...]  # peer subjects to measure besides (or, for suite "peers", instead of) voxserve
    audio: Path  # folder of 16 kHz mono WAVs
    tiktoken: Path  # multilingual.tiktoken
    cache: Path  # where the random-weight model directories are kept
    out: Path  # result folder
    subjects: tuple[str, ...] = ("reference",)  # voxserve paths: keys of VOXSERVE_SUBJECTS
    batch: int = 1  # offline batch size
    n_inputs: int = 4  # offline: number of 30 s inputs
    passes: int = 1  # offline: timed passes (median kept)
    repeats: int = 5  # latency / step: timed repeats
    warmup: int = 1  # latency / step: untimed runs first
    step_batches: tuple[int, ...] = (1, 4)
    threads: int = 1  # torch and CTranslate2 CPU threads
    hf_precision: str = "fp32"
    hf_cache: str = "static"
    hf_compile: bool = False
    seed: int = 0
    rounds: int = 1  # every subject measured this many times, the subjects alternating round by round
    isolate: bool = False  # measure each subject in a fresh process of its own

    def __post_init__(self) -> None:
        if self.suite not in SUITE_CHOICES:
            raise BenchError(f"--suite must be one of {SUITE_CHOICES}, got {self.suite!r}")
        if self.dims not in NAMED_DIMS:
            raise BenchError(f"unknown --dims {self.dims!r}; choose one of {sorted(NAMED_DIMS)}")
        if self.device not in ("cpu", "cuda"):
            raise BenchError(f"--device must be cpu or cuda, got {self.device!r}")
        for name in ("batch", "n_inputs", "passes", "repeats", "threads", "rounds"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.step_batches or min(self.step_batches) < 1:
            raise BenchError("--step-batches needs batch sizes >= 1")
        unknown = [p for p in self.peers if p not in PEERS and not p.startswith("ctranslate2-")]
        if unknown:
            raise BenchError(f"unknown peers {unknown}; choose from {PEERS}")
        unknown = [s for s in self.subjects if s not in VOXSERVE_SUBJECTS]
        if self.suite != "peers" and (unknown or not self.subjects):
            raise BenchError(f"unknown --subject {unknown}; choose from {sorted(VOXSERVE_SUBJECTS)}")
        if self.suite == "peers" and not self.peers:
            raise BenchError("--suite peers with no peers measures nothing")

    @property
    def measurements(self) -> tuple[str, ...]:
        return results.SUITES if self.suite in ("peers", "all") else (self.suite,)


@dataclass(frozen=True)
class _Inputs:
    offline: list[np.ndarray]  # n_inputs x 30 s
    latency: dict[float, np.ndarray]  # one 5 s and one 30 s window
    step: list[np.ndarray]  # max(step_batches) x 30 s, after the offline ones
    clips: int
    seconds: float


def _inputs(plan: BenchPlan) -> _Inputs:
    clips = speech_clips(plan.audio)
    offline = speech_windows(clips, 30.0, plan.n_inputs)
    n_step = max(plan.step_batches) if "step" in plan.measurements else 1
    return _Inputs(
        offline=offline,
        latency={5.0: speech_windows(clips, 5.0, 1)[0], 30.0: offline[0]},
        step=speech_windows(clips, 30.0, n_step, start=plan.n_inputs),
        clips=len(clips),
        seconds=round(sum(c.size for c in clips) / 16000, 1),
    )


def _builders(plan: BenchPlan, hf_dir: Path, tok: Any) -> list[tuple[str, str, Callable[[], Subject]]]:
    device = torch.device(plan.device)
    out: list[tuple[str, str, Callable[[], Subject]]] = []
    if plan.suite != "peers":
        for name in plan.subjects:
            build = VOXSERVE_SUBJECTS[name]
            out.append(("voxserve", name, lambda b=build: b(hf_dir, tok, device, plan.precision)))
    for name in plan.peers:
        if name == "transformers":
            from .peers.hf import hf_subject

            out.append(("peer", name, lambda: hf_subject(
                hf_dir, tok, device, plan.hf_precision, cache=plan.hf_cache, compile=plan.hf_compile)))  # fmt: skip
        else:
            from .peers.ct2 import ct2_subject

            compute = name.removeprefix("ctranslate2-")
            out.append(("peer", name, lambda c=compute: ct2_subject(hf_dir, tok, c, plan.threads)))
    return out


def _contended(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement and add the share of its wall time in which other work competed for the CPU, so a
    figure disturbed by a neighbour is visible in the file as such."""
    start = machine.load_snapshot()
    row = measure()
    row["cpu_contention_pct"] = machine.contention_pct(start, machine.load_snapshot())
    return row


def _measure(
    plan: BenchPlan, subject: Subject, inputs: _Inputs, eot: int, log: Callable[[str], None]
) -> dict:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in results.SUITES}
    if "offline" in plan.measurements:
        row = _contended(lambda: suites.offline(subject, inputs.offline, plan.batch, eot, passes=plan.passes))
        rows["offline"].append(row)
        log(
            f"{subject.name} offline: {row['realtime_factor']}x real time, {row['ms_per_input']} ms per input"
        )
    if "latency" in plan.measurements:
        for seconds, window in inputs.latency.items():
            row = _contended(lambda s=seconds, w=window: suites.latency(
                subject, w, s, eot, repeats=plan.repeats, warmup=plan.warmup))  # fmt: skip
            rows["latency"].append(row)
            log(f"{subject.name} {seconds:g} s request: median {row['median_ms']} ms, p90 {row['p90_ms']} ms")
    if "step" in plan.measurements:
        for b in plan.step_batches:
            row = _contended(lambda b=b: suites.step(
                subject, inputs.step, b, eot, repeats=plan.repeats, warmup=plan.warmup))  # fmt: skip
            rows["step"].append(row)
            log(f"{subject.name} decode step at batch {b}: {row['step_ms']} ms")
    return rows


def _stderr(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Context:
    """What every subject's measurement shares: tokenizer, speech windows, the random-weight directory."""

    tok: Any
    inputs: _Inputs
    hf_dir: Path
    builders: list[tuple[str, str, Callable[[], Subject]]]


def _context(plan: BenchPlan, dims: Any, log: Callable[[str], None]) -> _Context:
    if plan.device == "cpu":
        # The engines' worker threads get the threads and this thread (log-mel, the reference decoder) runs
        # single-threaded, so the engine's OpenMP team is the only one on the cores (engine/threads.py).
        # CTranslate2 runs its own pool of plan.threads.
        threads.engine_owns_cpu_threads(plan.threads)
    else:
        torch.set_num_threads(plan.threads)
    tok = bench_tokenizer(dims, plan.tiktoken)
    inputs = _inputs(plan)
    log(f"preparing random {plan.dims} weights under {plan.cache}")
    hf_dir = random_hf_dir(dims, plan.cache / f"whisper-{plan.dims}-random-seed{plan.seed}", plan.tiktoken,
                           seed=plan.seed)  # fmt: skip
    return _Context(tok, inputs, hf_dir, _builders(plan, hf_dir, tok))


def _measure_subject(
    plan: BenchPlan, ctx: _Context, index: int, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Build subject ``index``, measure it in every planned suite, free it: (its entry, its rows by suite)."""
    subject = None
    try:
        subject = ctx.builders[index][2]()
        entry = {"name": subject.name, "side": subject.side, "device": str(subject.device),
                 "precision": subject.precision, "config": subject.config}  # fmt: skip
        return entry, _measure(plan, subject, ctx.inputs, ctx.tok.eot, log)
    finally:
        if subject is not None and subject.close is not None:
            subject.close()
        del subject  # one model in memory at a time
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()


def _measure_isolated(
    plan: BenchPlan, dims: Any, index: int
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """``_measure_subject`` in a fresh process (the plan's isolate): nothing a subject leaves in a process (thread
    pools, allocator state) reaches the next one."""
    return _measure_subject(plan, _context(plan, dims, lambda _: None), index, _stderr)


def run_plan(
    plan: BenchPlan, command: list[str], log: Callable[[str], None] = _stderr
) -> tuple[dict[str, Any], Path]:
    """Run ``plan``; returns the result document and the file it was written to."""
    device = torch.device(plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but no CUDA device is available")
    dims = resolve_dims(plan.dims)
    ctx = _context(plan, dims, log)
    inputs, tok = ctx.inputs, ctx.tok

    settings = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "model_dims": dims.to_dict(),
        "measurements": list(plan.measurements),
        "tokens_per_window": {f"{s:g}s": n for s, n in suites.TOKENS_PER_WINDOW.items()},
        "prompt": list(prompt_tokens(tok)),
        "decoding": "greedy (temperature 0, one hypothesis), end-of-text suppressed, no timestamps",
        "audio_clips": {"count": inputs.clips, "seconds": inputs.seconds},
    }
    info = machine.machine_info(device)
    doc = results.new_document(suite=plan.suite, command=command, machine=info, settings=settings)
    doc["conditions"]["start"] = start = machine.load_snapshot()
    pressure = (start.get("cpu_pressure_pct") or {}).get("avg10")
    if device.type == "cpu" and pressure is not None and pressure > 20:
        log(f"warning: other work is competing for the CPU (tasks waited {pressure}% of the last 10 s): "
            "CPU figures will be slower and noisier than on an idle machine")  # fmt: skip

    skipped: set[str] = set()
    for round_ in range(plan.rounds):
        for index, (side, name, _) in enumerate(ctx.builders):
            if name in skipped:
                continue
            try:
                where = " in a fresh process" if plan.isolate else ""
                log(
                    f"loading {name}{where}"
                    + (f" (round {round_ + 1} of {plan.rounds})" if plan.rounds > 1 else "")
                )
                if plan.isolate:
                    spawn = multiprocessing.get_context("spawn")
                    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                        entry, rows = pool.submit(_measure_isolated, plan, dims, index).result()
                else:
                    entry, rows = _measure_subject(plan, ctx, index, log)
            except BenchError as e:
                if side == "voxserve":
                    raise
                log(f"{name} not measured: {e}")
                doc["skipped"].append({"subject": name, "reason": str(e)})
                skipped.add(name)
                continue
            if round_ == 0:
                results.add_subject(doc, **entry)
            for suite, suite_rows in rows.items():
                doc["figures"][suite].extend({**row, "round": round_} for row in suite_rows)
    doc["conditions"]["end"] = end = machine.load_snapshot()
    # The share of the run in which some task waited for a CPU: other work competing with the measurement.
    doc["conditions"]["cpu_contention_pct"] = machine.contention_pct(start, end)
    path = results.write_result(doc, plan.out, machine.machine_label(info))
    return doc, path
