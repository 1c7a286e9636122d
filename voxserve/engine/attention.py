"""Decode-step attention: one new query per row against that row's slot of a KV cache.

Rows of a continuous batch live in arbitrary slots of the cache and have different lengths, so the kernel reads
K/V through a slot index and stops at each row's length: no gather copy of the cache, no padding to the longest
row. On CUDA this is a Triton split-K "flash-decoding" kernel (each (row, head) is split across several
programs so a batch of one still fills the GPU, then the partial softmaxes are merged); elsewhere an equivalent
PyTorch path. Shapes: q [B, H, D]; caches [S, T, H*D]; rows, lengths [B] int64; output [B, H*D]. Int8 caches
(engine/kv8.py) come with float32 scales [S, H, T], one per (slot, head, position).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kv8, pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build needs no Triton
    triton = None


def decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    rows: Tensor,
    lengths: Tensor,
    *,
    splits: int = 1,
    block_n: int = 64,
    num_warps: int = 4,
    scales: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """softmax(q K^T / sqrt(D)) V over positions [0, length) of each row's slot; with ``scales`` (the key and
    value caches' scales [S, H, T]) the caches hold int8 values (engine/kv8.py)."""
    if q.is_cuda and triton is not None:
        return _triton_decode_attention(
            q, k_cache, v_cache, rows, lengths, splits, block_n, num_warps, scales
        )
    return reference_decode_attention(q, k_cache, v_cache, rows, lengths, scales)


