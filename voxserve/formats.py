"""Render a :class:`~voxserve.results.Transcription` as text in each output format.

Formats and the shapes they follow:

* ``text``          the transcript text (OpenAI ``response_format=text``); no trailing newline.
* ``json``          ``{"text": ...}`` (OpenAI ``response_format=json``).
* ``verbose_json``  OpenAI's verbose shape: task, language name, duration, text, segments, words.
* ``srt``           SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``.
* ``vtt``           WebVTT: ``WEBVTT`` header, cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` (hours always written).
* ``tsv``           ``start<TAB>end<TAB>text`` with integer milliseconds.

All times are rounded to whole milliseconds half-up on the decimal value of the float (so ``0.0005`` is
1 ms and ``59.9996`` is ``00:01:00.000``); every format that shows times uses the same rounding, so the
same segment has the same times in srt, vtt, tsv and verbose_json. Subtitle and tsv cues skip segments
whose text is blank, collapse all whitespace (line breaks, tabs) into single spaces, and never end before
they start. Strings are returned without a trailing newline except the line-oriented formats
(srt, vtt, tsv), which end with one; :func:`write_result` makes sure every file ends with a newline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from voxserve.results import Segment, Transcription, Word

FORMATS = ("text", "json", "verbose_json", "srt", "vtt", "tsv")

EXTENSIONS: dict[str, str] = {
    "text": "txt",
    "json": "json",
    "verbose_json": "json",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
}

TASKS = ("transcribe", "translate")

_MS = Decimal("1")


# --------------------------------------------------------------------------------------------- times


def _to_ms(seconds: float) -> int:
    """Seconds -> whole milliseconds, rounded half-up on the float's shortest decimal form."""
    seconds = float(seconds)
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp must be finite, got {seconds!r}")
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds!r}")
    # repr() gives the shortest decimal that round-trips, so 1.0005 rounds like the 1.0005 a person
    # wrote instead of like 1.000499999... in binary.
    return int((Decimal(repr(seconds)) * 1000).quantize(_MS, rounding=ROUND_HALF_UP))


