"""Long-form transcription: the 30-second seek loop over audio of any length.

The audio becomes one log-mel spectrogram; a window of up to 30 s starting at ``seek`` is decoded (with
temperature fallback), cut into segments at its timestamp tokens, optionally given word timestamps, and
``seek`` moves to where the last complete segment ended. Each window is conditioned on the text before it.
Segments come out of a lazy iterator as soon as their window is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from torch import Tensor
from tqdm import tqdm

from ..audio.features import log_mel_spectrogram, pad_or_trim
from ..config import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from ..decoding.decode import DecodingResult, WindowDecoder, detect_language
from ..decoding.fallback import decode_with_fallback
from ..decoding.options import DecodingOptions, TranscribeOptions
from ..model.whisper import Whisper
from ..results import Segment, TranscriptionInfo
from ..tokenizer import Tokenizer
from .alignment import DraftSegment, add_word_timestamps

# (model, tokenizer, window mel [n_mels, 3000], options, decoding options, prompt tokens) -> (result, features)
WindowDecodeFn = Callable[
    [Whisper, Tokenizer, Tensor, TranscribeOptions, DecodingOptions, tuple[int, ...]],
    tuple[DecodingResult, Tensor],
]


@dataclass(frozen=True)
class _Window:
    seek: int  # first mel frame
    frames: int  # mel frames holding audio (<= 3000)

    @property
    def start(self) -> float:
        return self.seek * HOP_LENGTH / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return self.frames * HOP_LENGTH / SAMPLE_RATE


def transcribe_audio(
    model: Whisper,
    tokenizer: Tokenizer,
    audio: np.ndarray | Tensor,
    options: TranscribeOptions | None = None,
    *,
    progress: bool = False,
    decode_window: WindowDecodeFn | None = None,
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """Transcribe 16 kHz mono float audio of any length.

    Returns (segments, info) at once: the language is detected first (from the first 30 s) when not given,
    and the segments are decoded lazily as the iterator is consumed. ``decode_window`` replaces how one window
    is decoded (``decode_with_fallback``'s signature); the server passes one that feeds the batching engine.
    """
    options = options or TranscribeOptions()
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES, device=model.device)
    content_frames = mel.shape[-1] - N_FRAMES
    duration = content_frames * HOP_LENGTH / SAMPLE_RATE

    language, language_probs = options.decoding.language, None
    if language is None:
        if tokenizer.is_multilingual:
            first = WindowDecoder(model, tokenizer, options.decoding).encode(pad_or_trim(mel, N_FRAMES))
            _, (language_probs,) = detect_language(model, tokenizer, first)
            language = max(language_probs, key=language_probs.__getitem__)
        else:
            language = "en"
    info = TranscriptionInfo(
        language=language,
        language_probability=language_probs[language] if language_probs else 1.0,
        duration=duration,
        task=options.decoding.task,
        all_language_probs=language_probs,
    )
    options_with_language = options.decoding.with_changes(language=language)
    segments = _seek_loop(
        model,
        tokenizer,
        mel,
        content_frames,
        options,
        options_with_language,
        progress,
        decode_window or decode_with_fallback,
    )
    return segments, info


def _seek_clips(options: TranscribeOptions, content_frames: int) -> list[tuple[int, int]]:
    points = [round(t * FRAMES_PER_SECOND) for t in options.clip_timestamps] or [0]
    if len(points) % 2:
        points.append(content_frames)
    return [
        (min(a, content_frames), min(b, content_frames))
        for a, b in zip(points[::2], points[1::2], strict=True)
    ]


def _seek_loop(
    model: Whisper,
    tokenizer: Tokenizer,
    mel: Tensor,
    content_frames: int,
    options: TranscribeOptions,
    decoding: DecodingOptions,  # the user's options with the language fixed
    progress: bool,
    decode_window: WindowDecodeFn,
) -> Iterator[Segment]:
    tokenizer = tokenizer.with_options(
        language=decoding.language if tokenizer.is_multilingual else None,
        task=decoding.task if tokenizer.is_multilingual else None,
    )
    all_tokens: list[int] = []
    if options.initial_prompt:
        all_tokens += tokenizer.encode(" " + options.initial_prompt.strip())
    prompt_reset_since = 0
    last_speech = 0.0
    segment_id = 0

    # Seconds of audio done, for audio longer than one window (a single window is over before a bar helps).
    bar = tqdm(
        total=round(content_frames / FRAMES_PER_SECOND, 2),
        unit="s",
        disable=not progress or content_frames <= N_FRAMES,
        desc="transcribing",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]",
    )
    with bar:
        for clip_start, clip_end in _seek_clips(options, content_frames):
            seek = clip_start
            while seek < clip_end:
                window = _Window(seek, min(N_FRAMES, content_frames - seek, clip_end - seek))
                window_mel = pad_or_trim(mel[:, seek : seek + window.frames], N_FRAMES)
                prompt = tuple(all_tokens[prompt_reset_since:])
                result, features = decode_window(model, tokenizer, window_mel, options, decoding, prompt)

                if _is_silence(result, options):
                    seek += window.frames
                    bar.update(window.frames / FRAMES_PER_SECOND)
                    continue

                drafts, next_seek, single_ending = _split_segments(result.tokens, window, tokenizer)
                if options.word_timestamps:
                    last_speech = add_word_timestamps(
                        drafts,
                        model,
                        tokenizer,
                        features,
                        window.frames,
                        prepend_punctuations=options.prepend_punctuations,
                        append_punctuations=options.append_punctuations,
                        last_speech_timestamp=last_speech,
                    )
                    if not single_ending:
                        last_end = _last_word_end(drafts)
                        if last_end is not None and last_end > window.start:
                            next_seek = round(last_end * FRAMES_PER_SECOND)

                for d in drafts:
                    if d.start == d.end or not d.text.strip():
                        continue  # instantaneous or empty: nothing to show, nothing to condition on
                    all_tokens += d.tokens
                    yield Segment(
                        id=segment_id,
                        seek=d.seek,
                        start=d.start,
                        end=d.end,
                        text=d.text,
                        tokens=tuple(d.tokens),
                        temperature=result.temperature,
                        avg_logprob=result.avg_logprob,
                        compression_ratio=result.compression_ratio,
                        no_speech_prob=result.no_speech_prob,
                        words=tuple(d.words) if options.word_timestamps else None,
                    )
                    segment_id += 1
                if not options.condition_on_previous_text or result.temperature > 0.5:
                    # Text decoded at a high temperature is a poor prompt: start the context afresh.
                    prompt_reset_since = len(all_tokens)
                bar.update((min(content_frames, next_seek) - seek) / FRAMES_PER_SECOND)
                seek = next_seek


def _is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    """A window is skipped when <|nospeech|> is likely, unless the text itself is confident."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def _split_segments(
    tokens: tuple[int, ...], window: _Window, tokenizer: Tokenizer
) -> tuple[list[DraftSegment], int, bool]:
    """Cut a window's tokens into segments at consecutive timestamp pairs.

    Returns (segments, next seek, whether the window ended on a single timestamp). A window ending on a lone
    timestamp has no speech after it, so the whole window is consumed; otherwise the unfinished tail is
    decoded again from the last timestamp.
    """
    ts_begin = tokenizer.timestamp_begin
    precision = 2 * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step (two mel frames)
    is_ts = [t >= ts_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]

    def draft(start: float, end: float, toks: tuple[int, ...]) -> DraftSegment:
        text = tokenizer.decode([t for t in toks if t < tokenizer.eot])
        return DraftSegment(seek=window.seek, start=start, end=end, tokens=list(toks), text=text)

    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        drafts, last = [], 0
        for cut in cuts:
            piece = tokens[last:cut]
            start = window.start + (piece[0] - ts_begin) * precision
            end = window.start + (piece[-1] - ts_begin) * precision
            drafts.append(draft(start, end, piece))
            last = cut
        if single_ending:
            return drafts, window.seek + window.frames, True
        return drafts, window.seek + (tokens[last - 1] - ts_begin) * 2, False

    duration = window.duration
    stamps = [t for t in tokens if t >= ts_begin]
    if stamps and stamps[-1] != ts_begin:
        # No complete pair, but a timestamp: it marks where the speech ends.
        duration = (stamps[-1] - ts_begin) * precision
    return [draft(window.start, window.start + duration, tokens)], window.seek + window.frames, single_ending


def _last_word_end(drafts: list[DraftSegment]) -> float | None:
    for d in reversed(drafts):
        if d.words:
            return d.words[-1].end
    return drafts[-1].end if drafts else None
