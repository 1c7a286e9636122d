"""Whisper's tokenizer: the byte-level BPE vocabulary, the special-token layout and the prompt prefix.

This file owns everything that maps between text and Whisper token ids:

* the language table (code -> English name, in the order that fixes the language tokens' ids);
* loading a vocabulary from openai-whisper's ``.tiktoken`` rank files or from Hugging Face tokenizer files
  (``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` + added tokens), and writing the latter;
* the ids of every special token, the start-of-transcript sequence and the non-speech suppression set;
* splitting a token list into words for word-level timestamps.

Encoding runs on ``tiktoken`` in every case: Hugging Face files are converted into tiktoken's byte ranks, so
neither ``transformers`` nor ``tokenizers`` is needed at run time.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import tiktoken

# Whisper's languages in the order of their tokens: <|en|> follows <|startoftranscript|>, and a model with
# N languages has the first N of these (99 up to large-v2, 100 from large-v3, which added Cantonese).
LANGUAGES: dict[str, str] = dict(
    [
        ("en", "english"), ("zh", "chinese"), ("de", "german"), ("es", "spanish"), ("ru", "russian"),
        ("ko", "korean"), ("fr", "french"), ("ja", "japanese"), ("pt", "portuguese"), ("tr", "turkish"),
        ("pl", "polish"), ("ca", "catalan"), ("nl", "dutch"), ("ar", "arabic"), ("sv", "swedish"),
        ("it", "italian"), ("id", "indonesian"), ("hi", "hindi"), ("fi", "finnish"), ("vi", "vietnamese"),
        ("he", "hebrew"), ("uk", "ukrainian"), ("el", "greek"), ("ms", "malay"), ("cs", "czech"),
        ("ro", "romanian"), ("da", "danish"), ("hu", "hungarian"), ("ta", "tamil"), ("no", "norwegian"),
        ("th", "thai"), ("ur", "urdu"), ("hr", "croatian"), ("bg", "bulgarian"), ("lt", "lithuanian"),
        ("la", "latin"), ("mi", "maori"), ("ml", "malayalam"), ("cy", "welsh"), ("sk", "slovak"),
        ("te", "telugu"), ("fa", "persian"), ("lv", "latvian"), ("bn", "bengali"), ("sr", "serbian"),
        ("az", "azerbaijani"), ("sl", "slovenian"), ("kn", "kannada"), ("et", "estonian"), ("mk", "macedonian"),
        ("br", "breton"), ("eu", "basque"), ("is", "icelandic"), ("hy", "armenian"), ("ne", "nepali"),
        ("mn", "mongolian"), ("bs", "bosnian"), ("kk", "kazakh"), ("sq", "albanian"), ("sw", "swahili"),
        ("gl", "galician"), ("mr", "marathi"), ("pa", "punjabi"), ("si", "sinhala"), ("km", "khmer"),
        ("sn", "shona"), ("yo", "yoruba"), ("so", "somali"), ("af", "afrikaans"), ("oc", "occitan"),
        ("ka", "georgian"), ("be", "belarusian"), ("tg", "tajik"), ("sd", "sindhi"), ("gu", "gujarati"),
        ("am", "amharic"), ("yi", "yiddish"), ("lo", "lao"), ("uz", "uzbek"), ("fo", "faroese"),
        ("ht", "haitian creole"), ("ps", "pashto"), ("tk", "turkmen"), ("nn", "nynorsk"), ("mt", "maltese"),
        ("sa", "sanskrit"), ("lb", "luxembourgish"), ("my", "myanmar"), ("bo", "tibetan"), ("tl", "tagalog"),
        ("mg", "malagasy"), ("as", "assamese"), ("tt", "tatar"), ("haw", "hawaiian"), ("ln", "lingala"),
        ("ha", "hausa"), ("ba", "bashkir"), ("jw", "javanese"), ("su", "sundanese"), ("yue", "cantonese"),
    ]
)  # fmt: skip

# Other English names users write for a language (the same aliases openai-whisper's CLI accepts).
_LANGUAGE_ALIASES: dict[str, str] = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}  # fmt: skip

_NAME_TO_CODE: dict[str, str] = {**{name: code for code, name in LANGUAGES.items()}, **_LANGUAGE_ALIASES}

TASKS = ("transcribe", "translate")

# Scripts written without spaces between words: word timestamps split them at character boundaries instead.
_UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, symbol runs and whitespace, each optionally
# led by one space. Whisper (both vocabularies) and Hugging Face's ByteLevel pre-tokenizer use it unchanged.
_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# One timestamp token per 20 ms step across a 30 s window, both ends included.
_N_TIMESTAMPS = 1501

_ENDOFTEXT = "<|endoftext|>"
_NOSPEECH = "<|nospeech|>"
# Early Hugging Face Whisper vocabularies named the no-speech token by its original name.
_NOSPEECH_OLD = "<|nocaptions|>"
_NOTIMESTAMPS = "<|notimestamps|>"
_REPLACEMENT = "\ufffd"


def _timestamp_name(index: int) -> str:
    # Integer arithmetic so that every one of the 1501 names is exact, e.g. 54 -> "<|1.08|>".
    return f"<|{index // 50}.{index % 50 * 2:02d}|>"


def _whisper_specials(num_languages: int) -> list[str]:
    """The special tokens in the order Whisper appends them after the BPE ranks."""
    return [
        _ENDOFTEXT,
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        _NOSPEECH,
        _NOTIMESTAMPS,
        *(_timestamp_name(i) for i in range(_N_TIMESTAMPS)),
    ]


@lru_cache(maxsize=1)
def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in vocab.json and merges.txt.

    Bytes that are printable Latin-1 stand for themselves; the 68 others (controls, space, soft hyphen...)
    take the code points from U+0100 upwards, in byte order, so that no token string contains whitespace.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bytes_to_hf(token: bytes) -> str:
    table = _byte_to_char()
    return "".join(table[b] for b in token)


def _hf_to_bytes(token: str, char_to_byte: Mapping[str, int]) -> bytes:
    try:
        return bytes(char_to_byte[c] for c in token)
    except KeyError as err:
        raise ValueError(f"token {token!r} is not a byte-level BPE token (GPT-2 byte alphabet)") from err


def _merge_pair(ranks: Mapping[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens whose merge produces `token` under rank-ordered BPE.

    Run BPE on the token's own bytes allowing only merges into tokens of lower rank; the two pieces left
    are exactly what tiktoken joins last, so listing them in rank order reproduces tiktoken's behaviour
    under Hugging Face's merge-list BPE.
    """
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            raise ValueError(f"token {token!r} (rank {limit}) cannot be built from lower-ranked tokens")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        with open(path, encoding="ascii") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    # Not validated: Whisper's multilingual file itself holds "=", the empty token (rank 50256).
                    ranks[base64.b64decode(token)] = int(rank)
                except ValueError:  # wrong field count, bad base64 (binascii.Error) or a non-integer rank
                    raise ValueError(
                        f"{path}:{number}: expected '<base64 token> <rank>', got {line.strip()[:60]!r}"
                    ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a .tiktoken ranks file (non-ASCII bytes)") from None
    if not ranks:
        raise ValueError(f"{path}: no ranks in the file")
    # Whisper numbers the specials from len(ranks); that is only sound when the ranks are 0..len-1.
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the dense range 0..{len(ranks) - 1}")
    return ranks


@dataclass(frozen=True, eq=False)
class _Vocabulary:
    """The immutable part of a tokenizer that every `with_options` copy shares."""

    encoding: tiktoken.Encoding
    ranks: dict[bytes, int]  # ordinary BPE tokens: bytes -> id (= tiktoken rank)
    specials: dict[str, int]  # special token text -> id
    num_languages: int
    multilingual: bool

    @cached_property
    def merges(self) -> list[tuple[bytes, bytes]]:
        by_rank = sorted((rank, token) for token, rank in self.ranks.items() if len(token) > 1)
        return [_merge_pair(self.ranks, token) for _, token in by_rank]

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        # Symbols that mark speaker tags, sound events or music rather than speech ("[MUSIC]", "(laughs)",
        # "♪♪"). A symbol is suppressed only where it is a single token, so that ordinary words sharing a
        # first token are not blocked; "-" and "'" stay allowed inside words but not to start one.
        enc = self.encoding
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # Musical symbols (U+2640..U+267F) may take several tokens; their first token is shared only with
        # other symbols of that block, so it is safe to suppress it whatever the split.
        musical = set("♩♪♫♬♭♮♯")
        result = {enc.encode_ordinary(" -")[0], enc.encode_ordinary(" '")[0]}
        for symbol in symbols + sorted(musical):
            for ids in (enc.encode_ordinary(symbol), enc.encode_ordinary(" " + symbol)):
                if len(ids) == 1 or symbol in musical:
                    result.add(ids[0])
        return tuple(sorted(result))

    @cached_property
    def language_ids(self) -> dict[str, int]:
        return {code: self.specials[f"<|{code}|>"] for code in list(LANGUAGES)[: self.num_languages]}


def _build_vocabulary(
    name: str, ranks: dict[bytes, int], specials: dict[str, int], *, num_languages: int, multilingual: bool
) -> _Vocabulary:
    clash = set(ranks.values()) & set(specials.values())
    if clash:
        raise ValueError(f"{name}: ids {sorted(clash)[:5]} are both ordinary and special tokens")
    encoding = tiktoken.Encoding(
        name=name, pat_str=_PRETOKENIZE, mergeable_ranks=ranks, special_tokens=specials
    )
    return _Vocabulary(encoding, ranks, specials, num_languages, multilingual)


class Tokenizer:
    """Text <-> Whisper token ids, with the special tokens and the prompt prefix for one language and task.

    `language` is a language code or None (not yet known, e.g. before language detection); `task` is
    "transcribe", "translate" or None. An English-only vocabulary keeps both None, as Whisper does, because
    its models are never prompted with them.
    """

    def __init__(self, vocabulary: _Vocabulary, *, language: str | None = None, task: str | None = None):
        self._vocab = vocabulary
        self._language = self._check_language(language)
        self._task = self._check_task(task)

    # ----- construction -----

    @classmethod
    def from_tiktoken(
        cls,
        path: str | Path,
        *,
        num_languages: int = 99,
        language: str | None = None,
        task: str | None = None,
        multilingual: bool = True,
    ) -> Tokenizer:
        """Load openai-whisper's ranks file (multilingual.tiktoken or, with multilingual=False, gpt2.tiktoken).

        `num_languages` comes from the model's config (100 for large-v3); it fixes every id after the
        language tokens, so it is never inferred from the file.
        """
        path = Path(path)
        if not 0 <= num_languages <= len(LANGUAGES):
            raise ValueError(f"num_languages must be in 0..{len(LANGUAGES)}, got {num_languages}")
        ranks = _read_tiktoken_ranks(path)
        specials = {text: len(ranks) + i for i, text in enumerate(_whisper_specials(num_languages))}
        vocab = _build_vocabulary(
            path.name, ranks, specials, num_languages=num_languages, multilingual=multilingual
        )
        return cls(vocab, language=language, task=task)

    @classmethod
    def from_hf_dir(
        cls,
        directory: str | Path,
        *,
        language: str | None = None,
        task: str | None = None,
        multilingual: bool | None = None,
    ) -> Tokenizer:
        """Load Hugging Face tokenizer files: tokenizer.json, or vocab.json + merges.txt + added tokens.

        Special-token ids are read from the files. The number of languages is the number of language tokens
        present. `language`/`task` default to those in tokenizer_config.json. `multilingual` defaults to
        `is_multilingual` from tokenizer_config.json or generation_config.json, else True.
        """
        directory = Path(directory)
        vocab, merges, added = _read_hf_files(directory)
        config = _read_json(directory / "tokenizer_config.json") or {}
        if multilingual is None:
            generation = _read_json(directory / "generation_config.json") or {}
            multilingual = bool(config.get("is_multilingual", generation.get("is_multilingual", True)))
        if language is None and task is None:
            language, task = config.get("language"), config.get("task")

        specials = {text: i for text, i in added.items()}
        if _ENDOFTEXT not in specials and _ENDOFTEXT in vocab:
            specials[_ENDOFTEXT] = vocab[_ENDOFTEXT]
        if _NOSPEECH not in specials and _NOSPEECH_OLD in specials:
            specials[_NOSPEECH] = specials.pop(_NOSPEECH_OLD)
        required = [_ENDOFTEXT, "<|startoftranscript|>", "<|translate|>", "<|transcribe|>"]
        required += ["<|startoflm|>", "<|startofprev|>", _NOSPEECH, _NOTIMESTAMPS]
        missing = [text for text in required if text not in specials]
        if missing:
            raise ValueError(f"{directory}: not a Whisper tokenizer, missing special tokens {missing}")

        codes = [code for code in LANGUAGES if f"<|{code}|>" in specials]
        num_languages = len(codes)
        if codes != list(LANGUAGES)[:num_languages]:
            gap = next(code for code in list(LANGUAGES)[:num_languages] if code not in codes)
            raise ValueError(
                f"{directory}: language tokens are not a prefix of Whisper's language list "
                f"(<|{gap}|> is missing, later languages are present)"
            )

        # Vocabularies saved before timestamps became added tokens lack them; Whisper's layout puts them
        # right after <|notimestamps|>, so they are restored there when those ids are free.
        if _timestamp_name(0) not in specials:
            first = specials[_NOTIMESTAMPS] + 1
            taken = set(vocab.values()) | set(specials.values())
            if taken & set(range(first, first + _N_TIMESTAMPS)):
                raise ValueError(f"{directory}: no timestamp tokens, and their ids are in use")
            specials.update({_timestamp_name(i): first + i for i in range(_N_TIMESTAMPS)})

        char_to_byte = {c: b for b, c in _byte_to_char().items()}
        ranks = {_hf_to_bytes(text, char_to_byte): i for text, i in vocab.items() if text not in specials}
        _check_merges_follow_ids(directory, ranks, merges, char_to_byte)
        tokenizer_vocab = _build_vocabulary(
            directory.name, ranks, specials, num_languages=num_languages, multilingual=multilingual
        )
        return cls(tokenizer_vocab, language=language, task=task)

    @classmethod
    def load(cls, path: str | Path, **kw: object) -> Tokenizer:
        """Load from a ``.tiktoken`` file, a directory of Hugging Face tokenizer files, or a directory holding
        a single ``.tiktoken`` file. Keyword arguments go to `from_tiktoken` / `from_hf_dir`."""
        path = Path(path)
        if path.is_file():
            if path.suffix != ".tiktoken":
                raise ValueError(f"{path}: expected a .tiktoken file or a tokenizer directory")
            return cls.from_tiktoken(path, **kw)  # type: ignore[arg-type]
        if path.is_dir():
            if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
                return cls.from_hf_dir(path, **kw)  # type: ignore[arg-type]
            found = sorted(path.glob("*.tiktoken"))
            if len(found) == 1:
                return cls.from_tiktoken(found[0], **kw)  # type: ignore[arg-type]
            if found:
                names = ", ".join(p.name for p in found)
                raise ValueError(f"{path}: several .tiktoken files ({names}); pass the one to use")
        raise FileNotFoundError(
            f"no tokenizer at {path}: expected a .tiktoken file, or a directory with tokenizer.json, "
            "vocab.json + merges.txt, or one .tiktoken file"
        )

    def with_options(self, *, language: str | None, task: str | None) -> Tokenizer:
        """A tokenizer for another language/task, sharing this one's vocabulary (no reloading)."""
        return type(self)(self._vocab, language=language, task=task)

    def save_hf(self, directory: str | Path) -> None:
        """Write Hugging Face tokenizer files that `transformers.WhisperTokenizer` loads to the same ids."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        v = self._vocab
        eot = v.specials[_ENDOFTEXT]
        # Hugging Face's Whisper files keep <|endoftext|> in vocab.json and every other special as an
        # added token; following that layout keeps both transformers and older readers happy.
        vocab = {_bytes_to_hf(token): i for token, i in sorted(v.ranks.items(), key=lambda kv: kv[1])}
        vocab[_ENDOFTEXT] = eot
        added = {text: i for text, i in sorted(v.specials.items(), key=lambda kv: kv[1]) if i != eot}
        timestamps = {_timestamp_name(i) for i in range(_N_TIMESTAMPS)}
        named = [text for text in added if text not in timestamps]

        _write_json(directory / "vocab.json", vocab)
        with open(directory / "merges.txt", "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{_bytes_to_hf(a)} {_bytes_to_hf(b)}\n" for a, b in v.merges)
        _write_json(directory / "added_tokens.json", added)
        special_map = {
            "bos_token": _ENDOFTEXT,
            "eos_token": _ENDOFTEXT,
            "unk_token": _ENDOFTEXT,
            "pad_token": _ENDOFTEXT,
            "additional_special_tokens": named,
        }
        _write_json(directory / "special_tokens_map.json", special_map)
        config: dict[str, object] = {
            "tokenizer_class": "WhisperTokenizer",
            "add_prefix_space": False,
            "errors": "replace",
            # Whisper decodes text verbatim; transformers' clean-up would turn "a ." into "a.".
            "clean_up_tokenization_spaces": False,
            "is_multilingual": v.multilingual,
            "language": self._language,
            "task": self._task,
            "predict_timestamps": False,
            **{key: value for key, value in special_map.items() if key != "additional_special_tokens"},
            "added_tokens_decoder": {
                str(i): {
                    "content": text,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for text, i in sorted(v.specials.items(), key=lambda kv: kv[1])
            },
        }
        _write_json(directory / "tokenizer_config.json", config)

    # ----- text <-> ids -----

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text such as "<|en|>" is encoded as ordinary characters."""
        return self._vocab.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, leaving out timestamp tokens (other specials are rendered as their names)."""
        begin = self.timestamp_begin
        return self._vocab.encoding.decode([int(t) for t in ids if t < begin])

    def decode_with_timestamps(self, ids: Sequence[int]) -> str:
        """Text of `ids` with timestamp tokens rendered in place, e.g. "<|1.08|>"."""
        return self._vocab.encoding.decode([int(t) for t in ids])

    # ----- options -----

    @property
    def language(self) -> str | None:
        return self._language

    @property
    def task(self) -> str | None:
        return self._task

    @property
    def is_multilingual(self) -> bool:
        return self._vocab.multilingual

    @property
    def num_languages(self) -> int:
        return self._vocab.num_languages

    @property
    def n_vocab(self) -> int:
        return self._vocab.encoding.n_vocab

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return dict(self._vocab.specials)

    # ----- special ids -----

    @property
    def eot(self) -> int:
        return self._vocab.specials[_ENDOFTEXT]

    @property
    def sot(self) -> int:
        return self._vocab.specials["<|startoftranscript|>"]

    @property
    def translate(self) -> int:
        return self._vocab.specials["<|translate|>"]

    @property
    def transcribe(self) -> int:
        return self._vocab.specials["<|transcribe|>"]

    @property
    def sot_lm(self) -> int:
        return self._vocab.specials["<|startoflm|>"]

    @property
    def sot_prev(self) -> int:
        return self._vocab.specials["<|startofprev|>"]

    @property
    def no_speech(self) -> int:
        return self._vocab.specials[_NOSPEECH]

    @property
    def no_timestamps(self) -> int:
        return self._vocab.specials[_NOTIMESTAMPS]

    @property
    def timestamp_begin(self) -> int:
        return self._vocab.specials[_timestamp_name(0)]

    def language_token(self, language: str) -> int:
        """Id of the language token for a code ("de") or English name ("German")."""
        return self._vocab.language_ids[self._resolve_language(language)]

    @property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(self._vocab.language_ids.values())

    @property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(self._vocab.language_ids)

    @property
    def sot_sequence(self) -> tuple[int, ...]:
        """The decoder's prompt prefix: <|startoftranscript|> [<|lang|>] [<|task|>]."""
        seq = [self.sot]
        if self._language is not None:
            seq.append(self.language_token(self._language))
        if self._task is not None:
            seq.append(self.transcribe if self._task == "transcribe" else self.translate)
        return tuple(seq)

    @property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    @property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Sorted ids Whisper suppresses for suppress_tokens="-1" (speaker tags, music, sound events)."""
        return self._vocab.non_speech_tokens

    # ----- words -----

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group `tokens` into words (text, token ids) for word timestamps.

        Words are split at spaces, except for languages written without them, which are split at every
        complete character. Trailing tokens that end inside a character are dropped.
        """
        if self._language in _UNSPACED_LANGUAGES:
            return self._split_on_characters(tokens)
        return self._split_on_spaces(tokens)

    def _split_on_characters(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        full = self.decode_with_timestamps(tokens)
        words: list[str] = []
        groups: list[list[int]] = []
        pending: list[int] = []
        offset = 0  # characters of `full` already emitted
        for token in tokens:
            pending.append(token)
            text = self.decode_with_timestamps(pending)
            bad = text.find(_REPLACEMENT)
            # A U+FFFD means the pending bytes stop inside a character, unless the text really has one there.
            # Past the end of `full` it stands for bytes that never complete (a sequence cut mid-character):
            # they stay pending and are dropped (openai-whisper indexes past the end there and raises).
            at = offset + bad
            if bad < 0 or (at < len(full) and full[at] == _REPLACEMENT):
                words.append(text)
                groups.append(pending)
                pending = []
                offset += len(text)
        return words, groups

    def _split_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        words: list[str] = []
        groups: list[list[int]] = []
        for piece, ids in zip(*self._split_on_characters(tokens), strict=True):
            # A new word starts at a special token, a leading space or punctuation. The test is a substring
            # test on purpose: it is how Whisper decides, so whitespace-only and "()"-like pieces count too.
            starts_word = ids[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            if starts_word or not words:
                words.append(piece)
                groups.append(ids)
            else:
                words[-1] += piece
                groups[-1].extend(ids)
        return words, groups

    # ----- validation -----

    def _resolve_language(self, language: str) -> str:
        key = language.lower()
        code = key if key in LANGUAGES else _NAME_TO_CODE.get(key)
        if code is None or code not in self._vocab.language_ids:
            valid = ", ".join(self._vocab.language_ids)
            raise ValueError(f"unknown language {language!r}; this tokenizer knows: {valid}")
        return code

    def _check_language(self, language: str | None) -> str | None:
        if language is None:
            return None
        if not self._vocab.multilingual:
            # English-only models take no language token; asking for English is harmless, anything else
            # is a caller error rather than something to silently ignore.
            if language.lower() in ("en", "english"):
                return None
            raise ValueError(f"English-only tokenizer: language {language!r} is not available")
        return self._resolve_language(language)

    def _check_task(self, task: str | None) -> str | None:
        if task is not None and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if task is not None and not self._vocab.multilingual:
            if task == "transcribe":
                return None
            raise ValueError("English-only tokenizer: translation is not available")
        return task

    def __repr__(self) -> str:
        return (
            f"Tokenizer(n_vocab={self.n_vocab}, multilingual={self.is_multilingual}, "
            f"num_languages={self.num_languages}, language={self._language!r}, task={self._task!r})"
        )


def default_tiktoken_path(name: str = "multilingual") -> Path:
    """Path of the ranks file `name` ("multilingual" or "gpt2") bundled with openai-whisper, if installed.

    The package is located without importing it (importing pulls in torch-heavy modules and it is optional).
    """
    spec = importlib.util.find_spec("whisper")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        candidate = Path(root) / "assets" / f"{name}.tiktoken"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {name}.tiktoken found: pass a tokenizer path (a .tiktoken file or a Hugging Face tokenizer "
        "directory), or install openai-whisper, which bundles the ranks files"
    )


# ----- Hugging Face files -----


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def _read_hf_files(directory: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """(vocab, merges, added tokens) from tokenizer.json, else from vocab.json + merges.txt + added tokens."""
    added: dict[str, int] = {}
    full = _read_json(directory / "tokenizer.json")
    if full is not None:
        model = full.get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"{directory}/tokenizer.json: expected a BPE model, got {model.get('type')!r}")
        vocab = dict(model["vocab"])
        # tokenizers writes merges as "a b" strings (older) or [a, b] pairs (newer).
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added.update({t["content"]: int(t["id"]) for t in full.get("added_tokens", [])})
    else:
        vocab_json = _read_json(directory / "vocab.json")
        merges_path = directory / "merges.txt"
        if vocab_json is None or not merges_path.is_file():
            raise FileNotFoundError(f"{directory}: need tokenizer.json, or vocab.json and merges.txt")
        vocab = dict(vocab_json)
        with open(merges_path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        added.update(_read_json(directory / "added_tokens.json") or {})
        config = _read_json(directory / "tokenizer_config.json") or {}
        for i, entry in (config.get("added_tokens_decoder") or {}).items():
            added[entry["content"]] = int(i)
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{directory}: malformed merges {bad[:3]}")
    return vocab, merges, added  # type: ignore[return-value]


def _check_merges_follow_ids(
    directory: Path,
    ranks: Mapping[bytes, int],
    merges: Iterable[tuple[str, str]],
    char_to_byte: Mapping[str, int],
) -> None:
    """tiktoken merges by token id, Hugging Face by merge-list position: they agree only when each merge
    yields a token with a higher id than the one before and every multi-byte token comes from a merge."""
    previous = -1
    count = 0
    for a, b in merges:
        joined = _hf_to_bytes(a + b, char_to_byte)
        rank = ranks.get(joined)
        if rank is None or rank <= previous:
            raise ValueError(
                f"{directory}: merge {a!r} + {b!r} is out of id order or makes no vocabulary token; "
                "this vocabulary cannot be run as ranks"
            )
        previous = rank
        count += 1
    multi_byte = sum(1 for token in ranks if len(token) > 1)
    if count != multi_byte:
        raise ValueError(f"{directory}: {multi_byte} multi-byte tokens but {count} merges")
