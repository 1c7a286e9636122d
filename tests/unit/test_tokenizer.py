"""The tokenizer equals openai-whisper's and transformers' on the same vocabulary files.

Four readers of one vocabulary must agree id for id: voxserve from the ``.tiktoken`` ranks, voxserve from the
Hugging Face files it wrote itself (``save_hf`` -> ``from_hf_dir``), openai-whisper's ``get_tokenizer`` and
transformers' ``WhisperTokenizer`` / ``WhisperTokenizerFast`` loaded from those files. Special-token ids are
checked for 99 and 100 languages and for the English-only (GPT-2) vocabulary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ASSETS
from voxserve.tokenizer import LANGUAGES, Tokenizer

whisper_tokenizer = pytest.importorskip("whisper.tokenizer")

TEXTS = [
    "Hello world",
    " And so my fellow Americans, ask not what your country can do for you.",
    "中文，标点符号。「引号」！还有（括号）、顿号；",
    "日本語のテキストです。カタカナも。",
    "مرحبا بالعالم، كيف حالك؟",
    "emoji 🎉👍🏽 ok ♪♪ 🇫🇷",
    "café naïve résumé Ångström Straße żółć",
    "12345 3.14159 1,000,000 -42 2024-11-21",
    "a   b\t\tc\n\nd  \n",
    "  two leading spaces",
    " ",
    "",
    "I'm can't we'll THEY'RE o'clock",
    "[MUSIC] (laughs) -- <<quoted>>",
]


def special_names(num_languages: int) -> list[str]:
    names = ["<|endoftext|>", "<|startoftranscript|>"]
    names += [f"<|{c}|>" for c in list(LANGUAGES)[:num_languages]]
    names += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]
    return names + ["<|notimestamps|>", "<|0.00|>", "<|0.02|>", "<|1.08|>", "<|29.98|>", "<|30.00|>"]


@pytest.fixture(scope="module", params=[99, 100], ids=["99-languages", "100-languages"])
def readers(request, tmp_path_factory) -> dict:
    n = request.param
    ours = Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken", num_languages=n)
    out = tmp_path_factory.mktemp(f"hf{n}")
    ours.save_hf(out)
    return {
        "n": n,
        "dir": out,
        "tiktoken": ours,
        "hf_dir": Tokenizer.from_hf_dir(out),
        "whisper": whisper_tokenizer.get_tokenizer(True, num_languages=n),
    }


@pytest.fixture(scope="module")
def hf_tokenizers(readers) -> dict:
    transformers = pytest.importorskip("transformers")
    return {
        "slow": transformers.WhisperTokenizer.from_pretrained(readers["dir"]),
        "fast": transformers.WhisperTokenizerFast.from_pretrained(readers["dir"]),
    }


def test_encode_equal_across_readers(readers, hf_tokenizers) -> None:
    ref = readers["whisper"]
    for text in TEXTS:
        expected = ref.encode(text)
        assert readers["tiktoken"].encode(text) == expected, text
        assert readers["hf_dir"].encode(text) == expected, text
        for name, hf in hf_tokenizers.items():
            assert hf.encode(text, add_special_tokens=False) == expected, (name, text)


def test_decode_equal_across_readers(readers, hf_tokenizers) -> None:
    ref = readers["whisper"]
    for text in TEXTS:
        ids = ref.encode(text)
        assert readers["tiktoken"].decode(ids) == ref.decode(ids) == text
        assert readers["hf_dir"].decode(ids) == text
        for name, hf in hf_tokenizers.items():
            assert hf.decode(ids) == text, (name, text)


def test_decode_with_timestamps_equal_whisper(readers) -> None:
    ref, ours = readers["whisper"], readers["tiktoken"]
    ts = ours.timestamp_begin
    ids = [
        ours.sot,
        ours.language_token("en"),
        ours.transcribe,
        ts,
        *ref.encode(" Hello there"),
        ts + 54,
        ours.eot,
    ]
    assert ours.decode_with_timestamps(ids) == ref.decode_with_timestamps(ids)
    assert "<|1.08|>" in ours.decode_with_timestamps(ids)
    assert ours.decode(ids) == ref.decode(ids)


def test_special_token_ids_equal_whisper(readers) -> None:
    n, ref = readers["n"], readers["whisper"]
    ref_specials = dict(ref.special_tokens)
    for reader in ("tiktoken", "hf_dir"):
        ours: Tokenizer = readers[reader]
        assert ours.n_vocab == ref.encoding.n_vocab == 51765 + 1 + n
        assert dict(ours.special_tokens) == ref_specials
        assert ours.num_languages == n
        for attr in (
            "eot",
            "sot",
            "translate",
            "transcribe",
            "sot_lm",
            "sot_prev",
            "no_speech",
            "no_timestamps",
        ):
            assert getattr(ours, attr) == getattr(ref, attr), attr
        assert ours.timestamp_begin == ref.timestamp_begin
        assert ours.special_tokens["<|30.00|>"] == ref.timestamp_begin + 1500 == ours.n_vocab - 1
        for code in list(LANGUAGES)[:n]:
            assert ours.language_token(code) == ref.to_language_token(code), code
        # whisper's order of these follows a dict of its specials; the sets and the pairing are what count.
        assert sorted(ours.all_language_tokens) == sorted(ref.all_language_tokens)
        assert dict(zip(ours.all_language_codes, ours.all_language_tokens, strict=True)) == dict(
            zip(ref.all_language_codes, ref.all_language_tokens, strict=True)
        )
    if n == 100:
        assert readers["tiktoken"].language_token("yue") == ref.to_language_token("yue") == 50358
    else:
        with pytest.raises(ValueError, match="unknown language"):
            readers["tiktoken"].language_token("yue")


def test_hf_special_token_ids_equal_whisper(readers, hf_tokenizers) -> None:
    ref = readers["whisper"]
    expected = {name: ref.encoding.encode_single_token(name) for name in special_names(readers["n"])}
    for name, hf in hf_tokenizers.items():
        got = {token: hf.convert_tokens_to_ids(token) for token in expected}
        assert got == expected, name
        assert len(hf) == ref.encoding.n_vocab, name


@pytest.mark.parametrize(
    ("language", "task"),
    [(None, None), ("en", "transcribe"), ("de", "translate"), ("ja", None), ("Chinese", "transcribe")],
)
def test_sot_sequence_equal_whisper(readers, language, task) -> None:
    ours = readers["tiktoken"].with_options(language=language, task=task)
    ref_language = {"Chinese": "zh"}.get(language, language)
    # whisper's Tokenizer itself: its get_tokenizer() turns None into "en" / "transcribe".
    ref = whisper_tokenizer.Tokenizer(
        readers["whisper"].encoding, num_languages=readers["n"], language=ref_language, task=task
    )
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps


def test_non_speech_tokens_equal_whisper(readers) -> None:
    expected = tuple(sorted(readers["whisper"].non_speech_tokens))
    assert readers["tiktoken"].non_speech_tokens == expected
    assert readers["hf_dir"].non_speech_tokens == expected


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", " And so, my fellow Americans: ask not what your country can do for you (really)."),
        ("en", " It's 3.5 o'clock -- \"quoted\" [MUSIC]"),
        ("zh", "中文，标点符号。「引号」！还有顿号、分号；"),
        ("ja", "日本語のテキストです。🎉"),
        ("de", " Grüße aus Köln, schönes Wetter!"),
    ],
)
def test_split_to_word_tokens_equal_whisper(readers, language, text) -> None:
    ref = whisper_tokenizer.get_tokenizer(
        True, num_languages=readers["n"], language=language, task="transcribe"
    )
    ours = readers["tiktoken"].with_options(language=language, task="transcribe")
    tokens = [*ref.encode(text), ref.eot]  # as alignment calls it: text tokens and end-of-text
    assert ours.split_to_word_tokens(tokens) == ref.split_to_word_tokens(tokens)
    # Every prefix, so that many are cut inside a multi-byte character.
    for end in range(1, len(tokens)):
        cut = tokens[:end]
        words, groups = ours.split_to_word_tokens(cut)
        try:
            assert (words, groups) == ref.split_to_word_tokens(cut), end
        except IndexError:
            # whisper indexes past the end of the text when a cut leaves two incomplete byte tokens; voxserve
            # keeps what whisper had before the failing token and drops the incomplete rest.
            assert sum(groups, []) == cut[: len(sum(groups, []))]
            assert len(sum(groups, [])) < len(cut)


def test_hf_dir_from_transformers_tokenizer_json(readers, hf_tokenizers, tmp_path) -> None:
    """transformers' own tokenizer.json (as hub checkpoints ship it) reads back to the same ids."""
    hf_tokenizers["fast"].save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    for leftover in ("vocab.json", "merges.txt", "added_tokens.json"):
        (tmp_path / leftover).unlink(missing_ok=True)
    tok = Tokenizer.from_hf_dir(tmp_path)
    ref = readers["whisper"]
    assert dict(tok.special_tokens) == dict(ref.special_tokens)
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text)


