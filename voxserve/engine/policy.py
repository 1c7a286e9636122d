"""Per-row decoding policy for the batching engine, as tensor state that lives on the device.

The reference decoder applies its logit filters to whole batches that all sit at the same step. In the engine
every row (slot) is at its own step with its own options, so the same rules are kept as per-slot state tensors:
an additive bias row (suppressed tokens), flags, the last two sampled tokens and the last timestamp. ``select``
applies Whisper's rules from that state and picks the next token for every row at once, with no host
synchronisation and no data-dependent Python control flow, so a decode step including it can be captured in a
CUDA graph. Shapes: S slots, V vocabulary, B rows in a step; ``rows`` [B] are slot indices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import select_kernel
from .transfer import upload, upload_together
from .types import RowSpec

NEG_INF = float("-inf")


class PolicyState:
    """Decoding state of every slot, plus ``select``, which applies the rules and picks tokens."""

    def __init__(
        self,
        n_slots: int,
        n_vocab: int,
        *,
        eot: int,
        no_timestamps: int,
        timestamp_begin: int,
        blank_ids: list[int],
        n_ctx: int,
        device: torch.device,
    ) -> None:
        self.eot, self.no_timestamps, self.ts_begin, self.n_ctx = eot, no_timestamps, timestamp_begin, n_ctx
        self.n_vocab = n_vocab

        def zeros(dtype: torch.dtype, *shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.bias = zeros(torch.float32, n_slots, n_vocab)
        # The same suppression as index lists per slot (the bias holds only 0 and -inf), for ``select(...,
        # sparse_bias=True)``: filling a few ids beats gathering and adding a vocabulary-wide row per step.
        self.suppressed: list[Tensor] = [torch.zeros(0, dtype=torch.long, device=device)] * n_slots
        self.blank_ids = torch.tensor(blank_ids, dtype=torch.long, device=device)
        self.suppress_blank = zeros(torch.bool, n_slots)
        self.timestamps = zeros(torch.bool, n_slots)
        self.max_initial = zeros(
            torch.long, n_slots
        )  # last allowed first timestamp, as an index; n_vocab = any
        self.temperature = zeros(torch.float32, n_slots)
        self.sample_len = zeros(torch.long, n_slots)
        self.n_sampled = zeros(torch.long, n_slots)
        self.length = zeros(torch.long, n_slots)  # tokens in the sequence so far (prompt included)
        self.last = zeros(torch.long, n_slots)  # last token of the sequence
        self.prev = zeros(torch.long, n_slots)  # the one before it
        self.ts_last = zeros(torch.long, n_slots)  # largest sampled timestamp token, -1 if none
        self.sum_logprob = zeros(torch.float32, n_slots)
        self.done = zeros(torch.bool, n_slots)
        self.vocab = torch.arange(n_vocab, device=device)
        self._suppressed_cache: dict[tuple[tuple[int, ...], bool], np.ndarray] = {}
        self.use_kernel = True  # select_packed through select_kernel where it can run (CUDA with Triton)

    def reset(self, slots: list[int], specs: list[RowSpec]) -> None:
        """Prepare ``slots`` for new requests (at admission; not inside a captured step). Each state tensor is
        written by one indexed store from values uploaded without waiting for the device (``transfer``)."""
        device = self.bias.device
        ints = torch.tensor(
            [
                [
                    slot,
                    s.suppress_blank,
                    s.timestamps,
                    self.n_vocab
                    if s.max_initial_timestamp_index is None
                    else self.ts_begin + s.max_initial_timestamp_index,
                    s.sample_len,
                    len(s.initial_tokens),
                    s.initial_tokens[-1],
                    s.initial_tokens[-2] if len(s.initial_tokens) > 1 else -1,
                ]
                for slot, s in zip(slots, specs, strict=True)
            ],
            dtype=torch.long,
        )
        suppressed = [self._suppressed_ids(s) for s in specs]
        # each suppressed (slot, id) as its flat index into the bias, built by numpy: as a Python list of tuples
        # they took ~0.8 ms of the engine thread's time for 40 rows of Whisper's ~90 suppressed ids (2-core CPU)
        owners = np.repeat(np.asarray(slots, dtype=np.int64), [len(ids) for ids in suppressed])
        every_id = np.concatenate(suppressed) if suppressed else np.zeros(0, dtype=np.int64)
        flat = torch.from_numpy(owners * self.n_vocab + every_id)
        ints, flat = upload_together(device, ints, flat)
        temperature = upload(torch.tensor([s.temperature for s in specs], dtype=torch.float32), device)
        rows, blank, stamps, max_initial, sample_len, length, last, prev = ints.unbind(1)
        # Constants go in through index_fill_: ``state[rows] = constant`` (index_put_ of a Python number) copies
        # the number from pageable host memory and so waits for the device: six waits an admission, 40 ms of
        # cudaStreamSynchronize in one 50-row live admission (bench/profile_admission.py, H100, stop 26).
        self.bias.index_fill_(0, rows, 0.0)
        self.bias.view(-1).index_fill_(0, flat, NEG_INF)
        if device.type == "cpu":  # the CPU step's sparse suppression
            for slot, ids in zip(slots, suppressed, strict=True):
                self.suppressed[slot] = torch.from_numpy(ids)  # read only, as the cache it views
        self.suppress_blank[rows] = blank.bool()
        self.timestamps[rows] = stamps.bool()
        self.max_initial[rows] = max_initial
        self.temperature[rows] = temperature
        self.sample_len[rows] = sample_len
        self.n_sampled.index_fill_(0, rows, 0)
        self.length[rows] = length
        self.last[rows] = last
        self.prev[rows] = prev
        self.ts_last.index_fill_(0, rows, -1)
        self.sum_logprob.index_fill_(0, rows, 0.0)
        self.done.index_fill_(0, rows, False)

    def _suppressed_ids(self, spec: RowSpec) -> np.ndarray:
        """The vocabulary ids ``spec`` suppresses, sorted and unique (negative ids count from the end), int64;
        remembered for the few distinct suppress lists requests use."""
        key = (spec.suppress, spec.timestamps)
        ids = self._suppressed_cache.get(key)
        if ids is None:
            found = {t % self.n_vocab for t in spec.suppress}
            if spec.timestamps:
                found.add(self.no_timestamps)
            if len(self._suppressed_cache) >= 64:  # requests with their own lists: keep the memory bounded
                self._suppressed_cache.clear()
            ids = self._suppressed_cache[key] = np.array(sorted(found), dtype=np.int64)
        return ids

    def select(
        self,
        logits: Tensor,
        rows: Tensor,
        noise: Tensor | None = None,
        *,
        timestamps: bool = True,
        sparse_bias: list[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Apply the rules to logits [B, V] (float32, modified in place) of ``rows`` and pick the next tokens.

        ``noise`` [B, V] is uniform(0, 1) noise for rows that sample (Gumbel-max); None means greedy for all.
        ``timestamps=False`` promises that no row applies the timestamp rules (known on the host, as on the
        CPU path), which skips their dozen vocabulary-wide operations; the result is the same. ``sparse_bias``
        (the rows' slots as a host list, CPU path) applies the suppression by index instead of the bias rows.
        Updates the rows' state; returns (next tokens [B], done [B]). Rows already done keep emitting end-of-text.
        """
        ts = self.ts_begin
        if sparse_bias is None:
            logits += self.bias[rows]
        else:
            for i, slot in enumerate(sparse_bias):
                logits[i].index_fill_(0, self.suppressed[slot], NEG_INF)

        n = self.n_sampled[rows]
        first = n == 0
        blank = first & self.suppress_blank[rows]
        logits[:, self.blank_ids] = torch.where(blank[:, None], NEG_INF, logits[:, self.blank_ids])

        last, prev, ts_last = self.last[rows], self.prev[rows], self.ts_last[rows]
        if timestamps:
            self._timestamp_rules(logits, rows, n, first, last, prev, ts_last)

        temperature = self.temperature[rows]
        if noise is None:
            tokens = logits.argmax(dim=-1)
        else:
            gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
            sampled = (logits / temperature.clamp_min(1e-6)[:, None] + gumbel).argmax(dim=-1)
            tokens = torch.where(temperature > 0, sampled, logits.argmax(dim=-1))
        picked = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)

        was_done = self.done[rows]
        tokens = torch.where(was_done, self.eot, tokens)
        self.sum_logprob[rows] += torch.where(was_done, 0.0, picked)
        n = n + (~was_done).long()
        length = self.length[rows] + (~was_done).long()
        done = was_done | (tokens == self.eot) | (n >= self.sample_len[rows]) | (length > self.n_ctx)
        self.n_sampled[rows] = n
        self.length[rows] = length
        self.prev[rows] = torch.where(was_done, prev, last)
        self.last[rows] = tokens
        self.ts_last[rows] = torch.where(~was_done & (tokens >= ts), tokens, ts_last)
        self.done[rows] = done
        return tokens, done

    def select_row(self, logits: Tensor, slot: int) -> tuple[int, bool, float]:
        """``select`` for one greedy row without timestamp rules, on the CPU: (next token, done, summed
        log-prob). The same rules and arithmetic (``tests/unit/test_cpu_path.py`` compares the two), with the row's
        state read and written as Python numbers: a lone request's step spends ~0.3 ms in ``select``'s ~30
        small tensor operations, most of them bookkeeping for many rows. ``logits`` [V] float32, modified in
        place."""
        logits.index_fill_(0, self.suppressed[slot], NEG_INF)
        n = int(self.n_sampled[slot])
        if bool(self.done[slot]):
            # a row already done keeps emitting end-of-text; the rest of its state stays
            self.last[slot] = self.eot
            return self.eot, True, float(self.sum_logprob[slot])
        if n == 0 and bool(self.suppress_blank[slot]):
            logits.index_fill_(0, self.blank_ids, NEG_INF)
        token = int(logits.argmax())
        picked = torch.log_softmax(logits, dim=-1)[token]  # float32, as select's gather
        self.sum_logprob[slot] += picked
        n += 1
        length = int(self.length[slot]) + 1
        done = token == self.eot or n >= int(self.sample_len[slot]) or length > self.n_ctx
        self.n_sampled[slot] = n
        self.length[slot] = length
        self.prev[slot] = int(self.last[slot])
        self.last[slot] = token
        if token >= self.ts_begin:
            self.ts_last[slot] = token
        self.done[slot] = done
        return token, done, float(self.sum_logprob[slot])

    def select_packed(self, logits: Tensor, rows: Tensor, noise: Tensor | None = None) -> Tensor:
        """``select`` for a device step: [3, B] float64 of next token, done (0/1) and summed log-prob, for one
        read-back. On CUDA (with use_kernel) three Triton kernels (select_kernel.py) instead of select's ~90."""
        if self.use_kernel and select_kernel.available(logits):
            return select_kernel.select_packed(self, logits, rows, noise)
        tokens, done = self.select(logits, rows, noise)
        return torch.stack([tokens.double(), done.double(), self.sum_logprob[rows].double()])

    def _timestamp_rules(
        self,
        logits: Tensor,
        rows: Tensor,
        n: Tensor,
        first: Tensor,
        last: Tensor,
        prev: Tensor,
        ts_last: Tensor,
    ) -> None:
        """Whisper's ApplyTimestampRules, from per-row state instead of the token history (in place)."""
        ts = self.ts_begin
        vocab = self.vocab[None, :]
        is_ts_vocab = vocab >= ts
        rules = self.timestamps[rows]
        last_ts = ~first & (last >= ts)
        penult_ts = (n < 2) | (prev >= ts)
        forbid = (rules & last_ts & penult_ts)[:, None] & is_ts_vocab  # after a pair: text next
        forbid |= (rules & last_ts & ~penult_ts)[:, None] & (vocab < self.eot)  # after one: timestamp or eot
        floor = torch.where(last_ts & ~penult_ts, ts_last, ts_last + 1)  # never decrease; segments non-empty
        forbid |= (rules & (ts_last >= 0))[:, None] & is_ts_vocab & (vocab < floor[:, None])
        forbid |= (rules & first)[:, None] & ((vocab < ts) | (vocab > self.max_initial[rows][:, None]))
        logits.masked_fill_(forbid, NEG_INF)
        logprobs = torch.log_softmax(logits, dim=-1)
        ts_mass = logprobs[:, ts:].logsumexp(dim=-1)
        best_text = logprobs[:, :ts].amax(dim=-1)
        logits.masked_fill_((rules & (ts_mass > best_text))[:, None] & ~is_ts_vocab, NEG_INF)
