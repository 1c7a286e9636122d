"""Text normalisation before scoring: two transcripts that say the same words normalise to the same string.

English (for WER): lower case; digits, money, times, ordinals, percentages and phone numbers become the words
``voxserve.metrics.numbers`` writes (the spelling voxserve's synthetic training text uses); contractions and
common titles are expanded; punctuation becomes space. Written in the spirit of Whisper's EnglishTextNormalizer,
but mapping digits to words rather than words to digits, because voxserve's training text spells numbers out.
It does not standardise British and American spellings.

Chinese (for CER): full-width forms folded, Arabic numerals read as Chinese numerals, punctuation and spaces
removed; scoring then compares characters.
"""

from __future__ import annotations

import re
import unicodedata

from .numbers import cardinal, decimal, digits, ordinal, year

# Languages written without spaces between words: scored per character (CER).
CHARACTER_LANGUAGES = frozenset({"zh", "cmn", "yue", "ja", "th", "lo", "my"})

_CONTRACTIONS = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'ve\b", " have"),
    (r"'ll\b", " will"),
    (r"'m\b", " am"),
    (r"'d\b", " would"),
]
_TITLES = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "prof": "professor", "jr": "junior",
    "sr": "senior", "vs": "versus", "etc": "et cetera", "st": "saint", "capt": "captain", "gen": "general",
    "lt": "lieutenant", "col": "colonel", "sgt": "sergeant", "rev": "reverend", "hon": "honorable",
}  # fmt: skip
_SYMBOLS = {"&": " and ", "+": " plus ", "@": " at ", "%": " percent ", "=": " equals "}
_NON_SPEECH = "music|applause|laughter|laughs|inaudible|noise|silence|crosstalk"
_CURRENCIES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}
_NUMBER_WORD = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\w+teen|twenty|thirty|forty|fifty"
    r"|sixty|seventy|eighty|ninety)"
)


def _plural(n: int, unit: str) -> str:
    if n == 1:
        return unit
    return "pence" if unit == "penny" else unit + "s"


def _money(m: re.Match) -> str:
    unit, subunit = _CURRENCIES[m["cur"]]
    whole = int(m["whole"].replace(",", ""))
    out = f"{cardinal(whole)} {_plural(whole, unit)}"
    if m["frac"]:
        cents = int(m["frac"].ljust(2, "0"))
        if cents:
            out += f" and {cardinal(cents)} {_plural(cents, subunit)}"
    if m["scale"]:  # "$3 million" -> "three million dollars"
        out = f"{cardinal(whole)} {m['scale']} {_plural(2, unit)}"
    return f" {out} "


def _time(m: re.Match) -> str:
    hour, minute = int(m["h"]), int(m["m"] or 0)
    words = cardinal(hour)
    if minute:
        words += f" oh {cardinal(minute)}" if minute < 10 else f" {cardinal(minute)}"
    if m["ampm"]:
        words += f" {m['ampm'][0]} m"
    return f" {words} "


def _plain_number(m: re.Match) -> str:
    s = m[0]
    if "," in s:
        return f" {cardinal(int(s.replace(',', '')))} "
    if len(s) > 1 and s.startswith("0"):
        return f" {digits(s)} "
    n = int(s)
    if len(s) == 4 and 1100 <= n <= 2099:
        return f" {year(n)} "
    return f" {cardinal(n)} "


def _numbers_to_words(text: str) -> str:
    cur = "|".join(re.escape(c) for c in _CURRENCIES)
    text = re.sub(
        rf"(?P<cur>{cur})\s?(?P<whole>\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.(?P<frac>\d{{1,2}}))?\b"
        r"(?:\s(?P<scale>million|billion|thousand|trillion)\b)?",
        _money,
        text,
    )
    # Phone numbers: (555) 123-4567, 555-123-4567, 123-4567 are read digit by digit.
    text = re.sub(
        r"\(?\b(\d{3})\)?[-. ]?(\d{3})[-.](\d{4})\b|\b(\d{3})-(\d{4})\b",
        lambda m: " " + " ".join(digits(g) for g in m.groups() if g) + " ",
        text,
    )
    text = re.sub(
        r"\b(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s?(?P<ampm>[ap])\.?\s?m\b\.?|\b(?P<h2>\d{1,2}):(?P<m2>\d{2})\b",
        lambda m: _time(m) if m["h"] else _time(re.match(r"(?P<h>\d+):(?P<m>\d+)(?P<ampm>)", m[0])),
        text,
    )
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: f" {ordinal(int(m[1]))} ", text)
    text = re.sub(r"\b(\d+)\.(\d+)\b", lambda m: f" {decimal(m[1], m[2])} ", text)
    text = re.sub(r"\b\d{1,3}(?:,\d{3})+\b|\d+", _plain_number, text)
    return text


