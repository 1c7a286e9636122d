"""Frozen configuration: the model's dimensions and how to run it.

Dimensions are always read from a checkpoint's own config (never guessed from tensor sizes or file names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds of audio one encoder pass sees
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames a second
TOKENS_PER_SECOND = FRAMES_PER_SECOND // 2  # the encoder's stride-2 conv halves the frame rate
TIME_PRECISION = 1 / TOKENS_PER_SECOND  # 0.02 s per timestamp token


@dataclass(frozen=True)
class ModelDims:
    n_mels: int  # log-mel bins the encoder expects: 80, or 128 for large-v3
    n_audio_ctx: int  # encoder positions (1500 for a 30 s window)
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int  # decoder positions (448)
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    num_languages: int = 99  # language tokens in the vocabulary (100 for large-v3)
    multilingual: bool = True  # multilingual BPE ranks; English-only (".en") models use GPT-2's

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "multilingual":
                continue
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelDims.{name} must be a positive int, got {value!r}")
        if self.n_audio_state % self.n_audio_head or self.n_text_state % self.n_text_head:
            raise ValueError("model width must be divisible by the number of attention heads")
        if self.n_vocab != _vocab_size(self.num_languages, self.multilingual):
            raise ValueError(
                f"n_vocab={self.n_vocab} does not match a Whisper vocabulary with {self.num_languages} "
                f"languages ({'multilingual' if self.multilingual else 'English-only'})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_openai(cls, dims: dict[str, Any]) -> ModelDims:
        """From an openai-whisper checkpoint's ``dims`` dict.

        Such files carry only n_vocab, so the layout is the one openai-whisper itself assumes: 51864 is the
        English-only vocabulary, larger ones are multilingual with one language token per extra id.
        """
        keys = [f for f in cls.__dataclass_fields__ if f not in ("num_languages", "multilingual")]
        missing = [k for k in keys if k not in dims]
        if missing:
            raise ValueError(f"checkpoint dims are missing {missing}")
        n_vocab = int(dims["n_vocab"])
        multilingual = n_vocab != _vocab_size(99, False)
        n_lang = _languages_in_vocab(n_vocab, multilingual)
        if n_lang <= 0:
            raise ValueError(f"n_vocab={n_vocab} is too small for a Whisper vocabulary")
        return cls(**{k: int(dims[k]) for k in keys}, num_languages=n_lang, multilingual=multilingual)

    def to_openai(self) -> dict[str, int]:
        return {k: v for k, v in self.to_dict().items() if k not in ("num_languages", "multilingual")}

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelDims:
        """From a Hugging Face ``config.json`` (WhisperConfig) and, when present, generation_config.json."""
        try:
            n_vocab = int(cfg["vocab_size"])
            generation = generation or {}
            if "is_multilingual" in generation:
                multilingual = bool(generation["is_multilingual"])
            else:
                # Without a generation config the vocabulary layout decides: English-only vocabularies end
                # GPT-2's ranks with <|endoftext|> as their last text id, multilingual ones one id later.
                multilingual = int(cfg.get("eos_token_id", _EOT_MULTILINGUAL)) == _EOT_MULTILINGUAL
            if "lang_to_id" in generation:
                n_lang = len(generation["lang_to_id"])
            else:
                n_lang = _languages_in_vocab(n_vocab, multilingual)
                if n_lang <= 0:
                    raise ValueError(f"vocab_size={n_vocab} is too small for a Whisper vocabulary")
            return cls(
                n_mels=int(cfg["num_mel_bins"]),
                n_audio_ctx=int(cfg["max_source_positions"]),
                n_audio_state=int(cfg["d_model"]),
                n_audio_head=int(cfg["encoder_attention_heads"]),
                n_audio_layer=int(cfg["encoder_layers"]),
                n_vocab=n_vocab,
                n_text_ctx=int(cfg["max_target_positions"]),
                n_text_state=int(cfg["d_model"]),
                n_text_head=int(cfg["decoder_attention_heads"]),
                n_text_layer=int(cfg["decoder_layers"]),
                num_languages=n_lang,
                multilingual=multilingual,
            )
        except KeyError as e:
            raise ValueError(f"config.json is not a Whisper config: missing {e.args[0]!r}") from None


# Whisper's vocabulary: the BPE ranks (50257 multilingual, 50256 GPT-2), then <|endoftext|>,
# <|startoftranscript|>, one token per language, translate, transcribe, startoflm, startofprev, nospeech,
# notimestamps and 1501 timestamps.
_N_SPECIAL_FIXED = 1 + 1 + 2 + 4 + 1501
_EOT_MULTILINGUAL = 50257


def _vocab_size(num_languages: int, multilingual: bool) -> int:
    return (50257 if multilingual else 50256) + _N_SPECIAL_FIXED + num_languages


def _languages_in_vocab(n_vocab: int, multilingual: bool) -> int:
    return n_vocab - _vocab_size(0, multilingual)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]
