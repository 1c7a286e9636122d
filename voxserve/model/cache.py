"""Preallocated key/value caches for the decoder, written by index (principle 2).

Self-attention keys/values live in [n_layer, batch, n_text_ctx, n_state] buffers that each decode step writes at
its own positions; cross-attention keys/values are computed once per request from the encoder output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVCache:
    self_k: Tensor  # [L, B, n_text_ctx, C]
    self_v: Tensor
    cross_k: Tensor  # [L, B, n_audio_ctx, C]
    cross_v: Tensor

    @classmethod
    def allocate(
        cls,
        n_layer: int,
        batch: int,
        n_text_ctx: int,
        n_audio_ctx: int,
        n_state: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        def empty(t: int) -> Tensor:
            return torch.zeros(n_layer, batch, t, n_state, dtype=dtype, device=device)

        return cls(empty(n_text_ctx), empty(n_text_ctx), empty(n_audio_ctx), empty(n_audio_ctx))

    @property
    def batch_size(self) -> int:
        return self.self_k.shape[1]

    def reorder(self, source_rows: Tensor) -> None:
        """Row i of the self-attention cache becomes old row ``source_rows[i]`` (beam search reshuffles
        hypotheses). Cross-attention rows are left alone: beams only ever take rows from their own audio's
        group, whose cross keys/values are identical."""
        for t in (self.self_k, self.self_v):
            t.copy_(t.index_select(1, source_rows))
