"""One encoder pass over windows of different lengths, laid end to end ("packed") instead of one padded batch per
length.

Why: live partials encode many short windows of many lengths. Batched per length, an admission ran ~2.8 encoder
passes of ~4 rows each, every row padded to its window bucket and every batch to a power of two (100 streams,
large-v3 fp16, H100, bench/profile_streams.py, stop 18): small, partly padded matrix products. Packed, the
encoder's linear layers (~95% of its work) see every row's positions at once, one pass whatever the mix of
lengths, with no padding but the tail up to the pass's size. Measured against per-length batches in
bench/README.md ("Packed encoder passes"): less device time a row, the same throughput within noise so far.

What keeps each row exactly its own window's encoding: the two convolutions read a row's neighbouring frames
through gather indices that stop at the row's ends (a zero frame beyond them, as the convolutions' zero padding),
positions restart at 0 for each row, and attention runs per row (FlashAttention's variable-length form on CUDA,
one SDPA per row elsewhere). The tail up to the pass's size is one more sequence, of zero frames, whose output
nobody reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.qlinear import fuse_output_features, gelu_linear, norm_linear
from ..model.whisper import AudioEncoder

# Pass sizes (encoder positions) up to which packed passes are captured as CUDA graphs: multiples of
# _FINE_STEP up to _FINE_UNTIL, then of _COARSE_STEP up to GRAPH_POSITIONS; past it a pass runs eagerly at its
# exact size (its matrix products are then long enough that launches are hidden behind them). Each step is
# at most a window (1,500 positions), so the tail is one sequence no longer than any row. Fine up to 8,192:
# admissions at 400 live streams pack ~4,000-5,000 positions, where 1,024-position steps left a tail of ~500 on
# average (a pass of 4,100 positions ran as 5,120, 20% of it tail, in a scratch breakdown on an H100, stop 25,
# where the matrix products already ran at ~630 TFLOPS: the tail was the pass's largest waste).
_FINE_STEP, _FINE_UNTIL = 256, 8192
_COARSE_STEP = 1024
GRAPH_POSITIONS = 16384


def pass_sizes(n_ctx: int) -> tuple[int, ...]:
    """Every captured pass size, ascending, for a model of ``n_ctx`` encoder positions a window."""
    sizes, size = [], 0
    while True:
        size = pass_size(size + 1, n_ctx)
        if size > GRAPH_POSITIONS or (sizes and size == sizes[-1]):
            return tuple(sizes)
        sizes.append(size)


def pass_size(positions: int, n_ctx: int) -> int:
    """The size of the pass that holds ``positions`` encoder positions: the next captured size (steps never
    longer than a window, so the tail is one sequence a window long at most), or the exact count past the
    last."""
    step = min(_FINE_STEP if positions <= _FINE_UNTIL else _COARSE_STEP, n_ctx)
    size = -(-positions // step) * step
    return size if size <= GRAPH_POSITIONS else positions


@dataclass(frozen=True)
class PackedIndex:
    """Where every frame and position of a packed pass comes from and goes to (host tensors, int64):

    conv1 [2P, 3]: the packed mel frames the first convolution reads for each output frame (previous, own,
    next); 2P, one past the last frame, is a zero frame. conv2 [P, 3]: the first convolution's outputs the
    second (stride 2) reads for each position; 2P is a zero row. position [P]: each position's index within its
    row (the positional embedding's row, and where its cross K/V goes in the slot). slot [P]: the slot each
    position's cross K/V goes to (``scratch`` for the tail). cu [rows + 2]: cumulative sequence starts, the tail
    a sequence of its own, then empty sequences up to a fixed count (a captured graph's shape).
    """

    conv1: Tensor
    conv2: Tensor
    position: Tensor
    slot: Tensor
    cu: Tensor
    bounds: tuple[tuple[int, int], ...]  # (start, end) of every sequence with positions, the tail included
    longest: int  # the longest sequence (FlashAttention's grid)


def pack_index(
    frames: Sequence[int], slots: Sequence[int], *, size: int, rows: int, scratch: int, n_ctx: int
) -> PackedIndex:
    """The index of a pass of ``size`` positions over windows of ``frames`` mel frames (even, each at most
    2 * n_ctx), their cross K/V bound for ``slots``; ``rows`` >= len(frames) fixes cu's length. Built with
    numpy: it runs on the engine's thread before every packed pass (~10x faster than the same in torch ops)."""
    lengths = np.asarray(frames, dtype=np.int64) // 2
    used = int(lengths.sum())
    if len(frames) > rows or used > size or any(f % 2 or f < 2 or f > 2 * n_ctx for f in frames):
        raise ValueError(
            f"cannot pack windows of {list(frames)} frames into {size} positions and {rows} rows"
        )
    tail = size - used
    if tail > n_ctx:
        raise ValueError(f"a pass of {size} positions leaves a tail of {tail} > {n_ctx} positions")
    starts, row, local = rows_laid_end_to_end(lengths)
    position, slot = positions_and_slots(local, row, slots, tail, scratch)
    zero = 2 * size  # the zero frame / zero row past the last

    # frame i of a row sits at 2 * start + i; its neighbours exist within [0, 2 * length)
    frame_row = np.repeat(np.arange(len(frames)), 2 * lengths)
    frame_local = np.arange(2 * used) - 2 * starts[frame_row]
    conv1 = np.full((2 * size, 3), zero, dtype=np.int64)
    conv2 = np.full((size, 3), zero, dtype=np.int64)
    for k, shift in enumerate((-1, 0, 1)):
        i = frame_local + shift
        conv1[: 2 * used, k] = np.where(
            (i >= 0) & (i < 2 * lengths[frame_row]), 2 * starts[frame_row] + i, zero
        )
        i = 2 * local + shift  # the stride-2 convolution's output j reads frames 2j - 1, 2j, 2j + 1
        conv2[:used, k] = np.where((i >= 0) & (i < 2 * lengths[row]), 2 * starts[row] + i, zero)

    cu, bounds, longest = sequences(lengths, size, rows)
    return PackedIndex(
        conv1=torch.from_numpy(conv1),
        conv2=torch.from_numpy(conv2),
        position=torch.from_numpy(position),
        slot=torch.from_numpy(slot),
        cu=cu,
        bounds=bounds,
        longest=longest,
    )


def rows_laid_end_to_end(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``lengths`` positions end to end: each row's start, each position's row and its index within it."""
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(len(lengths)), lengths)
    return starts, row, np.arange(int(lengths.sum())) - starts[row]


def positions_and_slots(
    local: np.ndarray, row: np.ndarray, slots: Sequence[int], tail: int, scratch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each position's index within its row and its row's slot, then the tail's (positions from 0, the scratch
    slot)."""
    position = np.concatenate([local, np.arange(tail)])
    slot = np.concatenate([np.asarray(slots, dtype=np.int64)[row], np.full(tail, scratch)])
    return position, slot


def sequences(lengths: np.ndarray, size: int, rows: int) -> tuple[Tensor, tuple[tuple[int, int], ...], int]:
    """Where sequences of ``lengths`` laid end to end in a pass of ``size`` lie: cu [rows + 2] (int32) of
    cumulative starts, the rest of the pass (the tail) a sequence of its own, then empty sequences up to the
    fixed count; the (start, end) of every sequence that has positions; the longest one's length."""
    cu = [0, *np.cumsum(lengths).tolist()]
    cu += [size] if size > cu[-1] else []
    cu += [size] * (rows + 2 - len(cu))
    bounds = tuple((a, b) for a, b in zip(cu, cu[1:], strict=False) if b > a)
    return torch.tensor(cu, dtype=torch.int32), bounds, max(b - a for a, b in bounds)


class PackedInputs:
    """A captured pass's inputs in one int32 buffer on the device, and its pinned host twin. Filled on the host
    with numpy and sent in one copy. Why: the engine's thread shares the interpreter with the live sessions and
    their log-mel threads, and every torch call releases and then waits to take back the GIL; sending the
    index and mels tensor by tensor (pinning each, then copying each into the graph's inputs) took ~50 ms of
    host time per packed admission at 200 streams (large-v3 fp16, H100, bench/profile_streams.py) against
    ~15 ms of device time. Mels already on the device (made there from audio, engine/mels.py) are copied there
    instead, and only the index travels: the mel region comes last.

    Every pass size's inputs may share one pair of buffers (``share``: inputs of a pass size at least as large),
    since passes replay one at a time on one stream: each size's own buffers took ~176 MB of device and of pinned
    memory for large-v3's 28 sizes of stop 19 (by arithmetic), shared they take the largest size's ~18 MB."""

    def __init__(
        self, size: int, rows: int, n_mels: int, device: torch.device, share: PackedInputs | None = None
    ) -> None:
        self.shapes = {
            "conv1": (2 * size, 3),
            "conv2": (size, 3),
            "position": (size,),
            "slot": (size,),
            "cu": (rows + 2,),
            "mel": (n_mels, 2 * size + 1),  # float32 bits; frames side by side, as log-mels come
        }
        self.regions: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            self.regions[name] = (offset, offset + n)
            offset += n
        if share is not None:
            if share.device.numel() < offset or share.device.device != torch.device(device):
                raise ValueError("inputs can share only the buffers of a larger pass size on the same device")
            self.device, self.host, self._host, self._sent = (
                share.device,
                share.host,
                share._host,
                share._sent,
            )
            return
        cuda = device.type == "cuda"
        self.device = torch.zeros(offset, dtype=torch.int32, device=device)
        self.host = torch.zeros(offset, dtype=torch.int32, pin_memory=cuda)
        self._host = self.host.numpy()
        self._sent = torch.cuda.Event() if cuda else None  # the last copy out of the host buffer

    def on_device(self) -> dict[str, Tensor]:
        """Views of the device buffer: mel float32 [n_mels, 2P + 1], the index int32 in ``PackedIndex``'s shapes."""
        views = {}
        for name, (a, b) in self.regions.items():
            part = self.device[a:b]
            views[name] = (part.view(torch.float32) if name == "mel" else part).view(self.shapes[name])
        return views

    def send(self, mels: Sequence[Tensor], index: PackedIndex) -> None:
        """Fill the host buffer with ``mels`` [n_mels, frames] side by side (zeros after them) and ``index``, and
        queue its copy to the device buffer on the current stream; mels on the buffer's (CUDA) device are
        copied on the device after the index's copy."""
        if self._sent is not None and not self._sent.query():
            self._sent.synchronize()  # the previous copy may still be reading the host buffer
        for name in ("conv1", "conv2", "position", "slot", "cu"):
            self._region(name)[...] = getattr(index, name).numpy()
        frames = sum(m.shape[-1] for m in mels)
        on_device = self.device.is_cuda and bool(mels) and all(m.is_cuda for m in mels)
        end = self.regions["mel"][0 if on_device else 1]  # this size's regions only (buffers may be shared)
        if not on_device:
            host_mel = self._region("mel").view(np.float32)
            if mels:  # a capture's pass may be all tail
                np.concatenate([_host_array(m) for m in mels], axis=1, out=host_mel[:, :frames])
            host_mel[:, frames:] = 0
        self.device[:end].copy_(self.host[:end], non_blocking=True)
        if on_device:
            mel = self.on_device()["mel"]
            mel[:, :frames] = torch.cat([m.float() for m in mels], dim=1)
            mel[:, frames:] = 0
        if self._sent is not None:
            self._sent.record()

    def _region(self, name: str) -> np.ndarray:
        a, b = self.regions[name]
        return self._host[a:b].reshape(self.shapes[name])


def _host_array(mel: Tensor) -> np.ndarray:
    if mel.device.type == "cpu" and mel.dtype == torch.float32:
        return mel.numpy()
    return mel.detach().float().cpu().numpy()


def stem_weights(encoder: AudioEncoder) -> tuple[Tensor, Tensor]:
    """The two convolutions' kernels as matrices over (tap, channel): [C, 3 * n_mels] and [C, 3 * C], matching
    the [previous, own, next] order of ``PackedIndex`` gathers."""
    return tuple(  # type: ignore[return-value]
        conv.weight.permute(0, 2, 1).reshape(conv.weight.shape[0], -1).contiguous()
        for conv in (encoder.conv1, encoder.conv2)
    )


def flash_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether attention runs as one FlashAttention variable-length call (CUDA, fp16/bf16): only then can a
    packed pass be captured as a CUDA graph, since elsewhere its per-sequence loop is laid out on the host."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


class Sequences(Protocol):
    """Where a packed pass's sequences lie: ``bounds`` (start, end) of each, ``longest`` the longest's length."""

    bounds: tuple[tuple[int, int], ...]
    longest: int


def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, n_head: int, index: Sequences, cu: Tensor, *, causal: bool = False
) -> Tensor:
    """Self-attention of each packed sequence over itself (``causal``: each position over itself and the ones
    before it): q, k, v [P, C] -> [P, C]. On CUDA in fp16/bf16 one FlashAttention variable-length call over
    ``cu`` (device, int32); elsewhere one SDPA per sequence."""
    p, c = q.shape
    d = c // n_head
    if flash_varlen(q.device, q.dtype):
        out = torch.ops.aten._flash_attention_forward(
            q.view(p, n_head, d),
            k.view(p, n_head, d),
            v.view(p, n_head, d),
            cu,
            cu,
            index.longest,
            index.longest,
            0.0,
            causal,
            False,
        )[0]
        return out.reshape(p, c)
    out = torch.empty_like(q)
    for a, b in index.bounds:
        heads = [x[a:b].reshape(b - a, n_head, d).transpose(0, 1) for x in (q, k, v)]
        out[a:b] = F.scaled_dot_product_attention(*heads, is_causal=causal).transpose(0, 1).reshape(b - a, c)
    return out


def qkv_projections(encoder: AudioEncoder) -> list[nn.Module | None]:
    """Each encoder layer's query, key and value projections as one module (qlinear.fuse_output_features: one
    GEMM, and in fp8 one quantization of the normed input), or None where they do not fuse. The layers' own
    projections become views of the fused weights."""
    return [fuse_output_features((a.query, a.key, a.value)) for a in (layer.attn for layer in encoder.layers)]


def encode_packed(
    encoder: AudioEncoder,
    stem: tuple[Tensor, Tensor],
    mel: Tensor,
    index: PackedIndex,
    device_index: dict[str, Tensor],
    qkv: Sequence[nn.Module | None] | None = None,
) -> Tensor:
    """The encoder over packed mel frames ``mel`` [2P + 1, n_mels] (row 2P zero) -> features [P, C].
    ``device_index``: ``index``'s conv1, conv2, position and cu (int32) on the device. ``qkv``: the layers'
    fused projections (``qkv_projections``; None: each projection on its own). Layer norms and the GELU go
    through qlinear's ``norm_linear`` / ``gelu_linear`` (folded into fp8 Linears' input quantization only with
    ``qlinear.FOLD_INTO_FP8``)."""
    w1, w2 = stem
    x = F.gelu(F.linear(mel[device_index["conv1"]].flatten(1), w1, encoder.conv1.bias))
    x = torch.cat([x, x.new_zeros(1, x.shape[1])])  # the zero row past the last frame
    x = F.gelu(F.linear(x[device_index["conv2"]].flatten(1), w2, encoder.conv2.bias))
    x = x + encoder.positional_embedding[device_index["position"]].to(x.dtype)
    for layer, fused in zip(encoder.layers, qkv or [None] * len(encoder.layers), strict=True):
        attn = layer.attn
        if fused is None:
            h = layer.attn_ln(x)
            q, k, v = attn.query(h), attn.key(h), attn.value(h)
        else:
            q, k, v = norm_linear(layer.attn_ln, x, fused).chunk(3, dim=-1)
        x = x + attn.out(varlen_attention(q, k, v, attn.n_head, index, device_index["cu"]))
        x = x + gelu_linear(norm_linear(layer.mlp_ln, x, layer.fc1), layer.fc2)
    return encoder.ln_post(x)
