"""The CPU decode step's decoder layers for one row: a single request decoding alone, the latency case.

A one-row step on the CPU is small: tiny's four decoder layers read 33 MB of weights and 18 MB of cross K/V, and
torch runs each small op in a few microseconds. The general path (``Runner._decoder_layers``) spends most of
its ~85 calls per layer on bookkeeping for many rows: index tensors for the cache writes, runs of slots for
attention, ``few_rows.linear``'s padding, transposes and copies per projection. This path runs the same
arithmetic with about a third of the calls:

- each projection writes its input into row 0 of a kept two-row block (row 1 stays zero) and multiplies
  ``weight @ block.T`` with the bias: few_rows' form (a two-column GEMM streams the weight faster than a GEMV),
  without building the block each time; the output's first column is used in place, as a strided view;
- the cache is written and read through plain indexing of the row's slot, attention through
  ``scaled_dot_product_attention`` on that slot's views, as the general path calls it.

The same products and kernels as the general path; the results agree to float32 rounding, not bit for bit (GELU
of a strided input takes torch's scalar erf, and attention's vectorised sums can split differently for a query
at another address): tests/unit/test_cpu_row.py compares the two paths.

Measured on the 2-core bench machine (fp32, one 30 s request of 100 tokens, both paths alternating in one
process, 8 pairs; ``python3 bench/profile_cpu_row.py --dims tiny|base``): the one-row step 7.58 -> 6.27 ms on
tiny (paired median -1.42 ms; -0.78 and -1.56 in noisier runs), 11.36 -> 9.21 ms on base. More in bench/README's
stop 30 section.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.layers import layer_norm


class _Projection:
    """A Linear applied to one row through a kept [2, in] block whose row 1 is zero."""

    __slots__ = ("weight", "bias", "row", "block_t")

    def __init__(self, weight: Tensor, bias: Tensor | None, block: Tensor) -> None:
        self.weight = weight
        out = weight.shape[0]
        self.bias = (bias if bias is not None else weight.new_zeros(out))[:, None]
        self.row, self.block_t = block[0], block.t()

    def __call__(self, x: Tensor) -> Tensor:
        """x [in], any strides -> [out], a strided view of a fresh [out, 2] product."""
        self.row.copy_(x)
        return torch.addmm(self.bias, self.weight, self.block_t)[:, 0]


class _Layer(NamedTuple):
    attn_ln: nn.LayerNorm
    qkv: _Projection
    out: _Projection
    cross_ln: nn.LayerNorm
    cross_query: _Projection
    cross_out: _Projection
    mlp_ln: nn.LayerNorm
    fc1: _Projection
    fc2: _Projection


class RowLayers:
    """Every decoder layer for one row of the runner's caches (self K/V [L, S, T, C], cross K/V per head
    [L, S, H, T_audio, head_dim]), float32 Linear weights only (see :meth:`build`)."""

    def __init__(
        self,
        decoder: nn.Module,
        qkv: list[tuple[Tensor, Tensor]],
        caches: tuple[Tensor, Tensor, Tensor, Tensor],
    ) -> None:
        self.decoder = decoder
        self.self_k, self.self_v, self.cross_k, self.cross_v = caches
        self.n_head = decoder.n_head
        self.width = decoder.token_embedding.weight.shape[1]
        # One block per input width, shared by the projections of that width: the step uses each product's
        # output before the next projection writes the block again.
        blocks: dict[int, Tensor] = {}

        def proj(weight: Tensor, bias: Tensor | None) -> _Projection:
            inputs = weight.shape[1]
            if inputs not in blocks:
                blocks[inputs] = weight.new_zeros(2, inputs)
            return _Projection(weight, bias, blocks[inputs])

        def linear(m: nn.Linear) -> _Projection:
            return proj(m.weight, m.bias)

        self.layers = [
            _Layer(
                layer.attn_ln,
                proj(*fused),
                linear(layer.attn.out),
                layer.cross_attn_ln,
                linear(layer.cross_attn.query),
                linear(layer.cross_attn.out),
                layer.mlp_ln,
                linear(layer.fc1),
                linear(layer.fc2),
            )
            for layer, fused in zip(decoder.layers, qkv, strict=True)
        ]

    @classmethod
    def build(
        cls,
        decoder: nn.Module,
        qkv: list[tuple[Tensor, Tensor] | None],
        caches: tuple[Tensor, Tensor, Tensor, Tensor],
    ) -> RowLayers | None:
        """The one-row path where it applies: float32 on the CPU, every projection a plain Linear (query, key
        and value fused: ``qkv``), the cross K/V per head. None elsewhere (quantized layers keep the general
        path)."""
        weight = decoder.token_embedding.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or any(f is None for f in qkv):
            return None
        if caches[2].dim() != 5 or caches[2].dtype != torch.float32:
            return None
        for layer in decoder.layers:
            parts = (layer.attn.out, layer.cross_attn.query, layer.cross_attn.out, layer.fc1, layer.fc2)
            if any(type(m) is not nn.Linear or m.weight.dtype != torch.float32 for m in parts):
                return None
        return cls(decoder, qkv, caches)  # type: ignore[arg-type]

    def __call__(self, slot: int, length: int, cross_length: int, token: int) -> Tensor:
        """Run ``token`` at position ``length - 1`` of ``slot`` through every layer, writing its self K/V there
        and attending over the slot's first ``length`` positions and ``cross_length`` audio positions. Returns
        the hidden state [1, C]."""
        dec, h, c = self.decoder, self.n_head, self.width
        pos = length - 1
        x = dec.token_embedding.weight[token] + dec.positional_embedding[pos]
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer_norm(layer.attn_ln, x))
            keys, values = self.self_k[i][slot], self.self_v[i][slot]
            keys[pos] = qkv[c : 2 * c]
            values[pos] = qkv[2 * c :]
            k = keys[:length].view(1, length, h, -1).transpose(1, 2)
            v = values[:length].view(1, length, h, -1).transpose(1, 2)
            a = F.scaled_dot_product_attention(_heads(qkv[:c], h), k, v)
            x = x + layer.out(a.view(c))
            q = _heads(layer.cross_query(layer_norm(layer.cross_ln, x)), h)
            k = self.cross_k[i][slot : slot + 1, :, :cross_length]
            v = self.cross_v[i][slot : slot + 1, :, :cross_length]
            x = x + layer.cross_out(F.scaled_dot_product_attention(q, k, v).view(c))
            x = x + layer.fc2(F.gelu(layer.fc1(layer_norm(layer.mlp_ln, x))))
        return x[None]


def _heads(q: Tensor, n_head: int) -> Tensor:
    """A query column [C] (strided) -> [1, H, 1, head_dim], contiguous: torch's CPU flash attention needs unit
    stride in the last dimension, and a strided query falls back to the math path, which also writes a scaled
    copy of every key (measured: 208 against ~120 us a cross-attention call, tiny, one row)."""
    return q.contiguous().view(1, n_head, 1, -1)
