"""``voxserve calibrate``: activation statistics on representative audio, for static fp8 scales.

Reads a folder of audio files or a manifest, cuts each file into 30 s windows, decodes them greedily with the
float reference decoder and records every block Linear's input range under teacher forcing; writes one JSON
file that ``voxserve build --precision fp8 --calibration FILE`` (and ``quantize_model``) consume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".mp4", ".aac", ".wma"}
DEFAULT_LIMIT = 32


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure activation ranges on representative audio (for fp8 engines)",
        description="Run the float model over representative audio and record every Linear's input range; "
        "the output file gives fp8 engines their static activation scales.",
    )
    p.add_argument("--model", required=True, help="model directory, openai .pt file or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio-dir", type=Path, help="folder searched recursively for audio files")
    src.add_argument(
        "--manifest",
        type=Path,
        help="JSON lines with an audio_filepath (or path / audio) field, or one path per line; relative "
        "paths are taken from the manifest's folder",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"at most this many 30 s windows (default {DEFAULT_LIMIT})",
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the statistics (JSON)")
    p.add_argument("--language", help="language of the audio (default: detected per window)")
    p.add_argument("--tokenizer", help="tokenizer to use instead of the checkpoint's")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the calibration pass (default float32; the statistics apply to any dtype of the same weights)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows decoded together (default 8)")
    p.add_argument("--sample-len", type=int, help="most tokens decoded per window (default 224)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"voxserve calibrate: error: {message}", file=sys.stderr)
    return 1


def audio_files(args: argparse.Namespace) -> list[Path]:
    """The audio files named by --audio-dir or --manifest, in a stable order; FileNotFoundError/ValueError."""
    if args.audio_dir is not None:
        if not args.audio_dir.is_dir():
            raise FileNotFoundError(f"--audio-dir {args.audio_dir} is not a folder")
        files = sorted(
            f for f in args.audio_dir.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
        )
        if not files:
            raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {args.audio_dir}")
        return files
    return manifest_files(args.manifest)


def manifest_files(manifest: Path) -> list[Path]:
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}")
    files = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{manifest}:{number}: not valid JSON ({e.msg})") from None
            name = next(
                (entry[k] for k in ("audio_filepath", "path", "audio") if isinstance(entry.get(k), str)), None
            )
            if name is None:
                raise ValueError(f"{manifest}:{number}: no audio_filepath, path or audio field")
        else:
            name = line
        path = Path(name).expanduser()
        files.append(path if path.is_absolute() else manifest.parent / path)
    if not files:
        raise ValueError(f"{manifest} lists no audio files")
    return files


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        return _fail(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.sample_len is not None and args.sample_len < 1:
        return _fail(f"--sample-len must be >= 1, got {args.sample_len}")
    try:
        files = audio_files(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        return _fail(str(e))

    from tqdm import tqdm

    from ..api import load_model
    from ..audio.io import AudioError, load_audio
    from ..model.quant import CalibrationError
    from ..quant.calibrate import audio_windows, collect_activation_stats, reference_token_sequences

    loaded = load_model(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    model, tokenizer = loaded.model, loaded.tokenizer
    show = not args.quiet and sys.stderr.isatty()

    mels, used = [], []
    for path in files:
        if len(mels) >= args.limit:
            break
        try:
            windows = audio_windows(load_audio(path), model.dims.n_mels)
        except (AudioError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as e:
            print(f"voxserve calibrate: warning: skipping {path}: {e}", file=sys.stderr)
            continue
        mels += windows[: args.limit - len(mels)]
        used.append(str(path))
    if not mels:
        return _fail("none of the audio files could be read")

    with tqdm(total=len(mels), desc="decoding", unit="window", disable=not show) as bar:
        sequences = reference_token_sequences(
            model,
            tokenizer,
            mels,
            language=args.language,
            batch_size=args.batch_size,
            sample_len=args.sample_len,
            on_batch=bar.update,
        )
    meta = {
        "model": str(args.model),
        "dtype": args.dtype,
        "device": str(model.device),
        "files": str(len(used)),
        "source": str(args.audio_dir or args.manifest),
    }
    with tqdm(total=len(mels), desc="calibrating", unit="window", disable=not show) as bar:
        stats = collect_activation_stats(model, mels, sequences, meta=meta, on_window=lambda: bar.update(1))
    try:
        stats.save(args.out)
    except (OSError, CalibrationError) as e:
        return _fail(f"could not write {args.out}: {e}")
    amaxes = [s.amax for s in stats.layers.values()]
    print(
        f"wrote {args.out}: {len(stats.layers)} Linears over {stats.n_windows} windows ({stats.n_tokens} tokens) "
        f"from {len(used)} files; input amax {min(amaxes):.3g}..{max(amaxes):.3g}",
        file=sys.stderr,
    )
    return 0