# ------------------------------------------------------------------------------------- English-only


def test_english_only_vocabulary(tmp_path) -> None:
    ref = whisper_tokenizer.get_tokenizer(False)
    ours = Tokenizer.from_tiktoken(
        ASSETS / "gpt2.tiktoken", multilingual=False, language="en", task="transcribe"
    )
    assert not ours.is_multilingual
    assert ours.n_vocab == ref.encoding.n_vocab == 51864
    assert dict(ours.special_tokens) == dict(ref.special_tokens)
    assert ours.sot_sequence == ref.sot_sequence == (ref.sot,)
    assert ours.non_speech_tokens == tuple(sorted(ref.non_speech_tokens))
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
    words = ref.encode(" Ask not what your country can do, for you!")
    assert ours.split_to_word_tokens(words) == ref.split_to_word_tokens(words)
    ours.save_hf(tmp_path)
    back = Tokenizer.from_hf_dir(tmp_path)
    assert not back.is_multilingual
    assert dict(back.special_tokens) == dict(ref.special_tokens)
    transformers = pytest.importorskip("transformers")
    hf = transformers.WhisperTokenizerFast.from_pretrained(tmp_path)
    for text in TEXTS:
        assert back.encode(text) == hf.encode(text, add_special_tokens=False) == ref.encode(text), text


