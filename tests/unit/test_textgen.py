"""Generated number sentences: words only, distinct, deterministic per seed, normaliser-stable."""

from __future__ import annotations

import re

import pytest

from voxserve.metrics.normalize import normalize_chinese, normalize_english
from voxserve.train.textgen import generate, generate_chinese, generate_english


def test_english_is_words_only_and_deterministic():
    a = generate_english(300, seed=3)
    assert a == generate_english(300, seed=3)
    assert a != generate_english(300, seed=4)
    assert len(set(a)) == 300
    for s in a:
        assert not re.search(r"[0-9$%£€@&#/]", s), s
        # Already in spoken form: normalising changes case and punctuation only ("o'clock" is dropped on
        # both sides of a comparison, since "3:00" carries no such word).
        plain = re.sub(r"[^\w\s']", " ", s.lower().replace("o'clock", "")).replace("'", "")
        assert normalize_english(s) == " ".join(plain.split())


def test_english_covers_every_kind_of_number():
    text = " ".join(generate_english(400, seed=0))
    for word in ("dollars", "cents", "p.m.", "nineteen", "January", "hundred", "thousand", "zero"):
        assert word in text, word


def test_chinese_uses_chinese_numerals_only():
    a = generate_chinese(100, seed=1)
    assert a == generate_chinese(100, seed=1) and len(set(a)) == 100
    for s in a:
        assert not re.search(r"[0-9A-Za-z]", s), s
        assert normalize_chinese(s) == re.sub(r"[，。]", "", s)


def test_bad_requests():
    with pytest.raises(ValueError, match="no sentence generator"):
        generate(3, "fr")
    with pytest.raises(ValueError):
        generate_english(-1)
    assert generate(2, "cmn") == generate_chinese(2)