def normalize_english(text: str) -> str:
    """Normalise English text for word error rates (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    # Annotations such as "[music]" or "(applause)" are not speech.
    text = re.sub(rf"[\[(<{{][^\])>}}]*\b(?:{_NON_SPEECH})\b[^\])>}}]*[\])>}}]", " ", text)
    text = _numbers_to_words(text)
    text = re.sub(r"\bo'clock\b", " ", text)
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    text = re.sub(r"\b(" + "|".join(_TITLES) + r")\b\.?", lambda m: _TITLES[m[1]], text)
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    # "two hundred and five" and "two hundred five" are the same number.
    text = re.sub(rf"\b(hundred|thousand|million|billion) and (?={_NUMBER_WORD}\b)", r"\1 ", text)
    text = text.replace("'", "")
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text)
    return " ".join(text.split())


_ZH_DIGITS = "零一二三四五六七八九"
_ZH_UNITS = ((10**8, "亿"), (10**4, "万"))


def _zh_below_10000(n: int) -> str:
    out, zero = "", False
    for value, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d, n = divmod(n, value)
        if d:
            if zero:
                out += "零"
            out += _ZH_DIGITS[d] + name
            zero = False
        elif out:
            zero = True
    return out


def chinese_cardinal(n: int) -> str:
    """12345 -> "一万二千三百四十五"; 10..19 drop the leading "一" ("十五"), as said."""
    if n == 0:
        return "零"
    out, pending_zero = "", False
    for value, name in (*_ZH_UNITS, (1, "")):
        part, n = divmod(n, value)
        if part:
            if pending_zero or (out and part < 1000):
                out += "零"
            out += _zh_below_10000(part) + name
            pending_zero = False
        elif out:
            pending_zero = True
    out = out.rstrip("零")
    return out[1:] if out.startswith("一十") else out


def _zh_number(m: re.Match) -> str:
    whole, frac = m[1], m[2]
    if len(whole) > 1 and whole.startswith("0") or len(whole) > 12:
        out = "".join(_ZH_DIGITS[int(c)] for c in whole)
    else:
        out = chinese_cardinal(int(whole))
    if frac:
        out += "点" + "".join(_ZH_DIGITS[int(c)] for c in frac)
    return out


def normalize_chinese(text: str) -> str:
    """Normalise Chinese text for character error rates (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Years are read digit by digit: 2023年 is 二零二三年.
    text = re.sub(r"(\d{4})(?=年)", lambda m: "".join(_ZH_DIGITS[int(c)] for c in m[1]), text)
    text = re.sub(r"(\d+)(?:\.(\d+))?", _zh_number, text.replace("%", "百分之"))
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def normalize(text: str, language: str = "en") -> str:
    """Normalise ``text`` for scoring in ``language`` (a Whisper code; "cmn" is accepted for Mandarin)."""
    if language in CHARACTER_LANGUAGES:
        return normalize_chinese(text)
    return normalize_english(text)


def scoring_units(text: str, language: str = "en") -> list[str]:
    """The units an error rate counts: normalised words, or characters for languages written unspaced."""
    norm = normalize(text, language)
    if language in CHARACTER_LANGUAGES:
        return [c for c in norm if not c.isspace()]
    return norm.split()


__all__ = ["CHARACTER_LANGUAGES", "chinese_cardinal", "normalize", "normalize_chinese", "normalize_english"]
