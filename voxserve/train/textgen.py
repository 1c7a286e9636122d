"""Generated training sentences about numbers: amounts, dates, times, phone numbers, counts, years.

Every number is written in words the way a person says it, with the spellings of ``voxserve.metrics.numbers``
(the same ones the WER normaliser produces from digits), so the model learns one spelling and output in digits
still scores correctly. The same seed always gives the same sentences. A small Mandarin generator does the same
with Chinese numerals for the ``cmn`` voice.
"""

from __future__ import annotations

import random

from ..metrics.normalize import chinese_cardinal
from ..metrics.numbers import cardinal, digits, ordinal, year

MONTHS = "January February March April May June July August September October November December".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_NAMES = "Alice Robert Maria James Linda David Sarah Michael Emma Daniel Grace Thomas Olivia Peter".split()
_PLACES = "Boston Denver London Chicago Seattle Dallas Madrid Toronto Sydney Berlin Atlanta Phoenix".split()
_ITEMS = "tickets books chairs boxes lamps bottles shirts phones bikes tables coats pencils bags cups".split()
_DAYS_IN = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def money(rng: random.Random) -> str:
    """ "twenty-three dollars and five cents", "one dollar", "forty cents"."""
    dollars = rng.choice([0, 1, rng.randint(2, 99), rng.randint(100, 9999), rng.randint(10_000, 2_000_000)])
    cents = rng.choice([0, 0, rng.randint(1, 99)])
    if dollars == 0 and cents == 0:
        cents = rng.randint(1, 99)
    parts = []
    if dollars:
        parts.append(f"{cardinal(dollars)} dollar{'s' if dollars != 1 else ''}")
    if cents:
        parts.append(f"{cardinal(cents)} cent{'s' if cents != 1 else ''}")
    return " and ".join(parts)


def clock_time(rng: random.Random) -> str:
    """ "three forty-five p.m.", "seven oh five", "eleven o'clock"."""
    hour, minute = rng.randint(1, 12), rng.choice([0, rng.randint(1, 59), 15, 30, 45])
    words = cardinal(hour)
    if minute:
        words += f" oh {cardinal(minute)}" if minute < 10 else f" {cardinal(minute)}"
    suffix = rng.choice(["a.m.", "p.m.", "", "o'clock"] if not minute else ["a.m.", "p.m.", ""])
    return f"{words} {suffix}".strip()


def date(rng: random.Random) -> str:
    """ "March third, nineteen ninety-nine", "the fourteenth of June", "July fourth"."""
    month = rng.randrange(12)
    day = ordinal(rng.randint(1, _DAYS_IN[month]))
    form = rng.randrange(3)
    if form == 0:
        return f"{MONTHS[month]} {day}, {year(rng.randint(1800, 2035))}"
    if form == 1:
        return f"the {day} of {MONTHS[month]}"
    return f"{MONTHS[month]} {day}"


def phone_number(rng: random.Random) -> str:
    """Ten digits in three groups, one word a digit: "five five five, zero one two, three four five six"."""
    groups = [f"{rng.randint(200, 999)}", f"{rng.randint(0, 999):03d}", f"{rng.randint(0, 9999):04d}"]
    return ", ".join(digits(g) for g in groups)


def count(rng: random.Random) -> str:
    return cardinal(rng.choice([rng.randint(2, 20), rng.randint(21, 999), rng.randint(1000, 99_999)]))


_TEMPLATES = (
    lambda r: f"The total comes to {money(r)}.",
    lambda r: f"{r.choice(_NAMES)} paid {money(r)} for {count(r)} {r.choice(_ITEMS)}.",
    lambda r: f"Please call me back at {phone_number(r)}.",
    lambda r: f"The number for the {r.choice(_PLACES)} office is {phone_number(r)}.",
    lambda r: f"The meeting starts at {clock_time(r)} on {r.choice(WEEKDAYS)}.",
    lambda r: f"Your train to {r.choice(_PLACES)} leaves at {clock_time(r)}.",
    lambda r: f"{r.choice(_NAMES)} was born on {date(r)}.",
    lambda r: f"The payment is due on {date(r)}.",
    lambda r: f"In {year(r.randint(1700, 2030))}, the town had {count(r)} people.",
    lambda r: f"We shipped {count(r)} {r.choice(_ITEMS)} to {r.choice(_PLACES)} last {r.choice(WEEKDAYS)}.",
    lambda r: f"She finished {ordinal(r.randint(1, 120))} out of {count(r)} runners.",
    lambda r: f"The temperature fell to {cardinal(r.randint(-30, 110))} degrees at {clock_time(r)}.",
    lambda r: f"Your order number is {digits(str(r.randint(10_000, 99_999_999)))}.",
    lambda r: (
        f"Turn left in {cardinal(r.randint(2, 900))} feet, then take the {ordinal(r.randint(1, 9))} exit."
    ),
    lambda r: (
        f"The price went up by {cardinal(r.randint(1, 99))} percent since {year(r.randint(1950, 2030))}."
    ),
    lambda r: f"Room {cardinal(r.randint(100, 999))} is on the {ordinal(r.randint(1, 40))} floor.",
    lambda r: f"I owe {r.choice(_NAMES)} {money(r)}, payable by {date(r)}.",
    lambda r: f"Flight {cardinal(r.randint(10, 999))} to {r.choice(_PLACES)} boards at {clock_time(r)}.",
)


