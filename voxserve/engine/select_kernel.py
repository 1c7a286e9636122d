"""``PolicyState.select`` as one Triton kernel: Whisper's rules, the pick and the state update for every row.

The tensor version (policy.py, the oracle) is about 90 small kernels per decode step (gathers of each state
tensor, a dozen vocabulary-wide masks for the timestamp rules, two log-softmaxes, scatters of the new state): at
a small batch, more launches than a fused decoder layer stack has. Here one program per row walks the
vocabulary twice: the first pass applies the suppression bias, the blank and timestamp rules (writing the
logits back) and gathers the timestamp mass and the best text logit; the second applies "timestamps win", picks
the token (greedy, or Gumbel-max with the row's temperature) and the log-softmax normaliser (the final logits
are not written back). The row's state is
then updated as the tensor version does, and [token, done, summed log-prob] written as float64 for the host's
one read-back. Ties pick the lowest index, as argmax does.

Measured once on an H100 (large-v3 vocabulary, batch 1, eager step under torch.profiler): 0.133 ms for the one
program, about what the ~90 separate kernels took; one program walking 52k logits twice does not use the GPU's
width. Splitting each row's vocabulary over several programs (a partial max / log-sum-exp per block, then a
merge) is the next step.
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

BLOCK = 2048


def available(logits: Tensor) -> bool:
    return triton is not None and logits.is_cuda


def select_packed(state: PolicyState, logits: Tensor, rows: Tensor, noise: Tensor | None) -> Tensor:
    """As ``state.select(logits, rows, noise)`` (logits modified in place, the rows' state updated), returning
    [3, B] float64: next token, done (0/1), summed log-prob."""
    b, v = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("select needs contiguous float32 logits")
    packed = torch.empty(3, b, dtype=torch.float64, device=logits.device)
    s = state
    _select_kernel[(b,)](
        logits, rows, noise if noise is not None else logits, s.bias, s.blank_ids,
        s.n_sampled, s.suppress_blank, s.timestamps, s.max_initial, s.temperature, s.sample_len,
        s.length, s.last, s.prev, s.ts_last, s.sum_logprob, s.done, packed,
        b, v, logits.stride(0), noise.stride(0) if noise is not None else 0, s.bias.stride(0),
        s.ts_begin, s.eot, s.n_ctx,
        N_BLANK=s.blank_ids.numel(), SAMPLE=noise is not None, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    return packed


if triton is not None:

    @triton.jit
    def _online_lse(m, s, x):
        """Fold the tile x into a running (max, sum of exp(x - max)); -inf tiles leave it unchanged."""
        m_new = tl.maximum(m, tl.max(x, axis=0))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), axis=0)
        return m_new, s

    @triton.jit
    def _argmax_fold(best, best_i, x, v, V):
        """Fold the tile x (indices v) into a running (max, lowest index of the max)."""
        t_max = tl.max(x, axis=0)
        t_i = tl.min(tl.where(x == t_max, v, V), axis=0)
        better = t_max > best
        return tl.where(better, t_max, best), tl.where(better, t_i, best_i)

    @triton.jit
    def _select_kernel(
        Logits, Rows, Noise, Bias, Blank,
        NSampled, SuppressBlank, Timestamps, MaxInitial, Temperature, SampleLen,
        Length, Last, Prev, TsLast, SumLogprob, Done, Packed,
        B, V, stride_l, stride_noise, stride_bias,
        ts, eot, n_ctx,
        N_BLANK: tl.constexpr, SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        slot = tl.load(Rows + b)
        n = tl.load(NSampled + slot)
        first = n == 0
        blank = first & (tl.load(SuppressBlank + slot) != 0)
        rules = tl.load(Timestamps + slot) != 0
        last = tl.load(Last + slot)
        prev = tl.load(Prev + slot)
        ts_last = tl.load(TsLast + slot)
        max_initial = tl.load(MaxInitial + slot)
        last_ts = (n != 0) & (last >= ts)
        penult_ts = (n < 2) | (prev >= ts)
        after_pair = rules & last_ts & penult_ts  # text next
        after_one = rules & last_ts & (penult_ts == 0)  # a timestamp or end-of-text next
        floor = tl.where(last_ts & (penult_ts == 0), ts_last, ts_last + 1)
        monotonic = rules & (ts_last >= 0)
        at_first = rules & first
        row = Logits + b * stride_l
        bias_row = Bias + slot * stride_bias

        # pass 1: the rules; the timestamp tokens' log-sum-exp and the best text logit
        m_ts = tl.full((), float("-inf"), tl.float32)
        s_ts = tl.zeros((), tl.float32)
        best_text = tl.full((), float("-inf"), tl.float32)
        for v0 in range(0, V, BLOCK):
            v = v0 + tl.arange(0, BLOCK)
            ok = v < V
            x = tl.load(row + v, mask=ok, other=float("-inf")) + tl.load(bias_row + v, mask=ok, other=0.0)
            is_blank = v < 0
            for j in tl.static_range(N_BLANK):
                is_blank = is_blank | (v == tl.load(Blank + j))
            is_ts = v >= ts
            forbid = (blank & is_blank) | (after_pair & is_ts) | (after_one & (v < eot))
            forbid = forbid | (monotonic & is_ts & (v < floor))
            forbid = forbid | (at_first & ((v < ts) | (v > max_initial)))
            x = tl.where(forbid | (ok == 0), float("-inf"), x)
            tl.store(row + v, x, mask=ok)
            m_ts, s_ts = _online_lse(m_ts, s_ts, tl.where(is_ts, x, float("-inf")))
            best_text = tl.maximum(best_text, tl.max(tl.where(is_ts, float("-inf"), x), axis=0))
        # where the timestamps' total probability beats every single text token, a timestamp comes next
        text_off = rules & (m_ts + tl.log(s_ts) > best_text)
        tl.debug_barrier()  # pass 1's stores are visible to every thread of the program

        # pass 2: the pick and the normaliser of the final logits
        temperature = tl.load(Temperature + slot)
        m_all = tl.full((), float("-inf"), tl.float32)
        s_all = tl.zeros((), tl.float32)
        best = tl.full((), float("-inf"), tl.float32)
        best_i = tl.zeros((), tl.int64)
        drawn = tl.full((), float("-inf"), tl.float32)
        drawn_i = tl.zeros((), tl.int64)
        drawn_x = tl.full((), float("-inf"), tl.float32)  # the final logit of the drawn token
        for v0 in range(0, V, BLOCK):
            v = v0 + tl.arange(0, BLOCK)
            ok = v < V
            x = tl.load(row + v, mask=ok, other=float("-inf"))
            x = tl.where(text_off & (v < ts), float("-inf"), x)
            m_all, s_all = _online_lse(m_all, s_all, x)
            best, best_i = _argmax_fold(best, best_i, x, v.to(tl.int64), V)
            if SAMPLE:
                u = tl.load(Noise + b * stride_noise + v, mask=ok, other=0.5)
                gumbel = -tl.log(-tl.log(tl.maximum(u, 1e-20)))
                y = tl.where(ok, x / tl.maximum(temperature, 1e-6) + gumbel, float("-inf"))
                t_drawn, t_i = _argmax_fold(drawn, drawn_i, y, v.to(tl.int64), V)
                drawn_x = tl.where(
                    t_drawn > drawn, tl.max(tl.where(v == t_i, x, float("-inf")), axis=0), drawn_x
                )
                drawn, drawn_i = t_drawn, t_i
        token = best_i
        chosen = best
        if SAMPLE:
            token = tl.where(temperature > 0, drawn_i, best_i)
            chosen = tl.where(temperature > 0, drawn_x, best)
        picked = chosen - (m_all + tl.log(s_all))

        # the row's state, as PolicyState.select updates it
        was_done = tl.load(Done + slot) != 0
        token = tl.where(was_done, eot, token)
        sum_logprob = tl.load(SumLogprob + slot) + tl.where(was_done, 0.0, picked)
        step = tl.where(was_done, 0, 1)
        n = n + step
        length = tl.load(Length + slot) + step
        done = was_done | (token == eot) | (n >= tl.load(SampleLen + slot)) | (length > n_ctx)
        tl.store(NSampled + slot, n)
        tl.store(Length + slot, length)
        tl.store(Prev + slot, tl.where(was_done, prev, last))
        tl.store(Last + slot, token)
        tl.store(TsLast + slot, tl.where((was_done == 0) & (token >= ts), token, ts_last))
        tl.store(Done + slot, done)
        tl.store(SumLogprob + slot, sum_logprob)
        tl.store(Packed + b, token.to(tl.float64))
        tl.store(Packed + B + b, done.to(tl.float64))
        tl.store(Packed + 2 * B + b, sum_logprob.to(tl.float64))