def _format_ms(ms: int, *, always_include_hours: bool, decimal_marker: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1_000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def format_timestamp(seconds: float, *, always_include_hours: bool, decimal_marker: str) -> str:
    """Format ``seconds`` as ``[HH:]MM:SS<marker>mmm``, rounded to the millisecond with carry.

    Hours are written with at least two digits (more past 99 h). Raises ``ValueError`` for a negative
    or non-finite time.
    """
    return _format_ms(
        _to_ms(seconds), always_include_hours=always_include_hours, decimal_marker=decimal_marker
    )


def _seconds(seconds: float) -> float:
    """A time for JSON: rounded to the millisecond exactly as the subtitle formats round it."""
    return _to_ms(max(0.0, seconds)) / 1000


# --------------------------------------------------------------------------------------------- cues


def _collapse(text: str) -> str:
    """All runs of whitespace (line breaks, tabs, ...) -> one space; stripped."""
    return " ".join(text.split())


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def _chunk_words(
    words: Sequence[Word], words_per_line: int | None, max_line_width: int | None
) -> Iterator[list[Word]]:
    """Greedy split of a segment's words into cue-sized runs.

    A run closes when it holds ``words_per_line`` words or when the next word would make its collapsed
    text longer than ``max_line_width`` characters; a single word longer than the width gets a run of
    its own.
    """
    run: list[Word] = []
    for word in words:
        if run:
            full = words_per_line is not None and len(run) >= words_per_line
            too_wide = (
                max_line_width is not None
                and len(_collapse("".join(w.word for w in run) + word.word)) > max_line_width
            )
            if full or too_wide:
                yield run
                run = []
        run.append(word)
    if run:
        yield run


def _cues(
    segments: Sequence[Segment],
    *,
    words_per_line: int | None = None,
    max_line_width: int | None = None,
) -> Iterator[tuple[int, int, str]]:
    """(start_ms, end_ms, collapsed text) for each non-blank cue, in segment order.

    Negative times (float noise upstream) are clamped to 0; the end is never before the start.
    """
    _check_positive("words_per_line", words_per_line)
    _check_positive("max_line_width", max_line_width)
    split = words_per_line is not None or max_line_width is not None

    def cue(start: float, end: float, text: str) -> tuple[int, int, str] | None:
        text = _collapse(text)
        if not text:
            return None
        start_ms = _to_ms(max(0.0, start))
        end_ms = max(_to_ms(max(0.0, end)), start_ms)
        return start_ms, end_ms, text

    for seg in segments:
        if split and seg.words:
            for run in _chunk_words(seg.words, words_per_line, max_line_width):
                c = cue(run[0].start, run[-1].end, "".join(w.word for w in run))
                if c is not None:
                    yield c
        else:
            c = cue(seg.start, seg.end, seg.text)
            if c is not None:
                yield c


def _srt_safe(text: str) -> str:
    # "-->" is the cue timing separator; shrink it until none is left ("--->" would become "-->").
    while "-->" in text:
        text = text.replace("-->", "->")
    return text


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: "&" and "<" must be escaped, and escaping ">" also rules out "-->".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------- formats


def to_text(result: Transcription) -> str:
    """The transcript text, without a trailing newline (the CLI and :func:`write_result` add one)."""
    return result.text


def _dumps(obj: Any) -> str:
    # ensure_ascii=False writes Chinese and emoji as UTF-8; allow_nan=False refuses to emit invalid JSON.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def to_json(result: Transcription) -> str:
    """OpenAI's ``json`` response: ``{"text": ...}``."""
    return _dumps({"text": result.text})


def _language_name(code: str) -> str:
    """English name of a language code in lower case ("en" -> "english"), as OpenAI reports it.

    Uses ``voxserve.tokenizer.LANGUAGES`` when that module provides it; otherwise (or for a code it does
    not know) returns the code itself, lower-cased.
    """
    try:
        from voxserve.tokenizer import LANGUAGES
    except ImportError:
        return code.lower()
    return str(LANGUAGES.get(code.lower(), code)).lower()


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def verbose_dict(result: Transcription, task: str | None = None) -> dict[str, Any]:
    """The ``verbose_json`` object as a dict (see :func:`to_verbose_json`)."""
    task = result.info.task if task is None else task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    out: dict[str, Any] = {
        "task": task,
        "language": _language_name(result.info.language),
        "duration": _seconds(result.info.duration),
        "text": result.text,
        "segments": [
            {
                "id": int(s.id),
                "seek": int(s.seek),
                "start": _seconds(s.start),
                "end": max(_seconds(s.end), _seconds(s.start)),
                "text": s.text,
                "tokens": [int(t) for t in s.tokens],
                "temperature": float(s.temperature),
                "avg_logprob": _finite_or_none(s.avg_logprob),
                "compression_ratio": _finite_or_none(s.compression_ratio),
                "no_speech_prob": _finite_or_none(s.no_speech_prob),
            }
            for s in result.segments
        ],
    }
    words = result.words or tuple(w for s in result.segments for w in (s.words or ()))
    if words:
        out["words"] = [
            {
                "word": w.word.strip(),
                "start": _seconds(w.start),
                "end": max(_seconds(w.end), _seconds(w.start)),
            }
            for w in words
        ]
    return out


def to_verbose_json(result: Transcription, task: str | None = None) -> str:
    """OpenAI's ``verbose_json`` response.

    ``{"task", "language" (lower-case English name), "duration", "text", "segments": [{"id", "seek",
    "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
    "no_speech_prob"}], "words": [{"word", "start", "end"}]}``; ``words`` only when word timestamps
    exist. ``task`` overrides ``result.info.task``. Times are rounded to the millisecond; a non-finite
    statistic (e.g. ``-inf`` log-prob) is written as ``null`` so the output stays valid JSON.
    """
    return _dumps(verbose_dict(result, task))


def to_srt(
    result: Transcription, *, words_per_line: int | None = None, max_line_width: int | None = None
) -> str:
    """SubRip subtitles: cues numbered from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line between.

    Blank segments are skipped (numbering stays consecutive). With ``words_per_line`` or
    ``max_line_width`` and word timestamps, segments are split into cues along their words.
    """
    blocks = []
    for i, (start, end, text) in enumerate(
        _cues(result.segments, words_per_line=words_per_line, max_line_width=max_line_width), start=1
    ):
        times = " --> ".join(
            _format_ms(t, always_include_hours=True, decimal_marker=",") for t in (start, end)
        )
        blocks.append(f"{i}\n{times}\n{_srt_safe(text)}\n")
    return "\n".join(blocks)


def to_vtt(
    result: Transcription, *, words_per_line: int | None = None, max_line_width: int | None = None
) -> str:
    """WebVTT subtitles: ``WEBVTT``, a blank line, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``.

    Hours are always written (valid WebVTT, and the same width on every cue). Cue text is escaped
    (``&``, ``<``, ``>``). Cue selection and splitting are the same as :func:`to_srt`.
    """
    blocks = ["WEBVTT\n"]
    for start, end, text in _cues(
        result.segments, words_per_line=words_per_line, max_line_width=max_line_width
    ):
        times = " --> ".join(
            _format_ms(t, always_include_hours=True, decimal_marker=".") for t in (start, end)
        )
        blocks.append(f"{times}\n{_vtt_escape(text)}\n")
    return "\n".join(blocks)


def to_tsv(result: Transcription) -> str:
    """``start<TAB>end<TAB>text`` header then one row per non-blank segment, times in integer ms.

    Whitespace in the text (tabs, line breaks) is collapsed to single spaces so every row stays one line
    with three fields.
    """
    lines = ["start\tend\ttext"]
    lines += [f"{start}\t{end}\t{text}" for start, end, text in _cues(result.segments)]
    return "\n".join(lines) + "\n"


def format_result(
    result: Transcription,
    fmt: str,
    *,
    task: str | None = None,
    words_per_line: int | None = None,
    max_line_width: int | None = None,
) -> str:
    """Render ``result`` in ``fmt`` (one of :data:`FORMATS`); ``ValueError`` for an unknown format.

    ``task`` applies to ``verbose_json``; ``words_per_line`` / ``max_line_width`` to ``srt`` and ``vtt``.
    """
    if fmt == "text":
        return to_text(result)
    if fmt == "json":
        return to_json(result)
    if fmt == "verbose_json":
        return to_verbose_json(result, task)
    if fmt == "srt":
        return to_srt(result, words_per_line=words_per_line, max_line_width=max_line_width)
    if fmt == "vtt":
        return to_vtt(result, words_per_line=words_per_line, max_line_width=max_line_width)
    if fmt == "tsv":
        return to_tsv(result)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def write_result(
    result: Transcription,
    fmt: str,
    out_dir: Path,
    stem: str,
    *,
    task: str | None = None,
    words_per_line: int | None = None,
    max_line_width: int | None = None,
) -> Path:
    """Write ``result`` as ``out_dir/stem.<ext>`` (UTF-8, ``\\n`` line endings, ending with a newline).

    The extension is :data:`EXTENSIONS` [fmt]: ``text`` -> ``.txt``, ``json`` and ``verbose_json`` ->
    ``.json``. ``out_dir`` is created if missing. Returns the path written.
    """
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem:
        raise ValueError(f"stem must be a plain file name without directories, got {stem!r}")
    content = format_result(
        result, fmt, task=task, words_per_line=words_per_line, max_line_width=max_line_width
    )
    if content and not content.endswith("\n"):
        content += "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.{EXTENSIONS[fmt]}"
    path.write_text(content, encoding="utf-8", newline="\n")
    return path
