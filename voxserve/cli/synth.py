"""``voxserve synth``: make a synthetic speech dataset (WAV + JSONL manifests) from text with espeak-ng."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _pair(kind: type) -> "callable":  # noqa: UP037 (argparse type factory)
    def parse(text: str) -> tuple:
        parts = text.split(",")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}")
        try:
            lo, hi = (kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected two numbers LO,HI, got {text!r}") from None
        if lo > hi:
            raise argparse.ArgumentTypeError(f"LO must not exceed HI in {text!r}")
        return lo, hi

    return parse


def _prob(text: str) -> float:
    p = float(text)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {text}")
    return p


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="make a synthetic speech dataset with espeak-ng",
        description="Render sentences with espeak-ng in random voices, speeds and pitches, and write 16 kHz "
        "16-bit WAV files with train.jsonl and heldout.jsonl manifests (held-out sentences never occur in the "
        "training set). espeak-ng is found through $ESPEAK_NG or the PATH; for a copy unpacked outside the "
        "system folders, $ESPEAK_DATA_PATH names the folder holding espeak-ng-data and $ESPEAK_NG_LIBRARY_PATH "
        "its libraries (used for the espeak-ng processes only). Prints the throughput in seconds of audio per "
        "second per worker and writes a summary to OUT/synth.json.",
    )
    p.add_argument("--text", type=Path, help="English corpus: LJSpeech metadata.csv (id|raw|normalized; the "
                   "normalized column is used) or plain text, one sentence a line")  # fmt: skip
    p.add_argument(
        "--zh-text", type=Path, help="Mandarin corpus, one sentence a line (used with --languages cmn)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; WAVs go under train/ and "
                   "heldout/, manifests beside them)")  # fmt: skip
    p.add_argument("--languages", type=_csv, default=["en"], help="comma-separated: en, cmn (Mandarin, written "
                   "'zh' in the manifest). Default: en")  # fmt: skip
    p.add_argument("--voices", type=_csv, help="espeak-ng voices, comma-separated; those starting with cmn or zh "
                   "speak Mandarin, the rest English. Default: en-us,en,en-gb-x-rp,en-029,en-gb-scotland,"
                   "en-gb-x-gbclan,en-gb-x-gbcwmd and cmn-latn-pinyin")  # fmt: skip
    p.add_argument("--variants", type=_csv, help="espeak-ng voice variants drawn at random, comma-separated; "
                   "'plain' is the voice unchanged. Default: plain,m1..m7,f1..f4")  # fmt: skip
    p.add_argument("--speeds", type=_pair(int), default=(130, 210), metavar="LO,HI",
                   help="speaking rate range in words a minute (default 130,210)")  # fmt: skip
    p.add_argument("--pitches", type=_pair(int), default=(25, 75), metavar="LO,HI",
                   help="espeak-ng pitch range, 0..99 (default 25,75)")  # fmt: skip
    p.add_argument("--pad", type=_pair(float), default=(0.05, 0.5), metavar="LO,HI",
                   help="seconds of silence kept before and after the speech (default 0.05,0.5)")  # fmt: skip
    p.add_argument("--variants-per-sentence", type=int, default=1, metavar="N",
                   help="renderings of each training sentence, each in its own random voice (default 1)")  # fmt: skip
    p.add_argument("--noise-prob", type=_prob, default=0.0, metavar="P",
                   help="probability of adding white/pink/brown noise to a training utterance (default 0)")  # fmt: skip
    p.add_argument("--snr-db", type=_pair(float), default=(5.0, 30.0), metavar="LO,HI",
                   help="signal-to-noise ratio range for added noise, in dB (default 5,30)")  # fmt: skip
    p.add_argument("--telephone-prob", type=_prob, default=0.0, metavar="P",
                   help="probability of passing a training utterance through an 8 kHz G.711 mu-law "
                   "telephone channel (default 0)")  # fmt: skip
    p.add_argument("--gain-prob", type=_prob, default=0.0, metavar="P",
                   help="probability of a random gain change of -6..+6 dB (default 0)")  # fmt: skip
    hold = p.add_mutually_exclusive_group()
    hold.add_argument("--holdout", type=int, metavar="N", help="held-out sentences per language (default 0)")
    hold.add_argument("--holdout-frac", type=float, metavar="F", help="fraction of sentences held out")
    p.add_argument("--extra-generated", type=int, default=0, metavar="N",
                   help="add N generated sentences per language about numbers, dates, times, phone numbers "
                   "and money, all written in words (default 0)")  # fmt: skip
    p.add_argument("--extra-mixed", type=int, default=0, metavar="N",
                   help="add N English training sentences recombined from the training split of --text: "
                   "spliced word runs, mixed clauses and word lists (voxserve/train/textmix.py), so the model "
                   "cannot learn whole sentences; never equal to a held-out sentence (default 0)")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="W",
                   help="parallel synthesis processes (default: the number of CPU cores)")  # fmt: skip
    p.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N corpus sentences per language"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _sentences(args: argparse.Namespace, language: str) -> tuple[list[str], list[str]]:
    """(corpus sentences, generated number sentences) for ``language``."""
    from ..train.corpus import clean_sentence, read_corpus
    from ..train.textgen import generate

    corpus = args.text if language == "en" else args.zh_text
    raw = read_corpus(corpus) if corpus else []
    cleaned = [s for s in (clean_sentence(t, language) for t in raw) if s]
    if args.limit is not None:
        cleaned = cleaned[: args.limit]
    generated = generate(args.extra_generated, language, seed=args.seed) if args.extra_generated else []
    return cleaned, generated


def _mixed(args: argparse.Namespace, corpus: list[str], train: list[str], held: list[str]) -> list[str]:
    """--extra-mixed sentences recombined from the training split's corpus sentences (all training sentences
    when there is no corpus), none equal to a held-out one."""
    from ..train.textmix import recombine

    if not args.extra_mixed:
        return []
    in_corpus = set(corpus)
    source = [s for s in train if s in in_corpus] or train
    return recombine(source, args.extra_mixed, seed=args.seed, exclude=held)


def run(args: argparse.Namespace) -> int:
    from ..train.augment import Augmentation
    from ..train.corpus import CorpusError, split_holdout
    from ..train.espeak import DEFAULT_VARIANTS, DEFAULT_VOICES, EspeakError, list_variants, voice_available
    from ..train.synth import SynthConfig, plan_jobs, synthesize

    def fail(message: str, code: int = 1) -> int:
        print(f"voxserve synth: error: {message}", file=sys.stderr)
        return code

    languages = ["zh" if lang in ("cmn", "zh") else lang for lang in args.languages]
    if unknown := sorted(set(languages) - {"en", "zh"}):
        return fail(f"unsupported --languages {unknown}; choose from en, cmn", 2)
    if args.workers < 1 or args.variants_per_sentence < 1 or min(args.extra_generated, args.extra_mixed) < 0:
        return fail(
            "--workers and --variants-per-sentence must be >= 1, --extra-generated/--extra-mixed >= 0", 2
        )
    voices = dict(DEFAULT_VOICES)
    if args.voices:
        voices = {"en": (), "zh": ()}
        for v in args.voices:
            key = "zh" if v.startswith(("cmn", "zh")) else "en"
            voices[key] = (*voices[key], v)
    variants = DEFAULT_VARIANTS
    if args.variants:
        variants = tuple("" if v == "plain" else v for v in args.variants)
    try:
        known = list_variants()
        if bad := sorted(v for v in variants if v and v not in known):
            return fail(f"unknown espeak-ng voice variants {bad}; see `espeak-ng --voices=variant`", 2)
        for lang in languages:
            if not voices.get(lang):
                return fail(f"no voice given for language {lang!r}", 2)
            if bad := [v for v in voices[lang] if not voice_available(v)]:
                return fail(f"espeak-ng has no voice {bad}; see `espeak-ng --voices`", 2)
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
        for lang in languages:
            if lang == "en" and not args.text and not args.extra_generated:
                return fail("English needs --text CORPUS or --extra-generated N", 2)
            corpus, generated = _sentences(args, lang)
            sentences = corpus + generated
            if not sentences:
                return fail(f"no usable {lang} sentences (give --text / --zh-text or --extra-generated)")
            train, held = split_holdout(
                sentences, language=lang, holdout=args.holdout, holdout_frac=args.holdout_frac, seed=args.seed
            )
            # Recombined sentences are training text only: English, made after the split, from training text.
            mixed = _mixed(args, corpus, train, held) if lang == "en" else []
            splits["train"] += [(s, lang) for s in train + mixed]
            splits["heldout"] += [(s, lang) for s in held]
        augmentation = Augmentation(
            noise_prob=args.noise_prob, snr_db=args.snr_db, telephone_prob=args.telephone_prob,
            gain_prob=args.gain_prob,
        )  # fmt: skip
        config = SynthConfig(
            voices=voices, variants=variants, speeds=args.speeds, pitches=args.pitches,
            variants_per_sentence=args.variants_per_sentence, pad=args.pad, augmentation=augmentation,
            seed=args.seed,
        )  # fmt: skip
        jobs = plan_jobs({k: v for k, v in splits.items() if v}, config)
        report = synthesize(jobs, args.out, augmentation, workers=args.workers, progress=not args.quiet)
    except (CorpusError, EspeakError, ValueError) as e:
        return fail(str(e))

    summary = {
        "utterances": {k: len(v) for k, v in report.rows.items()},
        "sentences": {k: len(v) for k, v in splits.items()},
        "audio_hours": round(report.audio_seconds / 3600, 3),
        "wall_seconds": round(report.wall_seconds, 1),
        "workers": report.workers,
        "audio_seconds_per_second_per_core": round(report.realtime_per_core, 2),
        "failures": len(report.failures),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
    }
    Path(args.out, "synth.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for name, error in report.failures[:5]:
        print(f"voxserve synth: failed {name}: {error}", file=sys.stderr)
    print(
        f"wrote {sum(summary['utterances'].values())} utterances ({summary['utterances']}), "
        f"{summary['audio_hours']} h of audio in {summary['wall_seconds']} s with {report.workers} workers: "
        f"{summary['audio_seconds_per_second_per_core']} s of audio per second per core; "
        f"{len(report.failures)} failed"
    )
    total = len(jobs)
    return 1 if report.failures and len(report.failures) > 0.01 * total else 0
