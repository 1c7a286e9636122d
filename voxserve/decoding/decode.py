"""Decoding 30-second windows: the reference decoder that turns log-mel windows into token sequences.

One call decodes a batch of windows under one :class:`DecodingOptions`: encoder pass, optional language
detection, the prompt prefix, then greedy / sampled / beam search over the model's static KV cache, with the
logit filters applied to the whole batch at once. This is the eager path every fast path is tested against.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import CHUNK_LENGTH
from ..engine.types import RowSpec, WindowOutput
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .logits import ApplyTimestampRules, LogitFilter, SuppressBlank, SuppressTokens
from .options import DecodingOptions, OptionsError
from .search import BeamSearch, GreedySearch, rank_by_likelihood


@dataclass(frozen=True)
class DecodingResult:
    tokens: tuple[int, ...]  # sampled tokens, without the prompt prefix and end-of-text
    text: str
    language: str
    avg_logprob: float  # sum of token log-probs / (tokens + 1 for end-of-text)
    no_speech_prob: float  # probability of <|nospeech|> right after <|startoftranscript|>
    temperature: float
    compression_ratio: float  # gzip ratio of the text; high means repetition loops
    language_probs: dict[str, float] | None = None  # when the language was detected
    # why decoding stopped: "stop" (end-of-text), "length" (sample_len or context full), or, in the engine,
    # "deadline" (the request's deadline passed; tokens hold what was decoded by then) or "cancelled"
    finish_reason: str = "stop"


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@torch.no_grad()
def detect_language(
    model: Whisper, tokenizer: Tokenizer, audio_features: Tensor
) -> tuple[Tensor, list[dict[str, float]]]:
    """Most likely language token per window and the distribution over languages.

    audio_features [B, S, C] -> (token ids [B], per window {code: probability}). One decoder step on
    <|startoftranscript|> with every non-language token masked out.
    """
    if not tokenizer.is_multilingual or not tokenizer.all_language_tokens:
        raise OptionsError("this model has no language tokens, so it cannot detect the language")
    b = audio_features.shape[0]
    sot = torch.full((b, 1), tokenizer.sot, dtype=torch.long, device=audio_features.device)
    logits = model.decoder.forward_full(sot, audio_features)[:, 0]
    language_ids = torch.tensor(tokenizer.all_language_tokens, device=logits.device)
    probs = logits[:, language_ids].softmax(dim=-1)
    best = language_ids[probs.argmax(dim=-1)]
    codes = tokenizer.all_language_codes
    table = probs.cpu().tolist()
    return best, [dict(zip(codes, row, strict=True)) for row in table]


class WindowDecoder:
    """Decodes batches of 30 s windows with fixed options (built once, reusable for every window of a file).

    The tokenizer must already carry the language and task; ``options.language=None`` means "detect per window"
    (the language token is then overwritten by each window's detected language).
    """

    def __init__(self, model: Whisper, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        options.validate()
        self.model = model
        self.options = options
        language = options.language or ("en" if tokenizer.is_multilingual else None)
        task = options.task if tokenizer.is_multilingual else None
        if not tokenizer.is_multilingual and options.task == "translate":
            raise OptionsError("this model is English-only: it cannot translate")
        self.tokenizer = tokenizer.with_options(language=language, task=task)
        self.n_ctx = model.dims.n_text_ctx
        self.sample_len = options.sample_len or self.n_ctx // 2
        self.n_group = options.n_group
        self.initial_tokens = self.check_context(self._initial_tokens())
        self.sample_begin = len(self.initial_tokens)
        # Sampling stops after sample_len tokens or once the sequence outgrows the context by one token.
        self.max_sampled = min(self.sample_len, self.n_ctx + 1 - self.sample_begin)
        self.sot_index = self.initial_tokens.index(self.tokenizer.sot)
        self.max_initial_timestamp_index = None
        if options.max_initial_timestamp:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx
            self.max_initial_timestamp_index = round(options.max_initial_timestamp / precision)
        self.filters = self._filters()

    # ----- setup

    def prefix_tokens(self, prefix: str | list[int] | tuple[int, ...]) -> list[int]:
        """The tokens a forced ``prefix`` (text or token ids) adds at the end of the initial tokens: its last ones
        that fit half the context beside the sample length."""
        tokens = self.tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else list(prefix)
        room = self.n_ctx // 2 - self.sample_len
        # Whisper keeps the whole prefix when the sample length leaves no room (its slice [-0:]); so do we.
        return tokens[-room:] if room > 0 else tokens

    def check_context(self, initial_tokens: tuple[int, ...]) -> tuple[int, ...]:
        """``initial_tokens``, refused when they leave no room for a sampled token in the decoder context."""
        if len(initial_tokens) + 1 > self.n_ctx:
            raise OptionsError(f"prompt and prefix leave no room in the {self.n_ctx}-token decoder context")
        return initial_tokens

    def _initial_tokens(self) -> tuple[int, ...]:
        tok, opt = self.tokenizer, self.options
        tokens = list(tok.sot_sequence_including_notimestamps if opt.without_timestamps else tok.sot_sequence)
        if opt.prefix:
            tokens += self.prefix_tokens(opt.prefix)
        if opt.prompt:
            prompt = tok.encode(" " + opt.prompt.strip()) if isinstance(opt.prompt, str) else list(opt.prompt)
            tokens = [tok.sot_prev, *prompt[-(self.n_ctx // 2 - 1) :], *tokens]
        return tuple(tokens)

    def suppress_tokens(self) -> tuple[int, ...]:
        tok, ids = self.tokenizer, self.options.suppress_tokens
        ids = list(ids or ())
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(tok.non_speech_tokens)
        # Prompt-structure tokens are never sampled; <|nospeech|> is read separately at the first step.
        ids += [tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech]
        bad = [t for t in ids if not 0 <= t < self.model.dims.n_vocab]
        if bad:
            raise OptionsError(f"suppress_tokens {bad[:5]} are outside the vocabulary")
        return tuple(sorted(set(ids)))

    def _filters(self) -> list[LogitFilter]:
        tok, opt = self.tokenizer, self.options
        filters: list[LogitFilter] = []
        if opt.suppress_blank:
            filters.append(SuppressBlank([*tok.encode(" "), tok.eot], self.sample_begin))
        if opt.suppress_tokens:
            filters.append(SuppressTokens(self.suppress_tokens()))
        if not opt.without_timestamps:
            filters.append(
                ApplyTimestampRules(
                    eot=tok.eot,
                    no_timestamps=tok.no_timestamps,
                    timestamp_begin=tok.timestamp_begin,
                    sample_begin=self.sample_begin,
                    max_initial_timestamp_index=self.max_initial_timestamp_index,
                )
            )
        return filters

    # ----- the batching engine decodes the same policy from token-level specs

    def row_spec(self) -> RowSpec:
        """These options as the engine's per-row policy (greedy or sampling; beam search stays here)."""
        opt, tok = self.options, self.tokenizer
        if self.n_group > 1:
            raise OptionsError(
                "the batching engine decodes one hypothesis per window: no beam_size or best_of"
            )
        return RowSpec(
            initial_tokens=self.initial_tokens,
            sot_index=self.sot_index,
            suppress=self.suppress_tokens() if opt.suppress_tokens else (),
            suppress_blank=opt.suppress_blank,
            timestamps=not opt.without_timestamps,
            max_initial_timestamp_index=self.max_initial_timestamp_index,
            sample_len=self.sample_len,
            temperature=opt.temperature,
            detect_language_ids=tok.all_language_tokens
            if opt.language is None and tok.is_multilingual
            else None,
        )

    def result_from(self, output: WindowOutput) -> DecodingResult:
        """The engine's token-level output as this decoder's result."""
        tok = self.tokenizer
        text = tok.decode(list(output.tokens)).strip()
        language, probs = tok.language or "en", None
        if output.language_token is not None and output.language_probs is not None:
            codes = dict(zip(tok.all_language_tokens, tok.all_language_codes, strict=True))
            language = codes[output.language_token]
            probs = dict(zip(tok.all_language_codes, output.language_probs, strict=True))
        return DecodingResult(
            tokens=output.tokens,
            text=text,
            language=language,
            avg_logprob=output.sum_logprob / (len(output.tokens) + 1),
            no_speech_prob=output.no_speech_prob,
            temperature=self.options.temperature,
            compression_ratio=compression_ratio(text),
            language_probs=probs,
            finish_reason=output.finish_reason,
        )

    # ----- decoding

    @torch.no_grad()
    def encode(self, mel: Tensor) -> Tensor:
        """mel [B, n_mels, frames] -> audio features [B, S, C] in the model's dtype."""
        model = self.model
        if mel.dim() == 2:
            mel = mel[None]
        if mel.shape[1] != model.dims.n_mels:
            raise ValueError(f"mel has {mel.shape[1]} bins; this model expects {model.dims.n_mels}")
        return model.encoder(mel.to(device=model.device, dtype=model.dtype))

    @torch.no_grad()
    def decode(self, mel: Tensor, generator: torch.Generator | None = None) -> list[DecodingResult]:
        """Decode windows mel [B, n_mels, 3000] (or [n_mels, 3000]); one result per window."""
        return self.decode_features(self.encode(mel), generator)

    @torch.no_grad()
    def decode_features(
        self, features: Tensor, generator: torch.Generator | None = None
    ) -> list[DecodingResult]:
        tok, opt = self.tokenizer, self.options
        n_audio, device = features.shape[0], features.device
        tokens = torch.tensor([self.initial_tokens], device=device).repeat(n_audio, 1)

        language_probs: list[dict[str, float]] | None = None
        languages = [tok.language or "en"] * n_audio
        if opt.language is None and tok.is_multilingual:
            lang_tokens, language_probs = detect_language(self.model, tok, features)
            tokens[:, self.sot_index + 1] = lang_tokens
            languages = [max(p, key=p.__getitem__) for p in language_probs]

        tokens = tokens.repeat_interleave(self.n_group, dim=0)
        features = features.repeat_interleave(self.n_group, dim=0)
        search = self._new_search(generator)
        tokens, sum_logprobs, no_speech = self._main_loop(features, tokens, search)

        no_speech = no_speech[:: self.n_group]
        search_tokens = tokens.view(n_audio, self.n_group, -1)
        candidates, scores = search.finalize(search_tokens, sum_logprobs.view(n_audio, self.n_group))
        eot = tok.eot
        candidates = [[seq[self.sample_begin : _first(seq, eot)] for seq in group] for group in candidates]
        best = rank_by_likelihood(opt.length_penalty)(candidates, scores)

        results = []
        for i in range(n_audio):
            seq = candidates[i][best[i]].tolist()
            text = tok.decode(seq).strip()
            results.append(
                DecodingResult(
                    tokens=tuple(seq),
                    text=text,
                    language=languages[i],
                    avg_logprob=scores[i][best[i]] / (len(seq) + 1),
                    no_speech_prob=no_speech[i],
                    temperature=opt.temperature,
                    compression_ratio=compression_ratio(text),
                    language_probs=language_probs[i] if language_probs else None,
                    finish_reason="length" if len(seq) >= self.max_sampled else "stop",
                )
            )
        return results

    def _new_search(self, generator: torch.Generator | None) -> GreedySearch | BeamSearch:
        opt, eot = self.options, self.tokenizer.eot
        if opt.beam_size is not None:
            return BeamSearch(opt.beam_size, eot, opt.patience)
        return GreedySearch(opt.temperature, eot, generator)

    def _main_loop(
        self, features: Tensor, tokens: Tensor, search: GreedySearch | BeamSearch
    ) -> tuple[Tensor, Tensor, list[float]]:
        model, tok = self.model, self.tokenizer
        batch = tokens.shape[0]
        cache = model.new_cache(batch, n_audio_ctx=features.shape[1])
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(features)
        sum_logprobs = torch.zeros(batch, device=features.device)
        no_speech: list[float] = [float("nan")] * batch

        new = tokens
        for step in range(self.sample_len):
            length = tokens.shape[1]
            positions = torch.arange(length - new.shape[1], length, device=tokens.device).expand(batch, -1)
            logits = model.decoder(new, positions, cache, length)
            if step == 0:
                no_speech = logits[:, self.sot_index].softmax(dim=-1)[:, tok.no_speech].tolist()
            logits = logits[:, -1]
            for f in self.filters:
                f.apply(logits, tokens)
            tokens, completed, source_rows = search.update(tokens, logits, sum_logprobs)
            if source_rows is not None:
                cache.reorder(source_rows)
            if completed or tokens.shape[1] > self.n_ctx:
                break
            new = tokens[:, -1:]
        return tokens, sum_logprobs, no_speech


def _first(seq: Tensor, value: int) -> int:
    hits = (seq == value).nonzero()
    return int(hits[0, 0]) if len(hits) else len(seq)


def decode_windows(
    model: Whisper,
    tokenizer: Tokenizer,
    mel: Tensor,
    options: DecodingOptions | None = None,
    *,
    generator: torch.Generator | None = None,
) -> list[DecodingResult]:
    """Decode 30 s windows mel [B, n_mels, 3000] (or one [n_mels, 3000]) under ``options``."""
    return WindowDecoder(model, tokenizer, options or DecodingOptions()).decode(mel, generator)
