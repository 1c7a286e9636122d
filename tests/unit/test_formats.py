"""Output formats: exact strings per format, OpenAI shapes, timestamp edge cases, file writing."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from voxserve import formats
from voxserve.formats import (
    FORMATS,
    format_result,
    format_timestamp,
    to_json,
    to_srt,
    to_text,
    to_tsv,
    to_verbose_json,
    to_vtt,
    write_result,
)
from voxserve.results import Segment, Transcription, TranscriptionInfo, Word

# ----------------------------------------------------------------------------------------- builders


def seg(
    id: int,
    start: float,
    end: float,
    text: str,
    *,
    words: tuple[Word, ...] | None = None,
    avg_logprob: float = -0.25,
) -> Segment:
    return Segment(
        id=id,
        seek=int(start * 100),
        start=start,
        end=end,
        text=text,
        tokens=(50364 + id, 400, 401),
        temperature=0.0,
        avg_logprob=avg_logprob,
        compression_ratio=1.5,
        no_speech_prob=0.01,
        words=words,
    )


def transcription(
    segments: list[Segment], *, language: str = "en", duration: float = 10.0, task: str = "transcribe"
) -> Transcription:
    info = TranscriptionInfo(language=language, language_probability=0.98, duration=duration, task=task)
    return Transcription.from_segments(segments, info)


HELLO_WORDS = (Word(0.0, 0.6, " Hello", 0.9), Word(0.7, 2.5, " world.", 0.8))


@pytest.fixture
def result() -> Transcription:
    return transcription(
        [
            seg(0, 0.0, 2.5, " Hello world.", words=HELLO_WORDS),
            seg(1, 2.5, 2.5, ""),
            seg(2, 2.5, 5.25, " 你好，世界 🎉"),
            seg(3, 3599.9996, 3725.1234, " Line one\nline\ttwo --> three"),
        ],
        duration=3726.0004,
    )


@pytest.fixture
def with_languages(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("voxserve.tokenizer")
    fake.LANGUAGES = {"en": "english", "zh": "chinese"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "voxserve.tokenizer", fake)


@pytest.fixture
def without_languages(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import voxserve.tokenizer` raise ImportError.
    monkeypatch.setitem(sys.modules, "voxserve.tokenizer", None)


# ----------------------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("seconds", "hours", "marker", "expected"),
    [
        (0, True, ",", "00:00:00,000"),
        (0, False, ".", "00:00.000"),
        (-0.0, True, ",", "00:00:00,000"),
        (0.0004, True, ",", "00:00:00,000"),
        (0.0005, True, ",", "00:00:00,001"),
        (1.0005, False, ".", "00:01.001"),
        (59.9996, True, ",", "00:01:00,000"),
        (59.9996, False, ".", "01:00.000"),
        (3599.9995, True, ",", "01:00:00,000"),
        (3600.5, True, ",", "01:00:00,500"),
        (3600.5, False, ".", "01:00:00.500"),  # hours appear once non-zero even if not forced
        (36000, True, ",", "10:00:00,000"),
        (360000, True, ".", "100:00:00.000"),
        (83.123, True, ".", "00:01:23.123"),
    ],
)
def test_format_timestamp(seconds: float, hours: bool, marker: str, expected: str) -> None:
    assert format_timestamp(seconds, always_include_hours=hours, decimal_marker=marker) == expected


@pytest.mark.parametrize("bad", [-0.001, -1, float("nan"), float("inf"), float("-inf")])
def test_format_timestamp_rejects_negative_and_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        format_timestamp(bad, always_include_hours=True, decimal_marker=",")


# ----------------------------------------------------------------------------------------- text / json


def test_text(result: Transcription) -> None:
    assert to_text(result) == "Hello world. 你好，世界 🎉 Line one\nline\ttwo --> three"
    assert format_result(result, "text") == to_text(result)


def test_json_exact_and_round_trip(result: Transcription) -> None:
    out = to_json(result)
    assert out == '{"text": "Hello world. 你好，世界 🎉 Line one\\nline\\ttwo --> three"}'
    assert json.loads(out) == {"text": result.text}


# ----------------------------------------------------------------------------------------- verbose_json

SEGMENT_KEYS = [
    "id",
    "seek",
    "start",
    "end",
    "text",
    "tokens",
    "temperature",
    "avg_logprob",
    "compression_ratio",
    "no_speech_prob",
]


def test_verbose_json_shape(result: Transcription, with_languages: None) -> None:
    out = json.loads(to_verbose_json(result))
    assert list(out) == ["task", "language", "duration", "text", "segments", "words"]
    assert out["task"] == "transcribe"
    assert out["language"] == "english"
    assert out["duration"] == 3726.0
    assert isinstance(out["duration"], float)
    assert out["text"] == result.text
    assert len(out["segments"]) == 4
    for s, src in zip(out["segments"], result.segments, strict=True):
        assert list(s) == SEGMENT_KEYS
        assert isinstance(s["id"], int) and isinstance(s["seek"], int)
        assert isinstance(s["text"], str)
        assert all(isinstance(t, int) for t in s["tokens"]) and s["tokens"] == list(src.tokens)
        for k in ("start", "end", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
            assert isinstance(s[k], float), k
        assert s["text"] == src.text  # segment text kept as decoded (leading space), like OpenAI
    assert out["segments"][3]["start"] == 3600.0
    assert out["segments"][3]["end"] == 3725.123
    assert out["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.6},
        {"word": "world.", "start": 0.7, "end": 2.5},
    ]


def test_verbose_json_exact(with_languages: None) -> None:
    r = transcription([seg(0, 0.0, 1.5, " 你好")], language="zh", duration=1.5)
    assert to_verbose_json(r) == (
        '{"task": "transcribe", "language": "chinese", "duration": 1.5, "text": "你好", "segments": '
        '[{"id": 0, "seek": 0, "start": 0.0, "end": 1.5, "text": " 你好", "tokens": [50364, 400, 401], '
        '"temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.5, "no_speech_prob": 0.01}]}'
    )


def test_verbose_json_no_words_key_without_word_timestamps(with_languages: None) -> None:
    r = transcription([seg(0, 0.0, 1.0, " Hi")])
    assert "words" not in json.loads(to_verbose_json(r))


def test_verbose_json_task_override_and_validation(result: Transcription) -> None:
    assert json.loads(to_verbose_json(result, task="translate"))["task"] == "translate"
    assert json.loads(format_result(result, "verbose_json", task="translate"))["task"] == "translate"
    translated = transcription([seg(0, 0, 1, " Hi")], task="translate")
    assert json.loads(to_verbose_json(translated))["task"] == "translate"
    with pytest.raises(ValueError, match="task"):
        to_verbose_json(result, task="summarize")


def test_verbose_json_language_fallbacks(with_languages: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert json.loads(to_verbose_json(transcription([], language="EN")))["language"] == "english"
    # a code the table does not know is passed through
    assert json.loads(to_verbose_json(transcription([], language="tlh")))["language"] == "tlh"
    # without voxserve.tokenizer the code itself is used
    monkeypatch.setitem(sys.modules, "voxserve.tokenizer", None)
    assert json.loads(to_verbose_json(transcription([], language="en")))["language"] == "en"


def test_verbose_json_non_finite_stats_are_null(without_languages: None) -> None:
    r = transcription([seg(0, 0.0, 1.0, " Hi", avg_logprob=float("-inf"))])
    out = to_verbose_json(r)
    assert "Infinity" not in out
    assert json.loads(out)["segments"][0]["avg_logprob"] is None


def test_verbose_json_times_match_subtitles() -> None:
    # same ms rounding in every format; end clamped to start
    r = transcription([seg(0, 0.1 + 0.2, 0.0004, " x")])
    s = json.loads(to_verbose_json(r))["segments"][0]
    assert (s["start"], s["end"]) == (0.3, 0.3)
    assert "00:00:00,300 --> 00:00:00,300" in to_srt(r)


# ----------------------------------------------------------------------------------------- srt / vtt / tsv

EXPECTED_SRT = (
    "1\n"
    "00:00:00,000 --> 00:00:02,500\n"
    "Hello world.\n"
    "\n"
    "2\n"
    "00:00:02,500 --> 00:00:05,250\n"
    "你好，世界 🎉\n"
    "\n"
    "3\n"
    "01:00:00,000 --> 01:02:05,123\n"
    "Line one line two -> three\n"
)

EXPECTED_VTT = (
    "WEBVTT\n"
    "\n"
    "00:00:00.000 --> 00:00:02.500\n"
    "Hello world.\n"
    "\n"
    "00:00:02.500 --> 00:00:05.250\n"
    "你好，世界 🎉\n"
    "\n"
    "01:00:00.000 --> 01:02:05.123\n"
    "Line one line two --&gt; three\n"
)

EXPECTED_TSV = (
    "start\tend\ttext\n"
    "0\t2500\tHello world.\n"
    "2500\t5250\t你好，世界 🎉\n"
    "3600000\t3725123\tLine one line two --> three\n"
)


def test_srt_exact(result: Transcription) -> None:
    assert to_srt(result) == EXPECTED_SRT
    assert format_result(result, "srt") == EXPECTED_SRT


def test_vtt_exact(result: Transcription) -> None:
    assert to_vtt(result) == EXPECTED_VTT
    assert format_result(result, "vtt") == EXPECTED_VTT


def test_tsv_exact(result: Transcription) -> None:
    assert to_tsv(result) == EXPECTED_TSV
    assert format_result(result, "tsv") == EXPECTED_TSV
    for line in to_tsv(result).splitlines():
        assert line.count("\t") == 2


def test_blank_segments_skipped_numbering_consecutive() -> None:
    r = transcription([seg(0, 0, 1, " a"), seg(1, 1, 2, "  \n\t "), seg(2, 2, 3, ""), seg(3, 3, 4, " b")])
    assert to_srt(r) == "1\n00:00:00,000 --> 00:00:01,000\na\n\n2\n00:00:03,000 --> 00:00:04,000\nb\n"
    assert to_vtt(r).count("-->") == 2
    assert to_tsv(r) == "start\tend\ttext\n0\t1000\ta\n3000\t4000\tb\n"


def test_empty_result() -> None:
    r = transcription([])
    assert to_text(r) == ""
    assert json.loads(to_json(r)) == {"text": ""}
    assert to_srt(r) == ""
    assert to_vtt(r) == "WEBVTT\n"
    assert to_tsv(r) == "start\tend\ttext\n"


def test_end_never_before_start_and_negative_start_clamped() -> None:
    r = transcription([seg(0, 5.0, 4.0, " back"), seg(1, -0.0001, 0.5, " early")])
    assert to_srt(r) == (
        "1\n00:00:05,000 --> 00:00:05,000\nback\n\n2\n00:00:00,000 --> 00:00:00,500\nearly\n"
    )


def test_arrow_and_markup_safety() -> None:
    r = transcription([seg(0, 0, 1, " a ---> b --> c & <i>d</i>")])
    srt_text = to_srt(r).splitlines()[2]
    assert "-->" not in srt_text
    assert srt_text == "a -> b -> c & <i>d</i>"
    vtt_text = to_vtt(r).splitlines()[3]
    assert vtt_text == "a ---&gt; b --&gt; c &amp; &lt;i&gt;d&lt;/i&gt;"


FIVE_WORDS = (
    Word(10.0, 10.4, " one", 0.9),
    Word(10.5, 10.9, " two", 0.9),
    Word(11.0, 11.4, " three", 0.9),
    Word(11.5, 11.9, " four", 0.9),
    Word(12.0, 12.6, " five.", 0.9),
)


def test_words_per_line_splits_cues() -> None:
    r = transcription(
        [seg(0, 10.0, 12.6, " one two three four five.", words=FIVE_WORDS), seg(1, 13, 14, " tail")]
    )
    assert to_srt(r, words_per_line=2) == (
        "1\n00:00:10,000 --> 00:00:10,900\none two\n\n"
        "2\n00:00:11,000 --> 00:00:11,900\nthree four\n\n"
        "3\n00:00:12,000 --> 00:00:12,600\nfive.\n\n"
        "4\n00:00:13,000 --> 00:00:14,000\ntail\n"  # no words: whole segment is one cue
    )
    assert format_result(r, "vtt", words_per_line=2) == (
        "WEBVTT\n\n"
        "00:00:10.000 --> 00:00:10.900\none two\n\n"
        "00:00:11.000 --> 00:00:11.900\nthree four\n\n"
        "00:00:12.000 --> 00:00:12.600\nfive.\n\n"
        "00:00:13.000 --> 00:00:14.000\ntail\n"
    )


def test_max_line_width_splits_cues() -> None:
    r = transcription([seg(0, 10.0, 12.6, " one two three four five.", words=FIVE_WORDS)])
    texts = [c[3] for c in parse_srt(to_srt(r, max_line_width=9))]
    assert texts == ["one two", "three", "four", "five."]
    assert all(len(t) <= 9 for t in texts)
    # a word longer than the width still gets its own cue
    assert [c[3] for c in parse_srt(to_srt(r, max_line_width=3))] == ["one", "two", "three", "four", "five."]
    both = [c[3] for c in parse_srt(to_srt(r, words_per_line=3, max_line_width=100))]
    assert both == ["one two three", "four five."]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_invalid_split_options(bad: object) -> None:
    r = transcription([seg(0, 0, 1, " a")])
    with pytest.raises(ValueError):
        to_srt(r, words_per_line=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_vtt(r, max_line_width=bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- structural srt check

SRT_CUE = re.compile(
    r"(\d+)\n(\d{2,}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2,}):(\d{2}):(\d{2}),(\d{3})\n([^\n]+)\n(?:\n|\Z)"
)


def parse_srt(text: str) -> list[tuple[int, int, int, str]]:
    """(number, start_ms, end_ms, text) per cue; asserts the whole input is well-formed cues."""
    cues = []
    pos = 0
    while pos < len(text):
        m = SRT_CUE.match(text, pos)
        assert m, f"malformed SRT at {pos}: {text[pos : pos + 60]!r}"
        g = m.groups()
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(x) for x in g[1:9])
        assert m1 < 60 and s1 < 60 and m2 < 60 and s2 < 60
        start = ((h1 * 60 + m1) * 60 + s1) * 1000 + ms1
        end = ((h2 * 60 + m2) * 60 + s2) * 1000 + ms2
        cues.append((int(g[0]), start, end, g[9]))
        pos = m.end()
    return cues


def test_srt_structure_round_trip() -> None:
    segments = []
    t = 0.0
    for i in range(60):
        dur = 0.3337 * (i % 7 + 1) + (3599.0 if i == 30 else 0.0)  # jump past an hour mid-way
        text = "" if i % 9 == 4 else f" cue {i}\nsecond line 字 {i}"
        segments.append(seg(i, t, t + dur, text))
        t += dur
    r = transcription(segments, duration=t)
    cues = parse_srt(to_srt(r))
    kept = [s for s in segments if s.text.strip()]
    assert [c[0] for c in cues] == list(range(1, len(kept) + 1))
    for (_, start, end, text), s in zip(cues, kept, strict=True):
        assert start == formats._to_ms(s.start)
        assert end == formats._to_ms(s.end)
        assert start <= end
        assert text == " ".join(s.text.split())
    assert cues[-1][1] > 3_600_000


# ----------------------------------------------------------------------------------------- dispatch / files


def test_format_result_dispatch(result: Transcription) -> None:
    assert format_result(result, "json") == to_json(result)
    assert format_result(result, "verbose_json") == to_verbose_json(result)
    for fmt in FORMATS:
        assert isinstance(format_result(result, fmt), str)


def test_unknown_format(result: Transcription) -> None:
    with pytest.raises(ValueError) as err:
        format_result(result, "docx")
    msg = str(err.value)
    assert "docx" in msg
    for fmt in FORMATS:
        assert fmt in msg


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("text", "talk.txt"),
        ("json", "talk.json"),
        ("verbose_json", "talk.json"),
        ("srt", "talk.srt"),
        ("vtt", "talk.vtt"),
        ("tsv", "talk.tsv"),
    ],
)
def test_write_result(result: Transcription, tmp_path, fmt: str, name: str) -> None:
    out_dir = tmp_path / "nested" / "out"
    path = write_result(result, fmt, out_dir, "talk")
    assert path == out_dir / name
    raw = path.read_bytes()
    assert "你好，世界 🎉".encode() in raw  # UTF-8, not escaped
    assert b"\r\n" not in raw
    content = raw.decode("utf-8")
    assert content.endswith("\n") and not content.endswith("\n\n")
    assert content.rstrip("\n") == format_result(result, fmt).rstrip("\n")
    if fmt in ("json", "verbose_json"):
        json.loads(content)


def test_write_result_rejects_bad_input(result: Transcription, tmp_path) -> None:
    with pytest.raises(ValueError):
        write_result(result, "docx", tmp_path, "talk")
    for stem in ("", "a/b", "..", "a\\b"):
        with pytest.raises(ValueError):
            write_result(result, "srt", tmp_path, stem)
    assert list(tmp_path.iterdir()) == []