def decode_self_attention(
    qkv: Tensor, k_cache: Tensor, v_cache: Tensor, rows: Tensor, lengths: Tensor, n_head: int
) -> Tensor:
    """A decode step's self-attention in one launch: each row's new key and value (from qkv [B, 3C], query, key,
    value side by side) are written into its slot at position length - 1, then its query attends over positions
    [0, length). Output [B, C]. On CUDA one Triton program per (row, head), unsplit: self-attention rows are
    short (at most n_text_ctx) and this saves the cache-write and merge launches."""
    b, c3 = qkv.shape
    c = c3 // 3
    if qkv.is_cuda and triton is not None:
        if qkv.stride(1) != 1 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
            raise ValueError("decode_self_attention needs the feature dimension contiguous")
        out = torch.empty(b, c, dtype=qkv.dtype, device=qkv.device)
        d = c // n_head
        launch = pdl.launch_options(qkv.device, b)
        _self_step_kernel[(b, n_head)](
            qkv, k_cache, v_cache, rows, lengths, out,
            qkv.stride(0), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
            d**-0.5, C=c, D=d, BLOCK_N=64, PDL=bool(launch), num_warps=4, **launch,
        )  # fmt: skip
        return out
    q, k, v = qkv.chunk(3, dim=-1)
    write_at = rows * k_cache.shape[1] + lengths - 1
    k_cache.view(-1, c).index_copy_(0, write_at, k)
    v_cache.view(-1, c).index_copy_(0, write_at, v)
    return reference_decode_attention(q.reshape(b, n_head, c // n_head), k_cache, v_cache, rows, lengths)


def reference_decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    rows: Tensor,
    lengths: Tensor,
    scales: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The plain PyTorch definition (gathers each row's slot, dequantizes it where ``scales`` are given, masks
    positions past its length)."""
    b, h, d = q.shape
    t = k_cache.shape[1]
    k, v = k_cache[rows], v_cache[rows]
    if scales is not None:
        k, v = (kv8.dequantize(x, scale[rows], q.dtype) for x, scale in zip((k, v), scales, strict=True))
    k = k.view(b, t, h, d).transpose(1, 2)
    v = v.view(b, t, h, d).transpose(1, 2)
    mask = (torch.arange(t, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask)
    return out.reshape(b, h * d)


def choose_splits(batch: int, heads: int, max_len: int, n_sm: int) -> int:
    """Enough programs to occupy every multiprocessor a few times over, each keeping a useful run of keys."""
    want = max(1, math.ceil(4 * n_sm / (batch * heads)))
    most = max(1, max_len // 64)
    return 1 << min(int(math.log2(want)), int(math.log2(most)), 5) if want > 1 else 1


if triton is not None:

    @triton.jit
    def _partial_kernel(
        Q, K, V, Rows, Lengths, Acc, Stats, Out, KScale, VScale,
        stride_qb, stride_qh, stride_ks, stride_kt, stride_vs, stride_vt,
        scale,
        H: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
        PDL: tl.constexpr, SCALED: tl.constexpr, T: tl.constexpr,
    ):  # fmt: skip
        if PDL:
            pdl.wait_for_previous()
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        slot = tl.load(Rows + b)
        length = tl.load(Lengths + b)
        start = s * CHUNK
        end = tl.minimum(start + CHUNK, length)
        d = tl.arange(0, D)
        q = tl.load(Q + b * stride_qb + h * stride_qh + d).to(tl.float32) * scale
        scale_base = (slot.to(tl.int64) * H + h) * T  # int8 caches: their scales [S, H, T]
        k_base = K + slot.to(tl.int64) * stride_ks + h * D
        v_base = V + slot.to(tl.int64) * stride_vs + h * D
        m_i = tl.full((), float("-inf"), tl.float32)
        l_i = tl.zeros((), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        for i in range(0, tl.cdiv(CHUNK, BLOCK_N)):
            n0 = start + i * BLOCK_N
            if n0 < end:  # self-attention rows are mostly far shorter than the context: skip the empty tiles
                n = n0 + tl.arange(0, BLOCK_N)
                valid = n < end
                k = tl.load(k_base + n[:, None] * stride_kt + d[None, :], mask=valid[:, None], other=0.0)
                scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
                if SCALED:  # each position's key scale multiplies its score
                    scores = scores * tl.load(KScale + scale_base + n, mask=valid, other=0.0)
                scores = tl.where(valid, scores, -float("inf")).to(tl.float32)
                m_new = tl.maximum(m_i, tl.max(scores, axis=0)).to(tl.float32)
                p = tl.exp(scores - m_new)
                alpha = tl.exp(m_i - m_new)
                v = tl.load(v_base + n[:, None] * stride_vt + d[None, :], mask=valid[:, None], other=0.0)
                pv = p
                if SCALED:  # and its value scale its weight in the sum (not in the normaliser)
                    pv = p * tl.load(VScale + scale_base + n, mask=valid, other=0.0)
                acc = (acc * alpha + tl.sum(pv[:, None] * v.to(tl.float32), axis=0)).to(tl.float32)
                l_i = (l_i * alpha + tl.sum(p, axis=0)).to(tl.float32)
                m_i = m_new
        if SPLITS == 1:  # nothing to merge: finish here and save a launch
            tl.store(Out + (b * H + h) * D + d, (acc / l_i).to(Out.dtype.element_ty))
        else:
            part = (b * H + h) * SPLITS + s
            tl.store(Acc + part * D + d, acc)
            tl.store(Stats + part * 2, m_i)
            tl.store(Stats + part * 2 + 1, l_i)

    @triton.jit
    def _self_step_kernel(
        QKV, K, V, Rows, Lengths, Out,
        stride_qkv, stride_ks, stride_kt, stride_vs, stride_vt,
        scale,
        C: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:
            pdl.wait_for_previous()
        b = tl.program_id(0)
        h = tl.program_id(1)
        slot = tl.load(Rows + b).to(tl.int64)
        pos = tl.load(Lengths + b) - 1  # the new token's position
        d = tl.arange(0, D)
        row = QKV + b * stride_qkv + h * D
        q = tl.load(row + d).to(tl.float32) * scale
        k_new = tl.load(row + C + d)
        v_new = tl.load(row + 2 * C + d)
        k_base = K + slot * stride_ks + h * D
        v_base = V + slot * stride_vs + h * D
        tl.store(k_base + pos * stride_kt + d, k_new)
        tl.store(v_base + pos * stride_vt + d, v_new)
        m_i = tl.full((), float("-inf"), tl.float32)
        l_i = tl.zeros((), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        for n0 in range(0, pos + 1, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            # Earlier positions from the cache; the new one from registers, so no program reads what another
            # (or this one) is writing.
            old = (n < pos)[:, None]
            new = (n == pos)[:, None]
            k = tl.load(k_base + n[:, None] * stride_kt + d[None, :], mask=old, other=0.0)
            k = tl.where(new, k_new[None, :], k)
            scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
            scores = tl.where(n <= pos, scores, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=0))
            p = tl.exp(scores - m_new)
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_base + n[:, None] * stride_vt + d[None, :], mask=old, other=0.0)
            v = tl.where(new, v_new[None, :], v)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(Out + b * C + h * D + d, (acc / l_i).to(Out.dtype.element_ty))

    @triton.jit
    def _merge_kernel(
        Acc, Stats, Out, H: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr
    ):
        if PDL:
            pdl.wait_for_previous()
        b = tl.program_id(0)
        h = tl.program_id(1)
        base = (b * H + h) * SPLITS
        s = tl.arange(0, SPLITS)
        m = tl.load(Stats + (base + s) * 2)
        l_ = tl.load(Stats + (base + s) * 2 + 1)
        m_max = tl.max(m, axis=0)
        w = tl.where(m > float("-inf"), tl.exp(m - m_max), 0.0)
        d = tl.arange(0, D)
        acc = tl.load(Acc + (base + s)[:, None] * D + d[None, :])
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_ * w, axis=0)
        tl.store(Out + (b * H + h) * D + d, out.to(Out.dtype.element_ty))


def _triton_decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    rows: Tensor,
    lengths: Tensor,
    splits: int,
    block_n: int = 64,
    num_warps: int = 4,
    scales: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    b, h, d = q.shape
    t = k_cache.shape[1]
    if k_cache.stride(2) != 1 or v_cache.stride(2) != 1 or q.stride(2) != 1:
        raise ValueError("decode_attention needs the head dimension contiguous")
    if (scales is not None) != (k_cache.dtype == torch.int8):
        raise ValueError("decode_attention takes scales exactly when the caches are int8 (engine/kv8.py)")
    if scales is not None and any(
        x.shape != (k_cache.shape[0], h, t) or x.stride() != (h * t, t, 1) for x in scales
    ):
        raise ValueError("decode_attention needs contiguous [slots, heads, positions] scales")
    chunk = math.ceil(t / splits)
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    acc = torch.empty(b, h, splits, d, dtype=torch.float32, device=q.device) if splits > 1 else out
    stats = torch.empty(b, h, splits, 2, dtype=torch.float32, device=q.device) if splits > 1 else out
    launch = pdl.launch_options(q.device, b)
    k_scale, v_scale = scales if scales is not None else (out, out)  # unread without SCALED
    _partial_kernel[(b, h, splits)](
        q, k_cache, v_cache, rows, lengths, acc, stats, out, k_scale, v_scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        d**-0.5,
        H=h, D=d, SPLITS=splits, CHUNK=chunk, BLOCK_N=block_n, PDL=bool(launch), SCALED=scales is not None,
        T=t, num_warps=num_warps, **launch,
    )  # fmt: skip
    if splits > 1:
        _merge_kernel[(b, h)](acc, stats, out, H=h, D=d, SPLITS=splits, PDL=bool(launch), **launch)
    return out.view(b, h * d)
