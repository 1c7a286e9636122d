"""``voxserve demo``: the main job on the embedded default model, end to end, with nothing to download."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHARED_SAMPLE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "audio" / "samples" / "jfk.flac"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="transcribe a sample with the embedded default model",
        description="Transcribe a sample with the embedded default model and print the text and SRT subtitles. "
        "With FILE, transcribe that instead.",
    )
    p.add_argument("file", nargs="?", type=Path, help="audio to transcribe instead of the built-in sample")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from ..api import load_model
    from ..formats import to_srt
    from ..results import Transcription

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("default", device=args.device)
    if model.is_random:
        print(
            "NOTE: the embedded default model has random weights (the demo model is not trained yet), so the\n"
            "transcript below is meaningless: this run shows the pipeline working end to end, not recognition.",
            file=sys.stderr,
        )
    audio = args.file or SHARED_SAMPLE
    if not audio.is_file():
        print(f"voxserve demo: error: no sample audio at {audio}; pass a FILE", file=sys.stderr)
        return 1
    print(f"model: {model.checkpoint.source}\naudio: {audio}", file=sys.stderr)
    segments, info = model.transcribe(audio, language="en", temperature=0.0)
    result = Transcription.from_segments(list(segments), info)
    print(f"text: {result.text}")
    print(to_srt(result), end="")
    return 0
