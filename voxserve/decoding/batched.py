"""Window decoding through the batching engine: the reference decoder's policy, many windows at once.

``BatchDecoder`` turns DecodingOptions into the engine's token-level row specs and the engine's outputs back
into DecodingResults, so callers get the same results as from :class:`WindowDecoder` (greedy and sampled
decoding; beam search and best-of-N stay on the reference decoder, which runs them in one batch of its own).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..engine.engine import Engine, Ticket
from ..engine.types import AudioWindow, EngineConfig, Priority, WindowRequest
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .decode import DecodingResult, WindowDecoder
from .options import DecodingOptions


def make_engine(model: Whisper, tokenizer: Tokenizer, config: EngineConfig | None = None) -> Engine:
    """An engine for ``model``, with the special token ids its decoding policy needs from ``tokenizer``."""
    return Engine(
        model,
        eot=tokenizer.eot,
        no_timestamps=tokenizer.no_timestamps,
        no_speech=tokenizer.no_speech,
        timestamp_begin=tokenizer.timestamp_begin,
        blank_ids=[*tokenizer.encode(" "), tokenizer.eot],
        config=config,
    )


class BatchDecoder:
    def __init__(self, engine: Engine, model: Whisper, tokenizer: Tokenizer) -> None:
        self.engine, self.model, self.tokenizer = engine, model, tokenizer

    def submit(
        self,
        mel: Tensor | AudioWindow,
        options: DecodingOptions,
        *,
        priority: Priority = Priority.INTERACTIVE,
        timeout: float | None = None,
    ) -> tuple[WindowDecoder, Ticket]:
        """Queue one window: a mel [n_mels, frames] (3000 for 30 s) or its audio; ``timeout`` seconds from now
        becomes its deadline."""
        decoder = WindowDecoder(self.model, self.tokenizer, options)
        deadline = None if timeout is None else time.monotonic() + timeout
        request = WindowRequest(mel=mel, spec=decoder.row_spec(), priority=priority, deadline=deadline)
        return decoder, self.engine.submit(request)

    def decode(
        self, mels: Tensor, options: DecodingOptions, *, priority: Priority = Priority.BATCH
    ) -> list[DecodingResult]:
        """Decode windows mel [B, n_mels, 3000] (blocking); one result per window, in order."""
        if options.n_group > 1:
            return WindowDecoder(self.model, self.tokenizer, options).decode(mels)
        pending = [self.submit(mel, options, priority=priority) for mel in mels]
        return [decoder.result_from(ticket.result()) for decoder, ticket in pending]


@torch.no_grad()
def decode_windows_batched(
    engine: Engine, model: Whisper, tokenizer: Tokenizer, mels: Tensor, options: DecodingOptions
) -> list[DecodingResult]:
    return BatchDecoder(engine, model, tokenizer).decode(mels, options)
