"""``voxserve transcribe``: audio files in, transcripts out (stdout or files in --output-dir)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

FORMAT_CHOICES = ("text", "json", "verbose_json", "srt", "vtt", "tsv", "all")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio files",
        description="Transcribe (or translate to English) audio files of any length: wav, flac, mp3, ogg/opus, "
        "m4a, webm and anything else FFmpeg reads. Without --output-dir the result is printed to stdout.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files to transcribe")
    p.add_argument(
        "--model",
        default="default",
        help="a Hugging Face model directory, an openai-whisper .pt file, a hub id such as "
        "openai/whisper-large-v3 (needs network or the local hub cache), or 'default' (the embedded model)",
    )
    p.add_argument(
        "--tokenizer", help="tokenizer to use instead of the checkpoint's (.tiktoken file or HF directory)"
    )
    p.add_argument("--language", help="language code or name (e.g. en, zh, German); detected when not given")
    p.add_argument(
        "--task", choices=("transcribe", "translate"), default="transcribe", help="translate = to English"
    )
    p.add_argument(
        "--format", "-f", choices=FORMAT_CHOICES, default="text", help="output format (default: text)"
    )
    p.add_argument("--output-dir", "-o", type=Path, help="write FILE_STEM.<ext> here instead of printing")
    p.add_argument("--word-timestamps", action="store_true", help="align every word to the audio")
    p.add_argument("--beam-size", type=int, help="beam search width (default: greedy)")
    p.add_argument("--best-of", type=int, help="samples per window when fallback raises the temperature")
    p.add_argument("--patience", type=float, help="beam search patience (default 1.0)")
    p.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        help="decoding temperature(s); several values are tried in order on failure (default: 0 0.2 ... 1.0)",
    )
    p.add_argument("--initial-prompt", help="text that gives context for the first window (names, spellings)")
    p.add_argument(
        "--no-condition-on-previous-text",
        dest="condition_on_previous_text",
        action="store_false",
        help="do not prompt each window with the previous text",
    )
    p.add_argument(
        "--without-timestamps", action="store_true", help="decode text only, one segment per window"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), help="default: float16 on cuda, else float32"
    )
    p.add_argument("--max-duration", type=float, help="refuse audio longer than this many seconds")
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bar (otherwise shown on a terminal for audio over 30 s) and no 'wrote' lines",
    )
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    kw = {
        "task": args.task,
        "language": args.language,
        "word_timestamps": args.word_timestamps,
        "initial_prompt": args.initial_prompt,
        "condition_on_previous_text": args.condition_on_previous_text,
        "without_timestamps": args.without_timestamps,
    }
    for name in ("beam_size", "best_of", "patience"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.temperature is not None:
        kw["temperatures"] = tuple(args.temperature)
    return kw


def run(args: argparse.Namespace) -> int:
    from ..api import load_model, make_options
    from ..audio.io import AudioError
    from ..formats import FORMATS, format_result, write_result
    from ..results import Transcription

    options = make_options(**_options(args))  # validated before the model loads
    # json and verbose_json share the .json extension; "all" writes the fuller one.
    formats = tuple(f for f in FORMATS if f != "json") if args.format == "all" else (args.format,)
    if args.output_dir is None and len(formats) > 1:
        print("voxserve transcribe: error: --format all needs --output-dir", file=sys.stderr)
        return 2
    if args.max_duration is not None and not args.max_duration > 0:
        print("voxserve transcribe: error: --max-duration must be positive seconds", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    for w in caught:
        print(f"voxserve transcribe: note: {w.message}", file=sys.stderr)

    failures = 0
    for path in args.files:
        try:
            segments, info = model.transcribe(
                path, options, progress=not args.quiet and sys.stderr.isatty(), max_duration=args.max_duration
            )
            result = Transcription.from_segments(list(segments), info)
        except (AudioError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            # Audio errors name their source already; file-system errors may not.
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"voxserve transcribe: error: {message}", file=sys.stderr)
            failures += 1
            continue
        if args.output_dir is not None:
            for fmt in formats:
                written = write_result(result, fmt, args.output_dir, Path(path).stem)
                if not args.quiet:
                    print(f"wrote {written}", file=sys.stderr)
        else:
            text = format_result(result, formats[0])
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 1 if failures else 0
