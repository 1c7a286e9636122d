"""Logit filters: rules applied to next-token logits before a token is chosen.

Every filter works on the whole batch at once with tensor operations (no Python loop over rows), so the same
code serves one request, a batch of windows and the batching engine.
Shapes: logits [B, V] float32 (modified in place), tokens [B, T] int64 (the full context so far).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class LogitFilter:
    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    """At the first sampled position, forbid a space or end-of-text (an empty transcript)."""

    def __init__(self, blank_ids: Sequence[int], sample_begin: int) -> None:
        self.blank_ids = list(blank_ids)
        self.sample_begin = sample_begin

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.blank_ids] = -torch.inf


class SuppressTokens(LogitFilter):
    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        logits[:, self.ids] = -torch.inf


class ApplyTimestampRules(LogitFilter):
    """Keep timestamp tokens well-formed.

    Timestamps come in pairs (end of one segment, start of the next) except right before end-of-text; they never
    decrease; each segment has a non-zero length; the first sampled token is a timestamp, at most
    ``max_initial_timestamp_index`` steps in; and when the timestamps together are likelier than any single text
    token, a timestamp must be chosen.
    """

    def __init__(
        self,
        *,
        eot: int,
        no_timestamps: int,
        timestamp_begin: int,
        sample_begin: int,
        max_initial_timestamp_index: int | None,
    ) -> None:
        self.eot = eot
        self.no_timestamps = no_timestamps
        self.ts_begin = timestamp_begin
        self.sample_begin = sample_begin
        self.max_initial_index = max_initial_timestamp_index

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        logits[:, self.no_timestamps] = -torch.inf
        vocab = torch.arange(logits.shape[1], device=logits.device)[None, :]
        is_ts_vocab = vocab >= self.ts_begin
        sampled = tokens[:, self.sample_begin :]
        n = sampled.shape[1]
        if n > 0:
            last_ts = sampled[:, -1] >= self.ts_begin
            penult_ts = sampled[:, -2] >= self.ts_begin if n >= 2 else torch.ones_like(last_ts)
            # after a pair (or a lone leading timestamp): text must follow; after a single one: another
            # timestamp or end-of-text must follow
            logits.masked_fill_((last_ts & penult_ts)[:, None] & is_ts_vocab, -torch.inf)
            logits.masked_fill_((last_ts & ~penult_ts)[:, None] & (vocab < self.eot), -torch.inf)
            # timestamps never decrease (they are non-decreasing by these rules, so the last is the largest),
            # and a segment that just opened cannot close at its own start
            ts_values = torch.where(sampled >= self.ts_begin, sampled, torch.full_like(sampled, -1))
            last_value = ts_values.amax(dim=1)
            has_ts = last_value >= 0
            floor = torch.where(last_ts & ~penult_ts, last_value, last_value + 1)
            forbid = has_ts[:, None] & is_ts_vocab & (vocab < floor[:, None])
            logits.masked_fill_(forbid, -torch.inf)
        else:
            # the first sampled token must be a timestamp, and not too late
            logits[:, : self.ts_begin] = -torch.inf
            if self.max_initial_index is not None:
                logits[:, self.ts_begin + self.max_initial_index + 1 :] = -torch.inf
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ts_mass = logprobs[:, self.ts_begin :].logsumexp(dim=-1)
        best_text = logprobs[:, : self.ts_begin].amax(dim=-1)
        logits.masked_fill_((ts_mass > best_text)[:, None] & ~is_ts_vocab, -torch.inf)
