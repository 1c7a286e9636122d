"""An admission's prompts laid end to end ("packed") for one prefill pass, instead of a [rows, tokens] batch.

Why: the padded prefill runs at a captured graph's shape, the next power-of-two rows and the next prompt-length
bucket up. Live partials carry their agreed text as a prompt (up to ~30 tokens) beside new ones of 4, so at 200
streams (large-v3 fp16, H100, bench/profile_streams.py, stop 20) admissions of ~35 rows ran as 64 rows of 16 or
32 tokens: 1,024-2,048 token positions through 32 decoder layers for ~400 real ones. Packed, a pass holds the
prompts' own tokens and a tail up to the next pass size.

What keeps each row exactly its own prefill: positions restart at 0 for each row, self-attention is causal
within each row (FlashAttention's variable-length form on CUDA, one SDPA per row elsewhere), each token's
cross-attention reads its own row's slot up to that row's encoder length, and each token's self K/V goes to its
row's slot at its position. The tail is one more sequence, bound for the scratch slot, whose output nobody
reads; rows that an admission does not fill are empty sequences (a captured graph's fixed row count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .packed import positions_and_slots, rows_laid_end_to_end, sequences

# Pass sizes (prompt tokens) captured as CUDA graphs: multiples of _FINE_STEP up to _FINE_UNTIL, then of
# _COARSE_STEP up to GRAPH_TOKENS (64 rows of 64-token prompts); past it a pass runs eagerly at its exact size.
_FINE_STEP, _FINE_UNTIL, _COARSE_STEP = 64, 1024, 256
GRAPH_TOKENS = 4096
# The longest sequence a captured pass may hold (its FlashAttention grid is fixed at capture): a prompt of up to
# 64 tokens (PREFILL_GRAPH_TOKENS' largest), or the tail, at most one step long.
GRAPH_LONGEST = 256


def pass_size(tokens: int) -> int:
    """The size of the pass that holds ``tokens`` prompt tokens: the next captured size, or the exact count
    past the last."""
    step = _FINE_STEP if tokens <= _FINE_UNTIL else _COARSE_STEP
    size = -(-max(tokens, 1) // step) * step
    return size if size <= GRAPH_TOKENS else tokens


def pass_sizes() -> tuple[int, ...]:
    """Every captured pass size, ascending."""
    return tuple(range(_FINE_STEP, _FINE_UNTIL + 1, _FINE_STEP)) + tuple(
        range(_FINE_UNTIL + _COARSE_STEP, GRAPH_TOKENS + 1, _COARSE_STEP)
    )


# The index's parts, in the order they lie in one int64 buffer: per token, then per row, then cu.
TOKEN_FIELDS = ("token", "position", "slot", "cross_len")
ROW_FIELDS = ("last", "sot", "row_slot", "row_cross_len")


@dataclass(frozen=True)
class PrefillIndex:
    """Where every token of a packed prefill comes from and goes to (host tensors, int64 unless said):

    token, position, slot, cross_len [T]: each token's id, its position in its row's prompt, its row's slot
    (``scratch`` for the tail) and its row's encoder length (1 for the tail: it reads one position). last, sot,
    row_slot, row_cross_len [rows]: the index of each row's last prompt token and of its <|startoftranscript|>,
    its slot and its encoder length (0 for unused rows; the engine keeps the last two per slot, and they travel
    here so that an admission uploads one buffer).
    cu [rows + 2] (int32): cumulative sequence starts, the tail a sequence of its own, then empty sequences.
    """

    token: Tensor
    position: Tensor
    slot: Tensor
    cross_len: Tensor
    last: Tensor
    sot: Tensor
    row_slot: Tensor
    row_cross_len: Tensor
    cu: Tensor
    bounds: tuple[tuple[int, int], ...]  # (start, end) of every sequence with tokens, the tail included
    longest: int  # the longest sequence (FlashAttention's grid)

    def flat(self) -> np.ndarray:
        """The index as one int64 array: TOKEN_FIELDS, ROW_FIELDS, then cu (what a captured pass's buffer holds)."""
        parts = [getattr(self, name).numpy() for name in (*TOKEN_FIELDS, *ROW_FIELDS)]
        return np.concatenate([*parts, self.cu.numpy().astype(np.int64)])


def pack_prompts(
    prompts: Sequence[Sequence[int]],
    slots: Sequence[int],
    cross_len: Sequence[int],
    sot: Sequence[int],
    *,
    size: int,
    rows: int,
    scratch: int,
) -> PrefillIndex:
    """The index of a pass of ``size`` tokens over ``prompts`` (each at least one token) bound for ``slots``,
    whose windows encoded to ``cross_len`` positions and whose <|startoftranscript|> is at ``sot`` within
    each prompt; ``rows`` >= len(prompts) fixes the row fields' and cu's lengths."""
    lengths = np.asarray([len(p) for p in prompts], dtype=np.int64)
    used = int(lengths.sum())
    if len(prompts) > rows or used > size or (lengths < 1).any():
        raise ValueError(
            f"cannot pack prompts of {lengths.tolist()} tokens into {size} tokens and {rows} rows"
        )
    tail = size - used
    starts, row, local = rows_laid_end_to_end(lengths)
    position, slot = positions_and_slots(local, row, slots, tail, scratch)
    token = np.zeros(size, dtype=np.int64)
    if used:
        token[:used] = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts])
    cross = np.concatenate([np.asarray(cross_len, dtype=np.int64)[row], np.ones(tail, dtype=np.int64)])

    def per_row(values: Sequence[int] | np.ndarray) -> Tensor:  # the admitted rows' values, 0 for unused rows
        out = np.zeros(rows, dtype=np.int64)
        out[: len(values)] = values
        return torch.from_numpy(out)

    cu, bounds, longest = sequences(lengths, size, rows)
    return PrefillIndex(
        token=torch.from_numpy(token),
        position=torch.from_numpy(position),
        slot=torch.from_numpy(slot),
        cross_len=torch.from_numpy(cross),
        last=per_row(starts + lengths - 1),
        sot=per_row(starts + np.asarray(sot, dtype=np.int64)),
        row_slot=per_row(slots),
        row_cross_len=per_row(cross_len),
        cu=cu,
        bounds=bounds,
        longest=longest,
    )


def split_flat(flat: Tensor, size: int, rows: int) -> dict[str, Tensor]:
    """Views of a flat int64 index (``PrefillIndex.flat``'s layout, on any device) by field name."""
    out, offset = {}, 0
    for name in TOKEN_FIELDS:
        out[name], offset = flat[offset : offset + size], offset + size
    for name in ROW_FIELDS:
        out[name], offset = flat[offset : offset + rows], offset + rows
    out["cu"] = flat[offset : offset + rows + 2]
    return out
