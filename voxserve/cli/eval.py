"""``voxserve eval``: word (English) or character (Chinese) error rate of a model on a manifest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model on a manifest (WER / CER)",
        description="Transcribe every utterance of a JSONL manifest (audio, text, language) greedily, one 30 s "
        "window each, and print the word error rate (English and other spaced languages) or character error "
        "rate (Chinese) after text normalisation, with substitution, deletion and insertion counts. Audio "
        "longer than one window is reported as an error.",
    )
    p.add_argument("--model", required=True, help="model directory, openai-whisper .pt file, hub id, or "
                   "'default' for the embedded demo model")  # fmt: skip
    p.add_argument("--manifest", type=Path, required=True, help="JSONL manifest to score")
    p.add_argument("--per-item", type=Path, metavar="OUT.jsonl",
                   help="also write one JSON line per utterance: reference, hypothesis and its counts")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="windows decoded at once (default 32)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--language", help="language code for every item, overriding the manifest's (e.g. en, zh)")
    p.add_argument(
        "--tokenizer", type=Path, help="tokenizer file or directory if the model has none beside it"
    )
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N utterances")
    p.add_argument("--workers", type=int, default=8, help="threads reading audio (default 8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.load import ModelLoadError
    from ..train.evaluate import evaluate
    from ..train.loading import load_model_and_tokenizer
    from ..train.manifest import ManifestError, load_all_audio, read_manifest

    def fail(message: str, code: int = 1) -> int:
        print(f"voxserve eval: error: {message}", file=sys.stderr)
        return code

    if args.batch_size < 1:
        return fail("--batch-size must be >= 1", 2)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda was asked for, but no CUDA device is available", 2)
    source = args.model
    if source == "default":
        from ..api import DEMO_MODEL_DIR

        if not DEMO_MODEL_DIR.is_dir():
            return fail(
                f"the embedded demo model is not there yet ({DEMO_MODEL_DIR}); pass a model directory"
            )
        source = str(DEMO_MODEL_DIR)
    try:
        model, _, tokenizer = load_model_and_tokenizer(
            source,
            device=device,
            dtype="float16" if device.type == "cuda" else "float32",
            tokenizer=args.tokenizer,
        )
        items = read_manifest(args.manifest)[: args.limit]
        audio = load_all_audio(items, workers=args.workers, progress=not args.quiet)
        language = {"cmn": "zh"}.get(args.language, args.language)
        report = evaluate(
            model,
            tokenizer,
            items,
            audio,
            batch_size=args.batch_size,
            language=language,
            progress=not args.quiet,
        )
    except (ManifestError, ModelLoadError, ValueError) as e:
        return fail(str(e))
    if args.per_item:
        args.per_item.parent.mkdir(parents=True, exist_ok=True)
        with open(args.per_item, "w", encoding="utf-8") as f:
            for row in report.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps({"model": args.model, "manifest": str(args.manifest), "results": report.summary()}))
    else:
        print(f"{args.manifest}: {report.headline()}")
    return 0
