"""``PolicyState.select`` in three Triton kernels: Whisper's rules, the pick and the state update for every row.

The tensor version (policy.py, the oracle) is about 90 small kernels per decode step (gathers of each state
tensor, a dozen vocabulary-wide masks for the timestamp rules, two log-softmaxes, scatters of the new state): at
a small batch, more launches than a fused decoder layer stack has. Here each row's vocabulary is split into
blocks, one program per (row, block): the first kernel applies the suppression bias, the blank and timestamp
rules (writing the logits back) and gathers each block's timestamp log-sum-exp and best text logit; the second
merges those into "timestamps win", then finds each block's best token (greedy, and Gumbel-max with the row's
temperature) and its part of the log-softmax normaliser; the third, one program per row, merges the blocks,
updates the row's state as the tensor version does and writes [token, done, summed log-prob] as float64 for the
host's one read-back. Ties pick the lowest index, as argmax does. The final logits are not written back.

Measured on an H100 (large-v3 vocabulary, eager step under torch.profiler, ``bench/profile_step.py``): the first
form, one program per row walking the vocabulary twice, took 0.133 ms at batch 1, about what the ~90 separate
kernels took, since one program does not use the GPU's width; the blocks take 0.022 ms at batch 1 (rules 17 us,
pick 3, update 2) and 0.053 ms at batch 64 (stop 14).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None

if TYPE_CHECKING:
    from .policy import PolicyState

BLOCK = 4096  # vocabulary entries per program (52k: 13 blocks a row)


def available(logits: Tensor) -> bool:
    return triton is not None and logits.is_cuda


def select_packed(state: PolicyState, logits: Tensor, rows: Tensor, noise: Tensor | None) -> Tensor:
    """As ``state.select(logits, rows, noise)`` (logits modified in place, the rows' state updated), returning
    [3, B] float64: next token, done (0/1), summed log-prob."""
    b, v = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("select needs contiguous float32 logits")
    n_blocks = triton.cdiv(v, BLOCK)
    device = logits.device
    rules = torch.empty(b, n_blocks, 3, dtype=torch.float32, device=device)
    picks = torch.empty(b, n_blocks, 7, dtype=torch.float32, device=device)
    packed = torch.empty(3, b, dtype=torch.float64, device=device)
    s = state
    row_state = (s.n_sampled, s.suppress_blank, s.timestamps, s.max_initial, s.last, s.prev, s.ts_last)
    _rules_kernel[(b, n_blocks)](
        logits, rows, s.bias, s.blank_ids, *row_state, rules,
        v, logits.stride(0), s.bias.stride(0), s.ts_begin, s.eot,
        N_BLANK=s.blank_ids.numel(), BLOCK=BLOCK, num_warps=4,
    )  # fmt: skip
    _pick_kernel[(b, n_blocks)](
        logits, rows, noise if noise is not None else logits, s.timestamps, s.temperature, rules, picks,
        v, logits.stride(0), noise.stride(0) if noise is not None else 0, s.ts_begin,
        N_BLOCKS=n_blocks, SEEN=triton.next_power_of_2(n_blocks), SAMPLE=noise is not None, BLOCK=BLOCK,
        num_warps=4,
    )  # fmt: skip
    _update_kernel[(b,)](
        rows, picks, s.temperature, s.n_sampled, s.sample_len, s.length, s.last, s.prev, s.ts_last,
        s.sum_logprob, s.done, packed,
        b, v, s.ts_begin, s.eot, s.n_ctx,
        N_BLOCKS=n_blocks, SEEN=triton.next_power_of_2(n_blocks), SAMPLE=noise is not None, num_warps=1,
    )  # fmt: skip
    return packed


if triton is not None:

    @triton.jit
    def _lse(x):
        """(max, sum of exp(x - max)) of a tile; (-inf, 0) for an all -inf tile."""
        m = tl.max(x, axis=0)
        safe = tl.where(m == float("-inf"), 0.0, m)
        return m, tl.sum(tl.exp(x - safe), axis=0)

    @triton.jit
    def _row_blocks(Base, b, WIDTH: tl.constexpr, N_BLOCKS: tl.constexpr, SEEN: tl.constexpr):
        """Row b's per-block records of WIDTH floats: (block numbers, their addresses, which are real)."""
        k = tl.arange(0, SEEN)
        return k, Base + (b * N_BLOCKS + k) * WIDTH, k < N_BLOCKS

    @triton.jit
    def _merge_lse(parts, seen):
        """Merge the per-block (max, sum) pairs at ``parts`` (and ``parts + 1``) into one log-sum-exp (-inf when
        all blocks are empty)."""
        m = tl.load(parts, mask=seen, other=float("-inf"))
        s = tl.load(parts + 1, mask=seen, other=0.0)
        top = tl.max(m, axis=0)
        safe = tl.where(top == float("-inf"), 0.0, top)
        return top + tl.log(tl.sum(s * tl.exp(m - safe), axis=0))

    @triton.jit
    def _argmax(x, v, V):
        """(max, lowest index of the max) of a tile."""
        top = tl.max(x, axis=0)
        return top, tl.min(tl.where(x == top, v, V), axis=0)

    @triton.jit
    def _rules_kernel(
        Logits, Rows, Bias, Blank,
        NSampled, SuppressBlank, Timestamps, MaxInitial, Last, Prev, TsLast,
        Rules,
        V, stride_l, stride_bias, ts, eot,
        N_BLANK: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        blk = tl.program_id(1)
        slot = tl.load(Rows + b)
        n = tl.load(NSampled + slot)
        first = n == 0
        blank = first & (tl.load(SuppressBlank + slot) != 0)
        rules = tl.load(Timestamps + slot) != 0
        last = tl.load(Last + slot)
        ts_last = tl.load(TsLast + slot)
        last_ts = (n != 0) & (last >= ts)
        penult_ts = (n < 2) | (tl.load(Prev + slot) >= ts)
        after_pair = rules & last_ts & penult_ts  # text next
        after_one = rules & last_ts & (penult_ts == 0)  # a timestamp or end-of-text next
        floor = tl.where(last_ts & (penult_ts == 0), ts_last, ts_last + 1)  # never decrease; no empty segment
        monotonic = rules & (ts_last >= 0)
        at_first = rules & first

        v = blk * BLOCK + tl.arange(0, BLOCK)
        ok = v < V
        row = Logits + b * stride_l
        x = tl.load(row + v, mask=ok, other=float("-inf")) + tl.load(
            Bias + slot * stride_bias + v, mask=ok, other=0.0
        )
        is_blank = v < 0
        for j in tl.static_range(N_BLANK):
            is_blank = is_blank | (v == tl.load(Blank + j))
        is_ts = v >= ts
        forbid = (blank & is_blank) | (after_pair & is_ts) | (after_one & (v < eot))
        forbid = forbid | (monotonic & is_ts & (v < floor))
        forbid = forbid | (at_first & ((v < ts) | (v > tl.load(MaxInitial + slot))))
        x = tl.where(forbid | (ok == 0), float("-inf"), x)
        tl.store(row + v, x, mask=ok)
        m_ts, s_ts = _lse(tl.where(is_ts, x, float("-inf")))
        out = Rules + (b * tl.num_programs(1) + blk) * 3
        tl.store(out, m_ts)
        tl.store(out + 1, s_ts)
        tl.store(out + 2, tl.max(tl.where(is_ts, float("-inf"), x), axis=0))

    @triton.jit
    def _pick_kernel(
        Logits, Rows, Noise, Timestamps, Temperature, Rules, Picks,
        V, stride_l, stride_noise, ts,
        N_BLOCKS: tl.constexpr, SEEN: tl.constexpr, SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        blk = tl.program_id(1)
        slot = tl.load(Rows + b)
        # where the timestamps' total probability beats every single text token, a timestamp comes next
        k, parts, seen = _row_blocks(Rules, b, 3, N_BLOCKS, SEEN)
        lse_ts = _merge_lse(parts, seen)
        best_text = tl.max(tl.load(parts + 2, mask=seen, other=float("-inf")), axis=0)
        text_off = (tl.load(Timestamps + slot) != 0) & (lse_ts > best_text)

        v = blk * BLOCK + tl.arange(0, BLOCK)
        ok = v < V
        x = tl.load(Logits + b * stride_l + v, mask=ok, other=float("-inf"))
        x = tl.where(text_off & (v < ts), float("-inf"), x)
        m, s = _lse(x)
        best, best_i = _argmax(x, v, V)
        out = Picks + (b * N_BLOCKS + blk) * 7
        tl.store(out, m)
        tl.store(out + 1, s)
        tl.store(out + 2, best)
        tl.store(out + 3, best_i.to(tl.float32))  # exact: vocabulary indices are far below 2**24
        if SAMPLE:
            u = tl.load(Noise + b * stride_noise + v, mask=ok, other=0.5)
            gumbel = -tl.log(-tl.log(tl.maximum(u, 1e-20)))
            temperature = tl.load(Temperature + slot)
            y = tl.where(ok, x / tl.maximum(temperature, 1e-6) + gumbel, float("-inf"))
            drawn, drawn_i = _argmax(y, v, V)
            tl.store(out + 4, drawn)
            tl.store(out + 5, drawn_i.to(tl.float32))
            tl.store(out + 6, tl.max(tl.where(v == drawn_i, x, float("-inf")), axis=0))

    @triton.jit
    def _update_kernel(
        Rows, Picks, Temperature, NSampled, SampleLen, Length, Last, Prev, TsLast, SumLogprob, Done, Packed,
        B, V, ts, eot, n_ctx,
        N_BLOCKS: tl.constexpr, SEEN: tl.constexpr, SAMPLE: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        slot = tl.load(Rows + b)
        k, parts, seen = _row_blocks(Picks, b, 7, N_BLOCKS, SEEN)
        lse = _merge_lse(parts, seen)
        # blocks hold ascending indices: the lowest block with the top value holds the lowest index of it
        bests = tl.load(parts + 2, mask=seen, other=float("-inf"))
        best = tl.max(bests, axis=0)
        token = tl.min(tl.where(seen & (bests == best), tl.load(parts + 3, mask=seen, other=0.0), V), axis=0)
        chosen = best
        if SAMPLE:
            draws = tl.load(parts + 4, mask=seen, other=float("-inf"))
            top = tl.max(draws, axis=0)
            first_block = tl.min(tl.where(seen & (draws == top), k, SEEN), axis=0)
            drawn = tl.sum(tl.where(k == first_block, tl.load(parts + 5, mask=seen, other=0.0), 0.0), axis=0)
            drawn_x = tl.max(
                tl.where(k == first_block, tl.load(parts + 6, mask=seen, other=0.0), float("-inf")), axis=0
            )
            hot = tl.load(Temperature + slot) > 0
            token = tl.where(hot, drawn, token)
            chosen = tl.where(hot, drawn_x, best)
        token = token.to(tl.int64)
        picked = chosen - lse

        # the row's state, as PolicyState.select updates it
        n = tl.load(NSampled + slot)
        last = tl.load(Last + slot)
        ts_last = tl.load(TsLast + slot)
        was_done = tl.load(Done + slot) != 0
        token = tl.where(was_done, eot, token)
        sum_logprob = tl.load(SumLogprob + slot) + tl.where(was_done, 0.0, picked)
        step = tl.where(was_done, 0, 1)
        n = n + step
        length = tl.load(Length + slot) + step
        done = was_done | (token == eot) | (n >= tl.load(SampleLen + slot)) | (length > n_ctx)
        tl.store(NSampled + slot, n)
        tl.store(Length + slot, length)
        tl.store(Prev + slot, tl.where(was_done, tl.load(Prev + slot), last))
        tl.store(Last + slot, token)
        tl.store(TsLast + slot, tl.where((was_done == 0) & (token >= ts), token, ts_last))
        tl.store(Done + slot, done)
        tl.store(SumLogprob + slot, sum_logprob)
        tl.store(Packed + b, token.to(tl.float64))
        tl.store(Packed + B + b, done.to(tl.float64))
        tl.store(Packed + 2 * B + b, sum_logprob.to(tl.float64))
