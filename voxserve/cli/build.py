"""``voxserve build``: convert a checkpoint once for this machine (precision, calibration, accuracy gate, batch
buckets) into a build directory that loads without converting again (see voxserve/build.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRECISION_CHOICES = ("fp32", "fp16", "bf16", "fp8", "int8", "int8-dynamic")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="convert a model for this machine: precision, calibration, accuracy gate, batch buckets",
        description="Convert a checkpoint to a precision for this machine and write a build directory: the "
        "converted weights (int8/fp8 with their scales), the tokenizer, the accuracy gate's measured divergence "
        "from the float32 model, the batch buckets and a manifest.json (GPU or CPU, compute capability, driver, "
        "CUDA, torch and voxserve versions, model hash). `voxserve transcribe --model DIR` and "
        "voxserve.build.load_engine(DIR) load it; a build for another machine is refused unless rebuilt.",
    )
    p.add_argument("--model", required=True, help="model directory, openai .pt file or hub id")
    p.add_argument("--precision", required=True, choices=PRECISION_CHOICES, help="target precision")
    p.add_argument("--max-batch", type=int, required=True, help="most windows decoded together (slots)")
    p.add_argument("--out", type=Path, required=True, help="build directory to write")
    audio = p.add_mutually_exclusive_group()
    audio.add_argument("--audio-dir", type=Path, help="representative audio, searched recursively")
    audio.add_argument("--manifest", type=Path, help="JSON lines or paths of representative audio files")
    p.add_argument(
        "--limit", type=int, default=16, help="30 s windows used for calibration and the gate (default 16)"
    )
    p.add_argument("--calibration", type=Path, help="fp8: statistics from `voxserve calibrate` to use")
    p.add_argument("--max-kl", type=float, help="accuracy gate: largest mean KL in nats/token (default 0.05)")
    p.add_argument("--language", help="language of the audio (default: detected per window)")
    p.add_argument("--sample-len", type=int, help="most tokens decoded per window for the gate (default 224)")
    p.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"voxserve build: error: {message}", file=sys.stderr)
    return code


def _read_audio(paths: list[Path], windows: int) -> list:
    """Clips as 16 kHz mono float32, enough for ``windows`` 30 s windows (without PyAV, load_audio still reads
    16-bit PCM WAV)."""
    from ..audio.io import AudioError, load_audio

    clips, seconds = [], 0.0
    for path in paths:
        if clips and len(clips) + seconds // 30 >= windows:  # each clip makes at least one window
            break
        try:
            clips.append(load_audio(path))
        except (AudioError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            print(f"voxserve build: warning: skipping {path}: {e}", file=sys.stderr)
        if clips:
            seconds += len(clips[-1]) / 16000
    return clips


def run(args: argparse.Namespace) -> int:
    for name in ("max_batch", "limit", "sample_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return _fail(f"--{name.replace('_', '-')} must be >= 1, got {value}", 2)
    if args.max_kl is not None and not args.max_kl > 0:
        return _fail(f"--max-kl must be positive, got {args.max_kl}", 2)
    if args.precision != "fp32" and args.audio_dir is None and args.manifest is None:
        return _fail(f"a {args.precision} build needs representative audio: --audio-dir or --manifest", 2)

    from ..build import BuildError, build_engine
    from ..model.quant import CalibrationStats, QuantizationError
    from ..quant.gate import DEFAULT_MAX_MEAN_KL, AccuracyGateError
    from .calibrate import audio_files

    clips = []
    if args.audio_dir is not None or args.manifest is not None:
        try:
            files = audio_files(args)
        except (FileNotFoundError, ValueError, OSError) as e:
            return _fail(str(e))
        clips = _read_audio(files, args.limit)
        if not clips:
            return _fail("none of the audio files could be read")
    max_kl = DEFAULT_MAX_MEAN_KL if args.max_kl is None else args.max_kl
    try:
        calibration = CalibrationStats.load(args.calibration) if args.calibration else None
        result = build_engine(
            args.model,
            args.out,
            precision=args.precision,
            max_batch=args.max_batch,
            audio=clips,
            device=args.device,
            tokenizer=args.tokenizer,
            language=args.language,
            calibration=calibration,
            max_mean_kl=max_kl,
            max_windows=args.limit,
            sample_len=args.sample_len,
            overwrite=args.force,
        )
    except AccuracyGateError as e:
        return _fail(f"{e}; nothing written")
    except QuantizationError as e:  # includes CalibrationError: a precision this model or device cannot take
        return _fail(str(e), 2)
    except BuildError as e:
        return _fail(str(e))
    m = result.manifest
    t = m["target"]
    where = f"{t['name']} (compute capability {t['compute_capability']})" if t["device"] == "cuda" else "CPU"
    if result.gate is not None:
        print(f"accuracy gate passed (limit {max_kl:g}): {result.gate.summary()}", file=sys.stderr)
    print(
        f"wrote {result.directory}: {m['precision']} for {where}, torch {t['torch']}, batch buckets "
        f"{m['batch_buckets']}, model {m['model_hash'][:12]}",
        file=sys.stderr,
    )
    return 0
