"""What to decode and how: one frozen options object, validated before any work starts (principle 5)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

TASKS = ("transcribe", "translate")


class OptionsError(ValueError):
    """An option is out of range or options contradict each other; the message names the option."""


@dataclass(frozen=True)
class DecodingOptions:
    # "transcribe" (speech -> same-language text) or "translate" (speech -> English text)
    task: str = "transcribe"
    # language code or English name of the audio; None detects it from the first 30 s window
    language: str | None = None
    # 0 decodes deterministically (greedy or beam); > 0 samples from softmax(logits / temperature)
    temperature: float = 0.0
    # most tokens sampled per 30 s window; None means half the decoder context (224)
    sample_len: int | None = None
    # independent samples when temperature > 0; the most likely one wins
    best_of: int | None = None
    # beam width at temperature 0; None is greedy
    beam_size: int | None = None
    # beam search keeps going until round(beam_size * patience) hypotheses have finished
    patience: float | None = None
    # ranking: None divides log-prob by length; alpha in [0, 1] uses Google NMT's ((5 + len) / 6) ** alpha
    length_penalty: float | None = None
    # previous text (or token ids) given as context after <|startofprev|>
    prompt: str | tuple[int, ...] | None = None
    # text (or token ids) the output must start with
    prefix: str | tuple[int, ...] | None = None
    # token ids never to emit; -1 adds Whisper's non-speech symbol set; None or () suppresses nothing extra
    suppress_tokens: tuple[int, ...] | None = (-1,)
    # forbid a blank (space or end-of-text) as the first sampled token
    suppress_blank: bool = True
    # decode text only (<|notimestamps|>); otherwise timestamp tokens delimit segments
    without_timestamps: bool = False
    # the first timestamp may be at most this many seconds into the window; None allows any
    max_initial_timestamp: float | None = 1.0

    def __post_init__(self) -> None:
        # Normalise sequences so the options stay hashable and comparable.
        for name in ("prompt", "prefix", "suppress_tokens"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, tuple(int(t) for t in value))
        if isinstance(self.suppress_tokens, str):
            text = self.suppress_tokens.strip()
            try:
                ids = tuple(int(t) for t in text.split(",")) if text else ()
            except ValueError:
                raise OptionsError(
                    f"suppress_tokens must be comma-separated integers, got {text!r}"
                ) from None
            object.__setattr__(self, "suppress_tokens", ids)
        self.validate()

    def validate(self) -> None:
        if self.task not in TASKS:
            raise OptionsError(f"task must be one of {TASKS}, got {self.task!r}")
        if not (0.0 <= float(self.temperature) <= 5.0):
            raise OptionsError(f"temperature must be in [0, 5], got {self.temperature}")
        if self.sample_len is not None and self.sample_len < 1:
            raise OptionsError(f"sample_len must be >= 1, got {self.sample_len}")
        if self.beam_size is not None and self.best_of is not None:
            raise OptionsError("beam_size and best_of cannot be given together")
        if self.beam_size is not None and self.beam_size < 1:
            raise OptionsError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.best_of is not None and self.best_of < 1:
            raise OptionsError(f"best_of must be >= 1, got {self.best_of}")
        if self.temperature == 0 and self.best_of is not None:
            raise OptionsError("best_of needs sampling (temperature > 0); use beam_size at temperature 0")
        if self.temperature > 0 and self.beam_size is not None:
            raise OptionsError("beam_size is for temperature 0; use best_of when sampling")
        if self.patience is not None:
            if self.beam_size is None:
                raise OptionsError("patience requires beam_size")
            if self.patience <= 0 or round(self.beam_size * self.patience) < 1:
                raise OptionsError(
                    f"patience must be > 0 and keep at least one candidate, got {self.patience}"
                )
        if self.length_penalty is not None and not (0.0 <= self.length_penalty <= 1.0):
            raise OptionsError(f"length_penalty must be in [0, 1], got {self.length_penalty}")
        if self.max_initial_timestamp is not None and self.max_initial_timestamp < 0:
            raise OptionsError(f"max_initial_timestamp must be >= 0, got {self.max_initial_timestamp}")

    @property
    def n_group(self) -> int:
        """Hypotheses decoded per audio: the beam width, the number of samples, or 1."""
        return self.beam_size or self.best_of or 1

    def with_changes(self, **changes: Any) -> DecodingOptions:
        return replace(self, **changes)


@dataclass(frozen=True)
class TranscribeOptions:
    """Long-form transcription: the seek loop, fallback and word timing around DecodingOptions."""

    decoding: DecodingOptions = DecodingOptions()
    # tried in order until a window's output passes the thresholds below
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # retry at the next temperature when gzip compresses the text better than this (repetition loops)
    compression_ratio_threshold: float | None = 2.4
    # retry when the average token log-probability is below this
    logprob_threshold: float | None = -1.0
    # treat a window as silence when <|nospeech|> is likelier than this and the log-prob is low
    no_speech_threshold: float | None = 0.6
    # give each window the previous window's text as prompt
    condition_on_previous_text: bool = True
    # text placed before the first window, e.g. vocabulary or spelling hints
    initial_prompt: str | None = None
    # align each word to the audio through cross-attention and dynamic time warping
    word_timestamps: bool = False
    # punctuation merged into the following / preceding word when timing words
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    # samples per window once fallback raises the temperature above 0 (None: one)
    best_of: int | None = None
    # (start, end) pairs in seconds to transcribe; empty means the whole file
    clip_timestamps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        temps = (self.temperatures,) if isinstance(self.temperatures, int | float) else self.temperatures
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))
        object.__setattr__(self, "clip_timestamps", tuple(float(t) for t in self.clip_timestamps))
        if not self.temperatures:
            raise OptionsError("temperatures must hold at least one value")
        for t in self.temperatures:
            if not (0.0 <= t <= 5.0):
                raise OptionsError(f"temperatures must be in [0, 5], got {t}")
        if any(t < 0 for t in self.clip_timestamps):
            raise OptionsError("clip_timestamps must be >= 0")
        if self.decoding.prompt is not None:
            raise OptionsError(
                "decoding.prompt is set per window from the previous text; use initial_prompt to give context"
            )
        # The decoding options for each temperature must be valid too: check them now, not mid-file.
        for t in self.temperatures:
            self.decoding_at(t)

    def decoding_at(self, temperature: float) -> DecodingOptions:
        """The window's decoding options at one fallback temperature."""
        return at_temperature(self.decoding, temperature, self.best_of)


def at_temperature(decoding: DecodingOptions, temperature: float, best_of: int | None) -> DecodingOptions:
    """``decoding`` at one fallback temperature: beam search only at 0, ``best_of`` samples above it."""
    if temperature > 0:
        return replace(decoding, temperature=temperature, beam_size=None, patience=None, best_of=best_of)
    return replace(decoding, temperature=0.0, best_of=None)


def option_names() -> list[str]:
    return [f.name for f in fields(DecodingOptions)]
