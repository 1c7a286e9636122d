"""The Whisper encoder-decoder in plain PyTorch.

Imports nothing above ``voxserve.model`` (principle 1). Caches are passed in, never stored on the module, so the
same weights serve the reference decoder, the batching engine and captured graphs alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelDims
from . import few_rows
from .cache import KVCache
from .layers import DecoderBlock, EncoderBlock, LayerNorm, sinusoids


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state))
        self.layers = nn.ModuleList(
            EncoderBlock(dims.n_audio_state, dims.n_audio_head) for _ in range(dims.n_audio_layer)
        )
        self.ln_post = LayerNorm(dims.n_audio_state)

    def forward(self, mel: Tensor) -> Tensor:
        """mel [B, n_mels, 2*T] -> audio features [B, T, n_audio_state], T <= n_audio_ctx."""
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(
                f"mel has {mel.shape[-1]} frames; the encoder takes at most {2 * self.positional_embedding.shape[0]}"
            )
        # The transposed conv output is channel-major in memory; left so, every residual add and layer norm in
        # the stack runs on strided data (measured: the adds alone took 1.2 of 7.5 ms at batch 1 on an H100).
        x = (x + self.positional_embedding[: x.shape[1]].to(x.dtype)).contiguous()
        for layer in self.layers:
            x = layer(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.n_head = dims.n_text_head
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.n_text_state)
        self.positional_embedding = nn.Parameter(torch.empty(dims.n_text_ctx, dims.n_text_state))
        self.layers = nn.ModuleList(
            DecoderBlock(dims.n_text_state, dims.n_text_head) for _ in range(dims.n_text_layer)
        )
        self.ln = LayerNorm(dims.n_text_state)
        # Optional untied output projection [..., C] -> [..., n_vocab] (e.g. an int8 copy of the embedding, set
        # by ``quant.set_output_projection``); None computes the logits with the token embedding itself.
        self.proj_out: nn.Module | None = None
        # CPU inference only: the embedding transposed to [C, n_vocab], contiguous, keyed by the tensor, its
        # version and storage it was made from, so it is rebuilt whenever the embedding changes. torch's CPU
        # matmul against the row-major embedding (x @ E.T) runs a single-threaded GEMV; the same product with the
        # transposed copy runs multi-threaded, 2.4x faster for tiny's 51865x384 at one row (measured on the
        # 2-core AVX512 bench machine). Costs one more copy of the embedding in host memory. From 2 to
        # few_rows.MAX_ROWS rows, few_rows' form beats both (base, 2 rows: 3.4 ms against 9.8 with this copy), and
        # at one row too when torch runs more than one thread: the one-row tiny fp32 decode step, 2 threads,
        # medians of 6 and 8 alternating rounds (/tmp scratch A/B, 2026-12-06): 7.98 -> 7.49 and 8.00 -> 7.25 ms;
        # with one thread it was slower (8.71 -> 10.03 ms), so one thread keeps this copy.
        self._embedding_t: tuple[Tensor, tuple[int, int, torch.dtype], Tensor] | None = None

    def cross_kv(self, audio_features: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output [B, S, C] -> every layer's cross-attention keys and values, each [L, B, S, C]."""
        k = torch.stack([layer.cross_attn.key(audio_features) for layer in self.layers])
        v = torch.stack([layer.cross_attn.value(audio_features) for layer in self.layers])
        return k, v

    def logits(self, x: Tensor) -> Tensor:
        """Hidden states -> float32 logits over the vocabulary (``proj_out`` when set, else the output
        projection tied to the embedding)."""
        h = self.ln(x)
        if self.proj_out is not None:
            return self.proj_out(h).float()
        weight = self.token_embedding.weight
        if weight.device.type == "cpu" and not (torch.is_grad_enabled() and weight.requires_grad):
            rows = h.numel() // h.shape[-1]
            one_thread_row = rows == 1 and torch.get_num_threads() == 1  # the transposed copy's case
            if (
                0 < rows <= few_rows.MAX_ROWS
                and not one_thread_row
                and weight.dtype == h.dtype == torch.float32
            ):
                return few_rows.linear(h, weight).float()
            return (h @ self._transposed_embedding(h.dtype)).float()
        return (h @ weight.to(x.dtype).T).float()

    def _transposed_embedding(self, dtype: torch.dtype) -> Tensor:
        weight = self.token_embedding.weight
        key = (weight._version, weight.data_ptr(), dtype)
        cached = self._embedding_t
        if cached is None or cached[0] is not weight or cached[1] != key:
            self._embedding_t = cached = (weight, key, weight.detach().to(dtype).T.contiguous())
        return cached[2]

    def forward(self, tokens: Tensor, positions: Tensor, cache: KVCache, kv_len: int) -> Tensor:
        """Decode new tokens against the cache.

        tokens, positions: [B, T] (position of each new token; rows may differ). The new keys/values are written
        into ``cache`` at those positions; attention covers cache slots [0, kv_len) that are <= each token's own
        position. Returns float32 logits [B, T, n_vocab].
        """
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]
        x = self.token_embedding(tokens) + self.positional_embedding[positions]
        x = x.to(cache.self_k.dtype)
        slots = torch.arange(kv_len, device=tokens.device)
        mask = (slots[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, kv_len]
        write = (rows, positions)
        for i, layer in enumerate(self.layers):
            x = layer(
                x, cache.self_k[i], cache.self_v[i], cache.cross_k[i], cache.cross_v[i], write, kv_len, mask
            )
        return self.logits(x)

    def forward_full(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        """Teacher-forced pass over whole sequences: tokens [B, T], audio_features [B, S, C] -> float32
        logits [B, T, n_vocab]. No cache; used for training and for scoring fixed token sequences."""
        x = self._embed(tokens).to(audio_features.dtype)
        for layer in self.layers:
            x = layer.forward_full(
                x, layer.cross_attn.key(audio_features), layer.cross_attn.value(audio_features)
            )
        return self.logits(x)

    def cross_attention_scores(self, tokens: Tensor, audio_features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """As forward_full, also returning every layer's cross-attention scores before softmax.

        tokens [B, T], audio_features [B, S, C] -> (logits [B, T, V], per layer [B, H, T, S] float32). Used for
        word alignment, where the attention pattern itself is needed.
        """
        x = self._embed(tokens).to(audio_features.dtype)
        scores = []
        for layer in self.layers:
            k, v = layer.cross_attn.key(audio_features), layer.cross_attn.value(audio_features)
            x, s = layer.forward_with_cross_scores(x, k, v)
            scores.append(s)
        return self.logits(x), scores

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]


def default_alignment_heads(dims: ModelDims) -> Tensor:
    """All heads in the second half of the decoder, as Whisper does for a checkpoint without its own."""
    heads = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    heads[dims.n_text_layer // 2 :] = True
    return heads


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)
        # Cross-attention heads whose weights follow the audio in time (for word timestamps). Checkpoints
        # carry their own; without one, the default.
        self.register_buffer("alignment_heads", default_alignment_heads(dims), persistent=False)

    def set_alignment_heads(self, heads: list[tuple[int, int]]) -> None:
        mask = torch.zeros_like(self.alignment_heads)
        for layer, head in heads:
            if not (0 <= layer < mask.shape[0] and 0 <= head < mask.shape[1]):
                raise ValueError(
                    f"alignment head ({layer}, {head}) is outside the decoder's {tuple(mask.shape)}"
                )
            mask[layer, head] = True
        self.alignment_heads = mask

    def new_cache(self, batch: int, *, n_audio_ctx: int | None = None) -> KVCache:
        d = self.dims
        p = self.decoder.token_embedding.weight
        return KVCache.allocate(
            d.n_text_layer, batch, d.n_text_ctx, n_audio_ctx or d.n_audio_ctx, d.n_text_state,
            dtype=p.dtype, device=p.device,
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.decoder.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.token_embedding.weight.dtype
