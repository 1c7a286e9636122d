"""What encoding only the audio an utterance has costs in accuracy: the same utterances decoded through the
live path with 30 s padded windows and with short windows (``LiveOptions.short_windows``), scored by WER.

Utterances are espeak-ng sentences (what the demo model recognises), whole and cut at half their length (as a
partial sees them). Run: ``python -m voxserve.live.window_accuracy --model default --n 40``; it prints the
table and writes one JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench.results import write_new
from ..cli.bench import seconds_list

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def sentences(
    path: Path, n: int, *, ids: tuple[str, ...] = (), min_words: int = 4, max_words: int = 16
) -> list[str]:
    """The first ``n`` normalised LJSpeech sentences of a speakable length (whose ids start with one of ``ids``)."""
    out = []
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
            if ids and not row[0].startswith(ids):
                continue
            text = row[-1].strip()
            if min_words <= len(text.split()) <= max_words and text.isascii():
                out.append(text)
            if len(out) == n:
                break
    return out


def spoken(texts: list[str], cache: Path | None) -> list[np.ndarray]:
    """Each text spoken by espeak-ng (train.synth.speak), read from / written to ``cache`` (one .npy a text,
    named by its hash) when given: the GPU machine has no espeak-ng, so its runs read audio made here. Cached
    audio is stored in float16 (half the bytes: a device call carries at most 64 MiB) and every run with a
    cache hears that rounding (11 significant bits), the run that writes it too."""
    from ..train.synth import speak

    out = []
    for text in texts:
        path = None if cache is None else cache / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.npy"
        if path is not None and path.exists():
            out.append(np.load(path).astype(np.float32))
            continue
        x = speak(text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            x = x.astype(np.float16)
            np.save(path, x)
        out.append(x.astype(np.float32))
    return out


def measure(
    model: str,
    n: int,
    device: str | None,
    text_path: Path,
    ids: tuple[str, ...] = (),
    bucket_sets: tuple[tuple[float, ...], ...] = (),
    *,
    speech_cache: Path | None = None,
    encoder_precision: str | None = None,
) -> dict[str, Any]:
    """Rows "full" (30 s windows) and "short" (LiveOptions' window lengths), plus one "short <lengths>" row for
    each of ``bucket_sets`` (e.g. windows every second, which a packed encoder pass makes as cheap as a few).
    ``encoder_precision`` "fp8": the encoder's Linears in fp8 (CUDA), as ``voxserve bench --streams
    --encoder-precision fp8`` runs them."""
    from ..api import load_model
    from ..decoding.batched import make_engine
    from ..metrics.wer import item_errors
    from ..model.quant import quantize_encoder
    from .service import LiveOptions, LiveService

    whisper = load_model(model, device=device)
    if encoder_precision is not None:
        quantize_encoder(whisper.model, encoder_precision)
    engine = make_engine(whisper.model, whisper.tokenizer)
    language = "en" if whisper.tokenizer.is_multilingual else None
    texts = sentences(text_path, n, ids=ids)
    audio = spoken(texts, speech_cache)
    rows: dict[str, Any] = {}
    try:
        variants: list[tuple[str, LiveOptions]] = [
            ("full", LiveOptions(short_windows=False)),
            ("short", LiveOptions(short_windows=True)),
        ]
        variants += [
            (
                f"short {','.join(f'{b:g}' for b in buckets)}",
                LiveOptions(short_windows=True, window_buckets_s=buckets),
            )
            for buckets in bucket_sets
        ]
        for name, live_options in variants:
            service = LiveService(whisper, engine, None, live_options)

            async def decode_all(service: LiveService = service) -> list[list[str]]:
                # finals (no deadline): the measurement is accuracy, not whether an overloaded CPU keeps up
                whole = [service.decode(x, language=language, prompt=None) for x in audio]
                half = [service.decode(x[: len(x) // 2], language=language, prompt=None) for x in audio]
                done = await asyncio.gather(*whole, *half)
                return [[r.text for r in done[: len(audio)]], [r.text for r in done[len(audio) :]]]

            started = time.monotonic()
            whole, half = asyncio.run(decode_all())
            wall = time.monotonic() - started
            counts = sum(
                (item_errors(t, h) for t, h in zip(texts, whole, strict=True)), start=item_errors("", "")
            )
            rows[name] = {
                "wer_whole": round(counts.errors / max(counts.reference_length, 1), 4),
                "wall_s": round(wall, 2),
                "examples": [
                    {"reference": t, "whole": w, "half": h}
                    for t, w, h in list(zip(texts, whole, half, strict=True))[:5]
                ],
                "half_wer_vs_full": None,
                "_half": half,
            }
    finally:
        engine.close()
    # Partials see cut audio, which has no reference text: score short-window halves against full-window ones.
    full_half = rows["full"].pop("_half")
    rows["full"]["half_wer_vs_full"] = 0.0
    for name, row in rows.items():
        if name != "full":
            short_half = row.pop("_half")
            agree = sum(
                (item_errors(f, s) for f, s in zip(full_half, short_half, strict=True)),
                start=item_errors("", ""),
            )
            row["half_wer_vs_full"] = round(agree.errors / max(agree.reference_length, 1), 4)
    return {
        "model": whisper.checkpoint.source,
        "random_weights": whisper.is_random,
        "utterances": len(texts),
        "seconds": round(sum(len(x) for x in audio) / 16000, 1),
        "device": str(whisper.device),
        "dtype": str(whisper.model.dtype).removeprefix("torch."),
        "encoder_precision": encoder_precision,
        "results": rows,
        "cost_wer_points": round(100 * (rows["short"]["wer_whole"] - rows["full"]["wer_whole"]), 2),
        "cost_wer_points_by_row": {
            name: round(100 * (row["wer_whole"] - rows["full"]["wer_whole"]), 2) for name, row in rows.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="checkpoint (default: the demo model)")
    p.add_argument("--n", type=int, default=40, help="utterances (default 40)")
    p.add_argument("--device", help="default: cuda when available")
    p.add_argument("--text", type=Path, default=SHARED / "text" / "ljspeech-metadata.csv")
    p.add_argument(
        "--ids", default="", help="only sentences whose ids start so (comma-separated, e.g. LJ044,LJ045)"
    )
    p.add_argument(
        "--buckets",
        action="append",
        default=[],
        type=seconds_list,
        help="another set of short-window lengths in seconds, comma-separated (repeatable; scored as one more row)",
    )
    p.add_argument(
        "--speech-cache",
        type=Path,
        help="a folder of the sentences' audio: read where a sentence's file is there, else spoken and written",
    )
    p.add_argument("--encoder-precision", choices=["fp8"], help="the encoder's Linears in fp8 (CUDA)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    ids = tuple(i.strip() for i in args.ids.split(",") if i.strip())
    from ..model.quant import QuantizationError

    try:
        doc = measure(
            args.model,
            args.n,
            args.device,
            args.text,
            ids,
            tuple(args.buckets),
            speech_cache=args.speech_cache,
            encoder_precision=args.encoder_precision,
        )
    except QuantizationError as e:  # fp8 off a capable GPU: a message, not a traceback
        print(f"window_accuracy: {e}", file=sys.stderr)
        return 2
    doc["sentence_ids"] = list(ids) or "first of the file"
    doc["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["command"] = ["python", "-m", "voxserve.live.window_accuracy", *(argv or sys.argv[1:])]
    path = write_new(doc, args.out, f"{doc['created_utc'][:16].replace(':', '')}_window-accuracy.json")
    for name, row in doc["results"].items():
        print(f"{name:>12} windows: WER {row['wer_whole']:.3f}, halves differ from full windows' by "
              f"WER {row['half_wer_vs_full']:.3f}, {row['wall_s']} s")  # fmt: skip
    print(f"short windows cost {doc['cost_wer_points']:+.2f} WER points; wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
