"""Building blocks of the Whisper transformer: norms, attention and residual blocks.

Plain PyTorch with no knowledge of tokens, text or caches beyond the tensors handed in (principle 1).
Layer norm and softmax run in float32 whatever the weight dtype (principle 9). The MLPs call their Linears
through qlinear's ``norm_linear`` / ``gelu_linear``: plain ``fc2(gelu(fc1(norm(x))))``, or with
``qlinear.FOLD_INTO_FP8`` the norm and GELU folded into fp8 Linears' input quantization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .qlinear import gelu_linear, norm_linear


class LayerNorm(nn.LayerNorm):
    """Layer norm whose statistics are computed in float32 for half-precision input (principle 9).

    PyTorch's layer-norm kernels already accumulate half and bfloat16 input in float32 and round only the
    output, which is what Whisper's cast-normalise-cast does; calling them directly saves two full passes over
    the activations (measured: the cast version made the large-v3 encoder markedly slower on an H100).
    """

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(self, x)


def layer_norm(ln: nn.LayerNorm, x: Tensor) -> Tensor:
    """``ln(x)`` for a LayerNorm above (or torch's) without the module call's overhead, for the decode step's hot
    loops: the same kernel, straight on half-precision input, which equals the model's cast-normalise-cast."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed encoder positions: [length, channels], sines then cosines."""
    if channels % 2:
        raise ValueError("sinusoidal embedding needs an even number of channels")
    half = channels // 2
    log_step = math.log(max_timescale) / (half - 1)
    inv_timescales = torch.exp(-log_step * torch.arange(half, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """[B, T, C] -> [B, H, T, C/H]."""
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled attention logits in float32, before softmax: q [B,H,Tq,D], k [B,H,Tk,D] -> [B,H,Tq,Tk].

    Used where the attention pattern itself is wanted (word alignment normalises it over the audio frames that
    hold speech, so it needs the scores, not probabilities over the whole window); the fast path uses SDPA.
    """
    return (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool = False) -> Tensor:
        """q [B,Tq,C]; k, v [B,Tk,C] (possibly strided cache views); mask [B,1,Tq,Tk] bool or None;
        ``causal`` lets position i see keys 0..i (a whole sequence at once, no cache)."""
        h = self.n_head
        out = F.scaled_dot_product_attention(
            split_heads(q, h), split_heads(k, h), split_heads(v, h), attn_mask=mask, is_causal=causal
        )
        return self.out(merge_heads(out))


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.fc1 = nn.Linear(n_state, 4 * n_state)
        self.fc2 = nn.Linear(4 * n_state, n_state)
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn_ln(x)
        x = x + self.attn.attend(self.attn.query(h), self.attn.key(h), self.attn.value(h), None)
        return x + gelu_linear(norm_linear(self.mlp_ln, x, self.fc1), self.fc2)


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head)
        self.cross_attn_ln = LayerNorm(n_state)
        self.fc1 = nn.Linear(n_state, 4 * n_state)
        self.fc2 = nn.Linear(4 * n_state, n_state)
        self.mlp_ln = LayerNorm(n_state)

    def self_attend(
        self,
        x: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        write: tuple[Tensor, Tensor],
        kv_len: int,
        mask: Tensor,
    ) -> Tensor:
        """Residual self-attention over new tokens x [B,T,C].

        self_k/self_v: this layer's cache [B, n_text_ctx, C]; the new keys/values are written at ``write`` =
        (row index [B,1], positions [B,T]) before attending over the first ``kv_len`` slots under ``mask``
        [B,1,T,kv_len].
        """
        h = self.attn_ln(x)
        self_k[write] = self.attn.key(h).to(self_k.dtype)
        self_v[write] = self.attn.value(h).to(self_v.dtype)
        return x + self.attn.attend(self.attn.query(h), self_k[:, :kv_len], self_v[:, :kv_len], mask)

    def mlp(self, x: Tensor) -> Tensor:
        return x + gelu_linear(norm_linear(self.mlp_ln, x, self.fc1), self.fc2)

    def forward_full(self, x: Tensor, cross_k: Tensor, cross_v: Tensor) -> Tensor:
        """Whole sequences x [B,T,C] at once with causal self-attention and no cache (training, scoring)."""
        h = self.attn_ln(x)
        x = x + self.attn.attend(self.attn.query(h), self.attn.key(h), self.attn.value(h), None, causal=True)
        x = x + self.cross_attn.attend(self.cross_attn.query(self.cross_attn_ln(x)), cross_k, cross_v, None)
        return self.mlp(x)

    def forward(
        self,
        x: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        write: tuple[Tensor, Tensor],
        kv_len: int,
        mask: Tensor,
    ) -> Tensor:
        """One decoder layer; cross_k/cross_v are the precomputed encoder keys/values [B, S, C]."""
        x = self.self_attend(x, self_k, self_v, write, kv_len, mask)
        x = x + self.cross_attn.attend(self.cross_attn.query(self.cross_attn_ln(x)), cross_k, cross_v, None)
        return self.mlp(x)

    def forward_with_cross_scores(self, x: Tensor, cross_k: Tensor, cross_v: Tensor) -> tuple[Tensor, Tensor]:
        """As forward_full, with cross-attention computed explicitly so that its float32 scores before softmax
        [B,H,T,S] come back too."""
        h = self.attn_ln(x)
        x = x + self.attn.attend(self.attn.query(h), self.attn.key(h), self.attn.value(h), None, causal=True)
        n = self.cross_attn.n_head
        q = split_heads(self.cross_attn.query(self.cross_attn_ln(x)), n)
        scores = attention_scores(q, split_heads(cross_k, n))
        w = scores.softmax(dim=-1).to(x.dtype)
        x = x + self.cross_attn.out(merge_heads(w @ split_heads(cross_v, n)))
        return self.mlp(x), scores