def test_english_only_refuses_other_languages_and_translation() -> None:
    tok = Tokenizer.from_tiktoken(ASSETS / "gpt2.tiktoken", multilingual=False)
    with pytest.raises(ValueError, match="English-only"):
        tok.with_options(language="de", task=None)
    with pytest.raises(ValueError, match="translation"):
        tok.with_options(language=None, task="translate")


# ------------------------------------------------------------------------------------------- errors


def test_bad_options() -> None:
    tok = Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken")
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        tok.with_options(language="klingon", task=None)
    with pytest.raises(ValueError, match="unknown task"):
        tok.with_options(language="en", task="summarize")
    with pytest.raises(ValueError, match="num_languages"):
        Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken", num_languages=101)
    assert tok.with_options(language="German", task=None).language == "de"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"abc\n", r":1: expected '<base64 token> <rank>'"),
        (b"YQ== 0\nYg== x\n", r":2: expected"),
        (b"\xff\xfe\x00binary", "non-ASCII"),
        (b"", "no ranks"),
        (b"YQ== 0\nYg== 5\n", "dense range"),
    ],
    ids=["one-field", "bad-rank", "binary", "empty", "sparse"],
)
def test_bad_tiktoken_files(tmp_path, content, match) -> None:
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_tiktoken(path)


def test_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_tiktoken(tmp_path / "nope.tiktoken")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=".tiktoken"):
        Tokenizer.load(tmp_path / "x.txt")


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)  # edits in place
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _drop_added(directory: Path, token: str) -> None:
    _edit_json(directory / "added_tokens.json", lambda d: d.pop(token))
    _edit_json(
        directory / "tokenizer_config.json",
        lambda c: c["added_tokens_decoder"].pop(
            next(k for k, v in c["added_tokens_decoder"].items() if v["content"] == token)
        ),
    )


def _swap_merges(directory: Path) -> None:
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    lines[5], lines[6] = lines[6], lines[5]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda d: (d / "vocab.json").write_text("{"), ValueError, "vocab.json: unreadable JSON"),
        (lambda d: (d / "vocab.json").write_text("[1, 2]"), ValueError, "JSON object"),
        (lambda d: (d / "merges.txt").unlink(), FileNotFoundError, "merges.txt"),
        (lambda d: (d / "merges.txt").write_text("#version: 0.2\na b c\n"), ValueError, "malformed merges"),
        (_swap_merges, ValueError, "out of id order"),
        (lambda d: _drop_added(d, "<|transcribe|>"), ValueError, "missing special tokens"),
        (lambda d: _drop_added(d, "<|de|>"), ValueError, r"<\|de\|> is missing"),
        (lambda d: _edit_json(d / "vocab.json", lambda v: v.update({"日本": 3})), ValueError, "byte-level"),
        (
            lambda d: (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}})),
            ValueError,
            "expected a BPE model",
        ),
    ],
    ids=[
        "vocab-not-json",
        "vocab-not-object",
        "no-merges",
        "bad-merge",
        "merge-order",
        "no-transcribe",
        "language-gap",
        "non-byte-token",
        "wordpiece",
    ],  # fmt: skip
)
def test_bad_hf_tokenizer_dirs(tmp_path_factory, damage, error, match) -> None:
    src = tmp_path_factory.getbasetemp() / "clean-hf-tokenizer"
    if not src.is_dir():
        Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken").save_hf(src)
    d = tmp_path_factory.mktemp("damaged")
    shutil.copytree(src, d, dirs_exist_ok=True)
    damage(d)
    with pytest.raises(error, match=match):
        Tokenizer.from_hf_dir(d)
