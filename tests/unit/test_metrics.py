"""Normaliser and error-rate tests against hand-computed cases."""

from __future__ import annotations

import random

import pytest

from voxserve.metrics.normalize import chinese_cardinal, normalize_chinese, normalize_english, scoring_units
from voxserve.metrics.numbers import cardinal, ordinal, year
from voxserve.metrics.wer import ErrorCounts, align, corpus_errors, item_errors, metric_name


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (105, "one hundred five"),
        (199, "one hundred ninety-nine"),
        (2023, "two thousand twenty-three"),
        (1_200_005, "one million two hundred thousand five"),
        (-7, "minus seven"),
    ],
)
def test_cardinal(n, words):
    assert cardinal(n) == words


def test_ordinal_and_year():
    assert [ordinal(n) for n in (1, 2, 3, 12, 20, 27, 100)] == [
        "first", "second", "third", "twelfth", "twentieth", "twenty-seventh", "one hundredth",
    ]  # fmt: skip
    assert [year(y) for y in (1455, 1800, 1803, 2005, 2023)] == [
        "fourteen fifty-five", "eighteen hundred", "eighteen oh three", "two thousand five", "twenty twenty-three",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Twenty-three dollars and five cents.", "twenty three dollars and five cents"),
        ("$23.05", "twenty three dollars and five cents"),
        ("$1", "one dollar"),
        ("It costs $3 million", "it costs three million dollars"),
        ("at 3:45 p.m.", "at three forty five p m"),
        ("at 3 PM", "at three p m"),
        ("10:05", "ten oh five"),
        ("eleven o'clock", "eleven"),
        ("the 14th of June", "the fourteenth of june"),
        ("in 1999", "in nineteen ninety nine"),
        ("1,200 people", "one thousand two hundred people"),
        ("5% and 3.14", "five percent and three point one four"),
        ("call 555-123-4567", "call five five five one two three four five six seven"),
        ("I can't; we won't; they're", "i can not we will not they are"),
        ("Mr. Smith and Dr. Jones", "mister smith and doctor jones"),
        ("two hundred and five", "two hundred five"),
        ("[Music] so (applause) it goes", "so it goes"),
        ("  spaced \t out\n", "spaced out"),
        ("Caf\u00e9 \u201cquoted\u201d \u2014 dash", "caf\u00e9 quoted dash"),
    ],
)
def test_normalize_english(text, expected):
    assert normalize_english(text) == expected


def test_digits_and_words_normalise_alike():
    assert normalize_english("I paid $23.05 on the 4th at 7:30") == normalize_english(
        "I paid twenty-three dollars and five cents on the fourth at seven thirty"
    )


def test_normalize_chinese():
    assert normalize_chinese("你好，世界！ Hello") == "你好世界hello"
    assert normalize_chinese("我有15个苹果") == "我有十五个苹果"
    assert normalize_chinese("2023年") == "二零二三年"
    assert [chinese_cardinal(n) for n in (10, 15, 105, 1005, 10005, 100200, 20000)] == [
        "十", "十五", "一百零五", "一千零五", "一万零五", "十万零二百", "二万",
    ]  # fmt: skip
    assert scoring_units("你好，世界", "zh") == ["你", "好", "世", "界"]


def test_align_hand_computed():
    # ref a b c d / hyp a x c d e: b->x substituted, e inserted.
    assert align("a b c d".split(), "a x c d e".split()) == ErrorCounts(1, 0, 1, 3)
    # "the cat sat" / "cat sat on mat": "the" deleted, "on mat" inserted.
    assert align("the cat sat".split(), "cat sat on mat".split()) == ErrorCounts(0, 1, 2, 2)
    assert align([], ["a"]) == ErrorCounts(insertions=1)
    assert align(["a", "b"], []) == ErrorCounts(deletions=2)
    assert align("a b".split(), "a b".split()) == ErrorCounts(hits=2)


def test_item_and_corpus_rates():
    # jiwer-style values derived by hand: ref 4 words, hyp has one substitution -> 0.25.
    e = item_errors("The cat sat down.", "the bat sat down")
    assert (e.substitutions, e.deletions, e.insertions, e.rate) == (1, 0, 0, 0.25)
    # Corpus rate adds counts: (1 + 2) errors over (4 + 2) words = 0.5, not the mean of 0.25 and 1.0.
    total, items = corpus_errors(["the cat sat down", "hello world"], ["the bat sat down", ""])
    assert [i.rate for i in items] == [0.25, 1.0]
    assert total.errors == 3 and total.reference_length == 6 and total.rate == 0.5
    # CER: 你好世界 vs 你们世界 -> one substituted character in four.
    assert item_errors("你好，世界", "你们世界", "zh").rate == 0.25
    assert metric_name("zh") == "CER" and metric_name("en") == "WER"
    assert ErrorCounts().rate == 0.0 and ErrorCounts(insertions=1).rate == float("inf")
    with pytest.raises(ValueError, match="2 references but 1"):
        corpus_errors(["a", "b"], ["a"])


def _reference_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_align_matches_plain_dynamic_programming():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 12))]
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 12))]
        e = align(a, b)
        assert e.errors == _reference_distance(a, b)
        assert e.reference_length == len(a)
        assert e.hits + e.substitutions + e.insertions == len(b)