def generate_english(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences about numbers, deterministic for a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    out: dict[str, None] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise RuntimeError(f"could not generate {n} distinct sentences")
        sentence = rng.choice(_TEMPLATES)(rng)
        out.setdefault(sentence[:-1] if sentence.endswith("..") else sentence, None)  # "p.m." ends a sentence
    return list(out)


# ------------------------------------------------------------------------------------------------ Mandarin

_ZH_DIGIT = "零一二三四五六七八九"
_ZH_NAMES = "小王 小李 张老师 王先生 李女士 刘经理 陈医生 赵同学".split()
_ZH_PLACES = "北京 上海 广州 深圳 杭州 成都 南京 武汉".split()
_ZH_ITEMS = "本书 张票 个苹果 瓶水 件衣服 台电脑 把椅子 杯咖啡".split()


def _zh_money(r: random.Random) -> str:
    yuan = r.choice([r.randint(1, 99), r.randint(100, 99_999)])
    jiao = r.randint(0, 9)
    return chinese_cardinal(yuan) + "元" + (f"{_ZH_DIGIT[jiao]}角" if jiao else "")


def _zh_date(r: random.Random) -> str:
    y = "".join(_ZH_DIGIT[int(c)] for c in str(r.randint(1950, 2035)))
    return f"{y}年{chinese_cardinal(r.randint(1, 12))}月{chinese_cardinal(r.randint(1, 28))}日"


def _zh_time(r: random.Random) -> str:
    m = r.choice([0, 15, 30, r.randint(1, 59)])
    return f"{chinese_cardinal(r.randint(1, 12))}点" + (f"{chinese_cardinal(m)}分" if m else "")


def _zh_phone(r: random.Random) -> str:
    return "".join(_ZH_DIGIT[int(c)] for c in f"1{r.randint(3, 9)}{r.randint(0, 999_999_999):09d}")


_ZH_TEMPLATES = (
    lambda r: (
        f"{r.choice(_ZH_NAMES)}买了{chinese_cardinal(r.randint(2, 99))}{r.choice(_ZH_ITEMS)}，一共{_zh_money(r)}。"
    ),
    lambda r: f"会议在{_zh_date(r)}{_zh_time(r)}开始。",
    lambda r: f"请拨打{_zh_phone(r)}联系{r.choice(_ZH_NAMES)}。",
    lambda r: f"去{r.choice(_ZH_PLACES)}的火车{_zh_time(r)}出发。",
    lambda r: f"这个月的房租是{_zh_money(r)}。",
    lambda r: f"{r.choice(_ZH_PLACES)}今天的气温是{chinese_cardinal(r.randint(1, 40))}度。",
)


def generate_chinese(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct Mandarin sentences about numbers (Chinese numerals only), deterministic for a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    out: dict[str, None] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise RuntimeError(f"could not generate {n} distinct sentences")
        out.setdefault(rng.choice(_ZH_TEMPLATES)(rng), None)
    return list(out)


def generate(n: int, language: str = "en", seed: int = 0) -> list[str]:
    """Generated sentences for ``language`` ("en", or "zh"/"cmn" for Mandarin)."""
    if language == "en":
        return generate_english(n, seed)
    if language in ("zh", "cmn"):
        return generate_chinese(n, seed)
    raise ValueError(f"no sentence generator for language {language!r}; use 'en' or 'zh'")


__all__ = ["generate", "generate_chinese", "generate_english"]
