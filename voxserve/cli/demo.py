"""``voxserve demo``: the main job on the embedded default model, end to end, with nothing to download.

Without a file it speaks a sentence with espeak-ng on the spot (the demo model was trained on espeak-ng speech;
see voxserve/assets/demo-model/README.md), transcribes it and prints what was said, what was heard, the word
error rate and SRT subtitles. With FILE it transcribes that instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_SENTENCE = "Please call me back at five thirty tomorrow afternoon."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="speak a sentence with espeak-ng and transcribe it with the embedded default model",
        description="Speak a sentence with espeak-ng, transcribe it with the embedded default model and print "
        "the sentence, the transcript, its word error rate and SRT subtitles. With FILE, transcribe that instead.",
    )
    p.add_argument("file", nargs="?", type=Path, help="audio to transcribe instead of a synthesised sentence")
    p.add_argument(
        "--text", default=DEMO_SENTENCE, help=f"sentence to synthesise (default: {DEMO_SENTENCE!r})"
    )
    p.add_argument("--voice", default="en-us", help="espeak-ng voice for --text (default en-us)")
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
            "NOTE: the embedded default model has random weights (voxserve/assets/demo-model is missing), so the\n"
            "transcript below is meaningless: this run shows the pipeline working end to end, not recognition.",
            file=sys.stderr,
        )
    reference = None
    if args.file is not None:
        if not args.file.is_file():
            print(f"voxserve demo: error: no such file: {args.file}", file=sys.stderr)
            return 1
        audio, source = args.file, str(args.file)
    else:
        from ..train.espeak import EspeakError
        from ..train.synth import speak

        try:
            audio = speak(args.text, args.voice)
        except EspeakError as e:
            print(
                f"voxserve demo: error: cannot synthesise speech: {e}; pass a FILE instead", file=sys.stderr
            )
            return 1
        reference, source = args.text, f"espeak-ng ({args.voice}): {args.text!r}"
    print(f"model: {model.checkpoint.source}\naudio: {source}", file=sys.stderr)
    segments, info = model.transcribe(audio, language="en", temperature=0.0)
    result = Transcription.from_segments(list(segments), info)
    if reference is not None:
        from ..metrics.wer import item_errors

        print(f"said:  {reference}")
        print(f"heard: {result.text.strip()}")
        print(f"WER:   {100 * item_errors(reference, result.text).rate:.1f}%")
    else:
        print(f"text: {result.text.strip()}")
    print(to_srt(result).rstrip("\n"))
    return 0
