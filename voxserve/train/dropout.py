"""The teacher-forced training pass with dropout, over the weights of an unchanged ``Whisper``.

Whisper itself has no dropout, and voxserve's model stays without it: the inference path (engine, captured
graphs, parity with the reference implementations) must not carry training-only branches. This module repeats
the model's encoder and teacher-forced decoder passes with the modules' own weights and adds the Transformer's
dropout: on every residual branch's output, on the decoder's input embeddings, and optionally on the attention
weights. With every rate at zero it computes what ``Whisper.encoder`` and ``TextDecoder.forward_full`` compute
(a test holds the two in step). It is used only while training and only when a rate is above zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..model.layers import MultiHeadAttention, merge_heads, split_heads
from ..model.whisper import AudioEncoder, TextDecoder


@dataclass(frozen=True)
class Dropout:
    encoder: float = 0.0  # residual dropout in the encoder
    decoder: float = 0.0  # residual and input-embedding dropout in the decoder
    attention: float = 0.0  # dropout on attention weights, encoder and decoder (self and cross)

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder", "attention"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} dropout must be in [0, 1), got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.encoder > 0 or self.decoder > 0 or self.attention > 0


NO_DROPOUT = Dropout()


def _drop(x: Tensor, p: float) -> Tensor:
    return F.dropout(x, p, training=True) if p > 0 else x


def _attend(
    attn: MultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, p: float, *, causal: bool = False
) -> Tensor:
    h = attn.n_head
    out = F.scaled_dot_product_attention(
        split_heads(q, h), split_heads(k, h), split_heads(v, h), dropout_p=p, is_causal=causal
    )
    return attn.out(merge_heads(out))


def encode(encoder: AudioEncoder, mel: Tensor, dropout: Dropout) -> Tensor:
    """As ``AudioEncoder.forward`` (mel [B, n_mels, 2T] -> [B, T, C]), with dropout."""
    x = F.gelu(encoder.conv1(mel.to(encoder.conv1.weight.dtype)))
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)
    x = (x + encoder.positional_embedding[: x.shape[1]].to(x.dtype)).contiguous()
    p, pa = dropout.encoder, dropout.attention
    for layer in encoder.layers:
        h = layer.attn_ln(x)
        x = x + _drop(_attend(layer.attn, layer.attn.query(h), layer.attn.key(h), layer.attn.value(h), pa), p)
        x = x + _drop(layer.fc2(F.gelu(layer.fc1(layer.mlp_ln(x)))), p)
    return encoder.ln_post(x)


def decode_full(decoder: TextDecoder, tokens: Tensor, audio_features: Tensor, dropout: Dropout) -> Tensor:
    """As ``TextDecoder.forward_full`` (tokens [B, T], features [B, S, C] -> float32 logits [B, T, V]), with
    dropout."""
    p, pa = dropout.decoder, dropout.attention
    x = _drop(decoder._embed(tokens), p).to(audio_features.dtype)
    for layer in decoder.layers:
        h = layer.attn_ln(x)
        x = x + _drop(
            _attend(layer.attn, layer.attn.query(h), layer.attn.key(h), layer.attn.value(h), pa, causal=True),
            p,
        )
        ca = layer.cross_attn
        q = ca.query(layer.cross_attn_ln(x))
        x = x + _drop(_attend(ca, q, ca.key(audio_features), ca.value(audio_features), pa), p)
        x = x + _drop(layer.fc2(F.gelu(layer.fc1(layer.mlp_ln(x)))), p)
    return decoder.logits(x)


__all__ = ["NO_DROPOUT", "Dropout", "decode_full", "encode"]
