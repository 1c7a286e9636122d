"""``voxserve serve``: the HTTP server (OpenAI's audio API, jobs, metrics) on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP server (OpenAI-compatible audio API)",
        description="Serve OpenAI's audio API (/v1/audio/transcriptions, /v1/audio/translations, /v1/models), "
        "long-file jobs (/v1/jobs), /metrics, /health and /ready. Every setting can also come from a "
        "VOXSERVE_<NAME> environment variable; flags win.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="[ALIAS=]SOURCE",
        help="a model to serve, repeatable; the first is the default. SOURCE is an HF directory, an "
        ".pt file, a hub id or 'default'; without ALIAS= the alias is 'default' for the first",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--api-key", action="append", dest="api_keys", help="accepted Bearer key, repeatable")
    p.add_argument("--jobs-db", help="SQLite file for /v1/jobs (default voxserve-jobs.sqlite3)")
    p.add_argument("--jobs-dir", help="folder for job audio (default voxserve-jobs)")
    p.add_argument("--max-concurrency", type=int, help="requests decoding at once")
    p.add_argument("--engine-slots", type=int, help="KV-cache slots per engine (default: sized from memory)")
    p.add_argument(
        "--cross-kv",
        choices=("model", "int8"),
        help="cross-attention K/V storage: the model's dtype (default) or int8 with a scale per (position, head) "
        "(about half the decode step's main memory reads, more slots; CUDA only)",
    )
    p.add_argument(
        "--admit-wait-steps",
        type=int,
        help="decode steps a running batch may take before waiting requests join it, unless they number "
        "--admit-ratio times its rows (default 0: they join at every step; more gathers larger admissions, "
        "which helped live streams when admissions were costly)",
    )
    p.add_argument("--admit-ratio", type=float, help="see --admit-wait-steps (default 2)")
    p.add_argument(
        "--max-admit",
        type=int,
        help="windows an engine admits (encodes and prefills) together at most (default 32)",
    )
    p.add_argument(
        "--packed-encoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encode the short windows of live partials admitted together in one packed encoder pass instead of "
        "one batch per window length (default: off; VOXSERVE_ENGINE_PACKED_ENCODER)",
    )
    p.add_argument(
        "--packed-prefill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the prompts of requests admitted together end to end in one prefill pass instead of a batch "
        "padded to a captured shape (default: off; VOXSERVE_ENGINE_PACKED_PREFILL)",
    )
    p.add_argument(
        "--overlap-admissions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run admissions (encoder pass, prefill) on a CUDA stream of their own beside the decode steps, so "
        "running requests keep decoding meanwhile (default: on; VOXSERVE_ENGINE_OVERLAP_ADMISSIONS)",
    )
    p.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each model's engine in a process of its own, so that its thread does not share a GIL with the "
        "server's event loop; it loads a second copy of the weights (default: off; it helped live streams once "
        "the GPU was busy, see bench/README.md; VOXSERVE_ENGINE_PROCESS)",
    )
    p.add_argument("--no-preload", dest="preload", action="store_false", default=None)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def _models(specs: list[str]) -> tuple[dict[str, str], str]:
    models: dict[str, str] = {}
    for i, spec in enumerate(specs):
        alias, sep, source = spec.partition("=")
        if not sep or os.path.exists(spec):  # a path may contain '='
            alias, source = ("default" if i == 0 else os.path.basename(spec.rstrip("/")) or spec), spec
        if alias in models:
            raise SystemExit(f"voxserve serve: error: model alias {alias!r} given twice")
        models[alias] = source
    return models, next(iter(models))


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from ..server.app import create_app
    from ..server.settings import ServerSettings

    overrides: dict = {}
    if args.model:
        overrides["models"], overrides["default_model"] = _models(args.model)
    for name in ("host", "port", "device", "dtype", "api_keys", "jobs_db", "jobs_dir", "max_concurrency"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.engine_slots is not None:
        overrides["engine_slots"] = args.engine_slots
    if args.cross_kv is not None:
        overrides["engine_cross_kv"] = args.cross_kv
    if args.admit_wait_steps is not None:
        overrides["engine_admit_wait_steps"] = args.admit_wait_steps
    if args.admit_ratio is not None:
        overrides["engine_admit_ratio"] = args.admit_ratio
    if args.max_admit is not None:
        overrides["engine_max_admit"] = args.max_admit
    if args.packed_encoder is not None:
        overrides["engine_packed_encoder"] = args.packed_encoder
    if args.packed_prefill is not None:
        overrides["engine_packed_prefill"] = args.packed_prefill
    if args.overlap_admissions is not None:
        overrides["engine_overlap_admissions"] = args.overlap_admissions
    if args.engine_process is not None:
        overrides["engine_process"] = args.engine_process
    if args.preload is not None:
        overrides["preload"] = args.preload
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as e:
        lines = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        print(f"voxserve serve: error: {lines}", file=sys.stderr)
        return 2
    _adopt_cpu_thread_policy(settings.device)
    app = create_app(settings, freeze_heap=True)  # a long-running process: voxserve/heap.py
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, lets in-flight requests finish (up to the grace
    # period), then runs the app's lifespan shutdown, which stops the job workers and the engines.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    return 0


def _adopt_cpu_thread_policy(device: str | None) -> None:
    """On the CPU the engines' worker threads get torch's threads and request threads run one each, so only
    the engines' OpenMP teams share the cores (engine/threads.py). Adopted before anything runs torch work."""
    import torch

    from ..engine.threads import engine_owns_cpu_threads

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        engine_owns_cpu_threads()
