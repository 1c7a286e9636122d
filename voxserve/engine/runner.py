"""The engine's device work: slot caches, encoding, prefill, and the decode step (CUDA-graph captured).

A slot holds one request's decoder state: its self-attention K/V for up to n_text_ctx tokens, its
cross-attention K/V (computed once from the encoder output at admission) and its policy state. A decode step
runs one token for any set of slots; rows are padded to the next batch bucket with a scratch slot, so each
bucket is one fixed-shape function, captured once as a CUDA graph and replayed. Inside a step nothing reads
back to the host; the caller copies the new tokens out once. On the CPU, where nothing is captured, the step
runs exactly the active rows and attends through views of the cache instead (``_step_cpu``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..model import few_rows
from ..model.layers import layer_norm, merge_heads, split_heads
from ..model.qlinear import Int8WeightOnlyLinear, fuse_output_features, gelu_linear, norm_linear
from ..model.whisper import Whisper
from . import cpu_row, fused, kv8, packed, packed_prefill
from .attention import choose_splits, decode_attention, decode_self_attention
from .audio_cache import AudioCache
from .mels import batched_log_mels, window_mels
from .policy import PolicyState
from .scatter import scatter_rows
from .transfer import upload, upload_together
from .types import AudioWindow, RowSpec

# Attention kernels for the prefill, whose shapes change with every admission (rows, prompt length, encoder
# length). Not cuDNN's: it plans each new shape on the host (profiled on an H200 in the live stream bench:
# 2.4 ms of CPU per call, 151 of an admission's 233 ms of CPU time over 64 calls), where flash and
# memory-efficient attention launch at once.
_PREFILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Prompt lengths (tokens) the prefill is captured for (at warm-up, or at first use), at each admission batch
# bucket; a prompt is padded on the right up to the next (causal attention keeps the padding out of its positions,
# and the decode steps overwrite its K/V). 4 holds Whisper's usual prompt, <|startoftranscript|> <|language|>
# <|task|> <|notimestamps|>; the longer ones hold a live partial's committed words (forced as a prefix) and
# short previous-text prompts. Eager, such a prefill is ~800 small launches: in the live stream bench at 100
# streams (large-v3 fp16, H100, bench/profile_streams.py) it took 50 ms of host time in each 163 ms admission.
# Prompts longer than the last bucket run eagerly.
PREFILL_GRAPH_TOKENS = (4, 8, 16, 32, 64)


_Out = TypeVar("_Out")
# a captured prefill: the graph, its input facts [4, b] and tokens [b, t], its outputs (logits, no-speech)
_PrefillGraph = tuple[torch.cuda.CUDAGraph, Tensor, Tensor, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Admitted:
    slot: int
    token: int  # the first sampled token
    done: bool
    sum_logprob: float
    no_speech_prob: float
    language_token: int | None = None
    language_probs: tuple[float, ...] | None = None


@dataclass
class Launched:
    """A decode step queued by ``Runner.launch``: its slots, and its results once ``collect`` has waited."""

    slots: list[int]
    sample: bool
    results: tuple[list[int], list[bool], list[float]] | None = None  # the CPU's, ready at launch
    packed: Tensor | None = None  # CUDA: [3, n] float64 in pinned memory, filled when ``ready`` completes
    ready: torch.cuda.Event | None = None


@dataclass
class PendingAdmission:
    """An admission queued by ``Runner.launch_admission``: its first tokens are read by ``finish_admission``
    once ``ready`` completes (CUDA; on the CPU they are there at once)."""

    slots: list[int]
    languages: list[tuple[int, tuple[float, ...]] | None]
    picked: Tensor  # [4, n] float64 on the host (pinned on CUDA, filled when ``ready`` completes)
    ready: torch.cuda.Event | None = None

    def done(self) -> bool:
        """Whether ``finish_admission`` would return without waiting for the device."""
        return self.ready is None or self.ready.query()


def _queued_to_host(x: Tensor) -> tuple[Tensor, torch.cuda.Event]:
    """A copy of device tensor ``x`` into pinned host memory, queued on the current stream, and the event after
    it: the host reads the copy once the event has completed."""
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def slot_bytes(model: Whisper, cross_kv: str = "model") -> int:
    """Device memory one slot takes: self and cross K/V for every decoder layer (the cross K/V in one byte an
    element with ``cross_kv="int8"``, plus its scales), plus its policy row."""
    d = model.dims
    size = model.dtype.itemsize
    if cross_kv == "int8":  # a byte an element, and a float32 scale per (position, head), for K and for V
        cross = 2 * d.n_audio_ctx * (d.n_text_state + 4 * d.n_text_head)
    else:
        cross = 2 * d.n_audio_ctx * d.n_text_state * size
    per_layer = 2 * d.n_text_ctx * d.n_text_state * size + cross
    return d.n_text_layer * per_layer + 4 * d.n_vocab


def buckets_up_to(n: int, buckets: tuple[int, ...]) -> tuple[int, ...]:
    chosen = tuple(b for b in buckets if b < n) + (n,)
    return tuple(sorted(set(chosen)))


class Runner:
    def __init__(
        self,
        model: Whisper,
        *,
        n_slots: int,
        eot: int,
        no_timestamps: int,
        no_speech: int,
        timestamp_begin: int,
        blank_ids: list[int],
        buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
        cuda_graphs: bool = True,
        max_encode: int = 32,
        compile: bool = False,
        cpu_step_threads: int | None = None,
        cpu_step_threads_rows: int = 2,
        short_window_frames: tuple[int, ...] = (),
        fused_step: bool = False,
        prefill_graphs: bool = True,
        cross_kv: str = "model",
        packed_encoder: bool = False,
        packed_prefill: bool = False,
        overlap_admissions: bool = False,
    ) -> None:
        self.model = model
        self.cpu_step_threads, self.cpu_step_threads_rows = cpu_step_threads, cpu_step_threads_rows
        self.no_speech = no_speech
        d = model.dims
        self.device, self.dtype = model.device, model.dtype
        self.n_slots = n_slots
        self.scratch = n_slots  # an extra slot that padding rows point at
        total = n_slots + 1
        L, C = d.n_text_layer, d.n_text_state
        self.n_head, self.head_dim = d.n_text_head, C // d.n_text_head

        def cache(t: int) -> Tensor:
            return torch.zeros(L, total, t, C, dtype=self.dtype, device=self.device)

        self.self_k, self.self_v = cache(d.n_text_ctx), cache(d.n_text_ctx)
        # The cross K/V is the bulk of a decode step's memory traffic (tiny: 18 MB a step over 1,500 keys). On
        # the CPU it is stored per head, [L, slots, heads, n_audio_ctx, head_dim], so that attention streams one
        # contiguous block per head instead of 256-byte pieces at a stride of C; the GPU step's kernel reads the
        # [L, slots, n_audio_ctx, C] layout, as int8 with scales [L, slots, H, n_audio_ctx] with cross_kv="int8".
        self.cross_per_head = self.device.type == "cpu"
        self.cross_scales: tuple[Tensor, Tensor] | None = None
        if cross_kv == "int8":
            if (why := kv8.supported(self.device)) is not None:
                raise ValueError(why)
            shape = (L, total, d.n_audio_ctx, C)
            self.cross_k = torch.zeros(shape, dtype=kv8.DTYPE, device=self.device)
            self.cross_v = torch.zeros(shape, dtype=kv8.DTYPE, device=self.device)
            scale = torch.ones(
                2, L, total, self.n_head, d.n_audio_ctx, dtype=torch.float32, device=self.device
            )
            self.cross_scales = (scale[0], scale[1])
        elif cross_kv != "model":
            raise ValueError(f"cross_kv must be 'model' or 'int8', got {cross_kv!r}")
        elif self.cross_per_head:
            shape = (L, total, self.n_head, d.n_audio_ctx, self.head_dim)
            self.cross_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.cross_v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        else:
            self.cross_k, self.cross_v = cache(d.n_audio_ctx), cache(d.n_audio_ctx)
        self.cross_len = torch.full((total,), d.n_audio_ctx, dtype=torch.long, device=self.device)
        self.policy = PolicyState(
            total,
            d.n_vocab,
            eot=eot,
            no_timestamps=no_timestamps,
            timestamp_begin=timestamp_begin,
            blank_ids=blank_ids,
            n_ctx=d.n_text_ctx,
            device=self.device,
        )
        self.policy.length[self.scratch] = 1  # padding rows attend over one (garbage) position
        with torch.inference_mode(False):  # (as the encoder's fusion below)
            self._qkv = [_fuse_qkv(layer.attn) for layer in model.decoder.layers]
        # Quantized projections (int8, fp8) fuse into one quantized module instead (None: kept separate).
        self._qkv_quant = [
            fuse_output_features((layer.attn.query, layer.attn.key, layer.attn.value))
            if fused is None
            else None
            for layer, fused in zip(model.decoder.layers, self._qkv, strict=True)
        ]
        # The CUDA step's fused kernels (compiled steps keep the eager ops for Inductor to fuse): the policy's
        # select in three kernels, and at few rows every decoder projection one kernel with its layer norm, bias,
        # GELU and residual (engine/fused.py), where all are float Linear layers or int8 weight-only ones.
        can_fuse = self.device.type == "cuda" and fused.triton is not None
        fusing = fused_step and can_fuse and not compile
        self.policy.use_kernel = fusing
        projections = [
            m
            for layer in model.decoder.layers
            for m in (layer.attn.out, layer.cross_attn.query, layer.cross_attn.out, layer.fc1, layer.fc2)
        ]
        self._qkv_rows = [
            (*qkv, None) if qkv is not None else _rows_args(quant)
            for qkv, quant in zip(self._qkv, self._qkv_quant, strict=True)
        ]
        self.fused_step = (
            fusing
            and all(args is not None for args in self._qkv_rows)
            and all(_rows_args(m) is not None for m in projections)
            and (model.decoder.proj_out is None or _rows_args(model.decoder.proj_out) is not None)
        )
        # This runner's own split-K counters: another engine's kernels (a model warming up beside a serving one)
        # may run at the same time on another stream, and counters shared with them could lose arrivals. Kept
        # wherever the kernels can run, since tools switch fused_step on after construction.
        self._arrivals = fused.arrival_counters(self.device) if can_fuse else None
        # A lone row's CPU step in a third of the calls (engine/cpu_row.py); None where it does not apply.
        self._row_layers = cpu_row.RowLayers.build(
            model.decoder, self._qkv, (self.self_k, self.self_v, self.cross_k, self.cross_v)
        )
        # and its token picked by PolicyState.select_row when greedy without timestamp rules (False: by select)
        self.row_select = self.device.type == "cpu"
        # The functions that graphs capture; compiled ones are traced per bucket shape on first use.
        self._step_fn = torch.compile(self._step, dynamic=False) if compile else self._step
        self._encoder_fn = torch.compile(model.encoder, dynamic=False) if compile else model.encoder
        self.buckets = buckets_up_to(n_slots, buckets)
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self._encoder_graphs: dict[
            tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]
        ] = {}
        # (rows, prompt tokens, encoder positions, masked) -> (graph, its facts, its tokens, its outputs)
        self._prefill_graphs: dict[tuple[int, int, int, bool], _PrefillGraph] = {}
        self.prefill_graphs = prefill_graphs and self.use_graphs
        # the window lengths (mel frames) warm-up prepares the encoder for: the full window and any shorter ones
        self.window_frames = tuple(sorted({2 * d.n_audio_ctx, *short_window_frames}))
        # live utterances' audio kept on the device between their partials (on CUDA, where sending it costs)
        self.audio_cache = AudioCache(self.device) if self.device.type == "cuda" else None
        self.encoder_buckets = tuple(1 << i for i in range(max_encode.bit_length()) if 1 << i <= max_encode)
        self.max_encode = max_encode
        # Windows shorter than the model's encoded in one packed pass (engine/packed.py) rather than one padded
        # batch per length (EngineConfig.packed_encoder); captured where FlashAttention's variable-length form runs
        # (CUDA, fp16/bf16 activations), eager elsewhere.
        self.packed_encoder = packed_encoder
        self._packed_graphed = packed.flash_varlen(self.device, self.dtype) and self.use_graphs
        self._stem: tuple[Tensor, Tensor] | None = None  # made at the first packed pass
        # The packed pass's query/key/value projections, one module a layer. Made here, before any graph is
        # captured: fusing points the model's own projections at new weights (views of the fused ones), and a
        # full-window encoder graph captured before would go on reading the old, freed ones.
        # (outside a caller's inference mode, which would make the model's weights inference tensors)
        with torch.inference_mode(False):
            self._encoder_qkv = packed.qkv_projections(model.encoder) if packed_encoder else []
        # pass size (positions) -> (graph, its static inputs, its output features)
        self._packed_graphs: dict[int, tuple[torch.cuda.CUDAGraph, packed.PackedInputs, Tensor]] = {}
        self._packed_buffers: packed.PackedInputs | None = None  # the buffers every pass size's inputs share
        # Admissions' prompts prefilled end to end (engine/packed_prefill.py): pass size (tokens) -> (graph, its
        # flat index buffer, its outputs), captured where the cross-attention reads by length (below)
        self.packed_prefill = packed_prefill
        self._packed_prefill_graphs: dict[
            int, tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, Tensor]]
        ] = {}
        self._rows = torch.full((self.buckets[-1],), self.scratch, dtype=torch.long, device=self.device)
        # Admissions on a stream of their own beside the decode steps' (EngineConfig.overlap_admissions), the
        # steps' at a higher priority so that their few blocks go first when an encoder pass holds the device.
        # Graphs replayed at the same time must not share a memory pool: one pool for each stream's graphs.
        # ``overlap`` may be turned off later (the streams stay), not on where the runner was built without.
        cuda = self.device.type == "cuda"
        self.overlap = overlap_admissions and cuda
        self.admit_stream = torch.cuda.Stream(self.device) if self.overlap else None
        self.step_stream = torch.cuda.Stream(self.device, priority=-1) if self.overlap else None
        self._pools: dict[str, object] = {"step": None, "admit": None}
        # ... and captured on a stream of their own too: torch keys cuBLAS's workspace by stream, and a captured
        # matrix product keeps the workspace address it was captured with, so graphs captured on one stream share
        # a workspace even in separate pools (pytorch/pytorch#193402) and must not run at the same time.
        self._capture_streams = (
            {"step": torch.cuda.Stream(self.device), "admit": torch.cuda.Stream(self.device)}
            if self.overlap
            else None
        )
        n_sm = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 1
        )
        self._n_sm = n_sm
        # The prefill's cross-attention reads each row's slot up to its own encoder length through the decode
        # kernel (one query row per prompt token) instead of gathering every row's whole window and masking it:
        # at 100 live streams (large-v3 fp16, H100, bench/profile_streams.py) the masked memory-efficient
        # attention and the gather copies over 1,500 positions were ~48% of a 24 ms admission's device time.
        self.cross_by_length = self.device.type == "cuda" and fused.triton is not None
        self._splits = {
            b: (
                choose_splits(b, self.n_head, d.n_text_ctx, n_sm),
                choose_splits(b, self.n_head, d.n_audio_ctx, n_sm),
            )
            for b in self.buckets
        }

    # ----- admission

    @torch.no_grad()
    def encode(self, mel: Tensor, slots: Tensor | None = None) -> Tensor:
        """mel [n, n_mels, frames] -> encoder output [n, S, C]; with ``slots`` [n] (int64, on the device) also
        write every decoder layer's cross-attention K/V of the rows into those slots.

        On CUDA both run as one captured graph per (batch bucket, frames) (a few rows are otherwise bound by
        kernel launches: the encoder and 2 projections per decoder layer are hundreds of launches); rows padding
        a bucket write into the scratch slot. The result is then a view of the graph's output buffer, valid until
        the next encode of that shape.
        """
        mel = mel.to(device=self.device, dtype=self.dtype)
        n = mel.shape[0]
        if not self.use_graphs or n > self.encoder_buckets[-1]:
            return self._encode(mel, slots)
        b = next(x for x in self.encoder_buckets if x >= n)
        graph, static_in, static_slots, static_out = self._encoder_graph(b, mel.shape[1:], slots is not None)
        static_in[:n].copy_(mel)
        if slots is not None:
            static_slots[:n].copy_(slots)
            static_slots[n:].fill_(self.scratch)
        graph.replay()
        return static_out[:n]

    def _encode(self, mel: Tensor, slots: Tensor | None) -> Tensor:
        features = self._encoder_fn(mel)
        if slots is not None:
            s = features.shape[1]
            for i, layer in enumerate(self.model.decoder.layers):
                self._write_cross(
                    i, slots, s, layer.cross_attn.key(features), layer.cross_attn.value(features)
                )
        return features

    def _encoder_graph(
        self, b: int, shape: torch.Size, to_slots: bool
    ) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        key = (b, shape[-1], to_slots)
        if key not in self._encoder_graphs:
            static_in = torch.zeros(b, *shape, dtype=self.dtype, device=self.device)
            static_slots = torch.full((b,), self.scratch, dtype=torch.long, device=self.device)
            slots = static_slots if to_slots else None
            graph, static_out = self._capture(lambda: self._encode(static_in, slots))
            self._encoder_graphs[key] = (graph, static_in, static_slots, static_out)
        return self._encoder_graphs[key]

    @torch.no_grad()
    def admit(
        self, slots: list[int], specs: list[RowSpec], windows: list[Tensor | AudioWindow]
    ) -> list[Admitted]:
        """Start requests in ``slots`` from their windows, mels [n_mels, frames] or audio (made into mels here,
        on the device, one batch per length): encode them (one pass per window length, or packed) writing each
        slot's cross K/V, detect languages where asked, then run all their prompts in one prefill and pick each
        first token under its spec's policy. Host data reaches the device in non-blocking copies; the only wait
        is for the first tokens at the end (and for languages, when asked)."""
        return self.finish_admission(self.launch_admission(slots, specs, windows))

    @torch.no_grad()
    def launch_admission(
        self, slots: list[int], specs: list[RowSpec], windows: list[Tensor | AudioWindow]
    ) -> PendingAdmission:
        """``admit`` up to its wait for the first tokens. With ``overlap`` its device work goes to the admission
        stream, after every step launched so far (a step launched before a slot was freed may still write the
        slot's state), so decode steps launched meanwhile run beside it; its rows may join a step only after
        ``finish_admission``."""
        if not self.overlap:
            return self._launch_admission(slots, specs, windows)
        assert self.admit_stream is not None and self.step_stream is not None
        self.admit_stream.wait_stream(self.step_stream)
        self.admit_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.admit_stream):
            return self._launch_admission(slots, specs, windows)

    def finish_admission(self, pending: PendingAdmission) -> list[Admitted]:
        """The admitted rows' first tokens (waiting for the device if ``pending`` is not done); from here on steps
        may run them."""
        if pending.ready is not None:
            pending.ready.synchronize()
            if self.overlap:
                assert self.step_stream is not None
                self.step_stream.wait_event(pending.ready)
        languages = pending.languages
        # one tolist, then Python numbers (indexing the tensor per row and field took ~4 tensor operations a row)
        token, done, sum_logprob, no_speech = pending.picked.tolist()
        return [
            Admitted(
                slot,
                int(token[i]),
                bool(done[i]),
                float(sum_logprob[i]),
                float(no_speech[i]),
                languages[i][0] if languages[i] else None,
                languages[i][1] if languages[i] else None,
            )
            for i, slot in enumerate(pending.slots)
        ]

    def _launch_admission(
        self, slots: list[int], specs: list[RowSpec], windows: list[Tensor | AudioWindow]
    ) -> PendingAdmission:
        n = len(slots)
        mels = window_mels(windows, self.model.dims.n_mels, self.device, self.audio_cache)
        if len({m.device.type for m in mels}) > 1:  # host mels beside device-made ones: all on the device
            mels = [m if m.device.type == self.device.type else upload(m, self.device) for m in mels]
        full = 2 * self.model.dims.n_audio_ctx
        if self.packed_encoder and any(mel.shape[-1] != full for mel in mels):
            languages, cross_len = self._encode_admitted_packed(slots, specs, mels)
        else:
            languages, cross_len = self._encode_admitted(slots, specs, mels)
        specs = [
            spec if lang is None else _with_language(spec, lang[0])
            for spec, lang in zip(specs, languages, strict=True)
        ]
        if self.packed_prefill:
            self.policy.reset(slots, specs)
            logits, no_speech, slot_t = self._run_prefill_packed(slots, specs, cross_len)
            return self._first_tokens(slots, specs, languages, logits, no_speech, slot_t)
        lengths = [len(s.initial_tokens) for s in specs]
        s, t = max(cross_len), max(lengths)
        masked = min(cross_len) != s
        # The shape the prefill runs at: a captured graph's where there is one, padded with rows of the scratch
        # slot, with tokens on the right and (short windows) over the full encoder length, masked per row.
        b, t, s, masked = self._prefill_shape(n, t, s, masked)
        pad = b - n
        tokens = torch.zeros(b, t, dtype=torch.long)
        for i, spec in enumerate(specs):
            tokens[i, : lengths[i]] = torch.tensor(spec.initial_tokens)
        facts = torch.tensor(
            [
                slots + [self.scratch] * pad,
                # padding rows read one position of the scratch slot where reads stop at each row's length
                cross_len + [1 if self.cross_by_length else s] * pad,
                [x - 1 for x in lengths] + [0] * pad,
                [x.sot_index for x in specs] + [0] * pad,
            ]
        )
        facts, tokens = upload_together(self.device, facts, tokens)
        self.cross_len[facts[0, :n]] = facts[1, :n]
        self.policy.reset(slots, specs)
        logits, no_speech = self._run_prefill(facts, tokens, s, masked)
        return self._first_tokens(slots, specs, languages, logits, no_speech, facts[0, :n])

    def _first_tokens(
        self,
        slots: list[int],
        specs: list[RowSpec],
        languages: list[tuple[int, tuple[float, ...]] | None],
        logits: Tensor,
        no_speech: Tensor,
        slot_t: Tensor,
    ) -> PendingAdmission:
        """Each admitted row's first token, picked under its spec's policy from its prefill's ``logits`` (the
        first len(slots) rows), with its no-speech probability, queued for the host to read: the admission's one
        wait for the device, in ``finish_admission``."""
        n = len(slots)
        picked = self.policy.select_packed(logits[:n], slot_t, self._noise(n, specs))
        out = torch.cat([picked, no_speech[:n].double()[None]])
        if self.device.type != "cuda":
            return PendingAdmission(slots, languages, out)
        return PendingAdmission(slots, languages, *_queued_to_host(out))

    def _encode_admitted(
        self, slots: list[int], specs: list[RowSpec], mels: list[Tensor]
    ) -> tuple[list[tuple[int, tuple[float, ...]] | None], list[int]]:
        """Encode admitted windows one batch per window length, writing their cross K/V; returns each row's
        detected language (or None) and encoder length."""
        by_frames: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            by_frames.setdefault(mel.shape[-1], []).append(i)
        languages: list[tuple[int, tuple[float, ...]] | None] = [None] * len(slots)
        cross_len = [0] * len(slots)
        for rows in by_frames.values():
            slot_t = upload(torch.tensor([slots[i] for i in rows]), self.device)
            features = self.encode(upload(torch.stack([mels[i] for i in rows]), self.device), slot_t)
            found = self._detect_languages([specs[i] for i in rows], features)
            for i, lang in zip(rows, found, strict=True):
                languages[i], cross_len[i] = lang, features.shape[1]
        return languages, cross_len

    def _encode_admitted_packed(
        self, slots: list[int], specs: list[RowSpec], mels: list[Tensor]
    ) -> tuple[list[tuple[int, tuple[float, ...]] | None], list[int]]:
        """``_encode_admitted`` in one packed pass; language detection (rarely asked of live partials) runs per
        window length on the rows that ask for it."""
        features = self.encode_packed(mels, slots)
        cross_len = [mel.shape[-1] // 2 for mel in mels]
        starts = [sum(cross_len[:i]) for i in range(len(mels))]
        languages: list[tuple[int, tuple[float, ...]] | None] = [None] * len(slots)
        by_length: dict[int, list[int]] = {}
        for i, spec in enumerate(specs):
            if spec.detect_language_ids:
                by_length.setdefault(cross_len[i], []).append(i)
        for length, rows in by_length.items():
            rows_features = torch.stack([features[starts[i] : starts[i] + length] for i in rows])
            found = self._detect_languages([specs[i] for i in rows], rows_features)
            for i, lang in zip(rows, found, strict=True):
                languages[i] = lang
        return languages, cross_len

    @torch.no_grad()
    def encode_packed(self, mels: list[Tensor], slots: list[int]) -> Tensor:
        """Windows mels [n_mels, frames] of any (even) lengths -> their encoder outputs end to end [sum of
        frames / 2, C], each row's cross-attention K/V written into its slot: one packed pass (engine/packed.py),
        replayed from a CUDA graph per pass size up to packed.GRAPH_POSITIONS positions and ``max_encode`` rows
        (tail and empty rows write into the scratch slot). The result is then a view of the graph's output,
        valid until the next packed pass of that size."""
        frames = [mel.shape[-1] for mel in mels]
        used = sum(frames) // 2
        d = self.model.dims
        size = packed.pass_size(used, d.n_audio_ctx)
        graphed = self._packed_graphed and self._packed_capturable(size) and len(mels) <= self.max_encode
        if not graphed:
            size = used  # no graph's shape to fill: no tail
        rows = self.max_encode if graphed else len(mels)
        index = packed.pack_index(
            frames, slots, size=size, rows=rows, scratch=self.scratch, n_ctx=d.n_audio_ctx
        )
        if graphed:
            graph, inputs, out = self._packed_graph(size)
            inputs.send(mels, index)
            graph.replay()
            return out[:used]
        conv1, conv2, position, slot, cu = upload_together(
            self.device, index.conv1, index.conv2, index.position, index.slot, index.cu.long()
        )
        # frames side by side as they come (float32 [n_mels, frames]); transposed and cast on the device
        mel = upload(torch.cat(mels, dim=1), self.device).T
        full_mel = torch.zeros(2 * size + 1, mel.shape[1], dtype=self.dtype, device=self.device)
        full_mel[: mel.shape[0]] = mel
        on_device = {"conv1": conv1, "conv2": conv2, "position": position, "cu": cu.int()}
        return self._packed_pass(full_mel, index, on_device, slot, position)[:used]

    def _packed_pass(
        self,
        mel: Tensor,
        index: packed.PackedIndex,
        on_device: dict[str, Tensor],
        slot: Tensor,
        position: Tensor,
    ) -> Tensor:
        if self._stem is None:
            self._stem = packed.stem_weights(self.model.encoder)
        features = packed.encode_packed(
            self.model.encoder, self._stem, mel, index, on_device, self._encoder_qkv
        )
        for i, layer in enumerate(self.model.decoder.layers):
            self._write_cross_at(
                i, slot, position, layer.cross_attn.key(features), layer.cross_attn.value(features)
            )
        return features

    def _packed_capturable(self, size: int) -> bool:
        """Whether a packed pass of ``size`` positions has a graph: up to packed.GRAPH_POSITIONS, and its capture's
        windows (full ones, the rest the tail) fit ``max_encode`` rows."""
        return size <= packed.GRAPH_POSITIONS and size // self.model.dims.n_audio_ctx <= self.max_encode

    def _packed_graph(self, size: int) -> tuple[torch.cuda.CUDAGraph, packed.PackedInputs, Tensor]:
        """The captured packed pass of ``size`` positions (its inputs filled at capture with windows bound for
        the scratch slot), the buffers it reads and its output."""
        if size not in self._packed_graphs:
            d, dev = self.model.dims, self.device
            frames = [2 * d.n_audio_ctx] * (size // d.n_audio_ctx)  # the rest of the pass is its tail
            index = packed.pack_index(
                frames, [self.scratch] * len(frames), size=size, rows=self.max_encode, scratch=self.scratch,
                n_ctx=d.n_audio_ctx,
            )  # fmt: skip
            # FlashAttention's grid is fixed at capture: long enough for any sequence a replay may hold
            index = replace(index, longest=min(size, d.n_audio_ctx))
            if not self._packed_graphs:  # every size's inputs share the buffers of the largest size's
                largest = max(x for x in packed.pass_sizes(d.n_audio_ctx) if self._packed_capturable(x))
                self._packed_buffers = packed.PackedInputs(largest, self.max_encode, d.n_mels, dev)
            inputs = packed.PackedInputs(size, self.max_encode, d.n_mels, dev, share=self._packed_buffers)
            inputs.send([torch.zeros(d.n_mels, f) for f in frames], index)
            views = inputs.on_device()

            def run() -> Tensor:
                mel = views["mel"].T.to(self.dtype).contiguous()  # [2P + 1, n_mels]
                position = views["position"].long()
                on_device = {
                    "conv1": views["conv1"].long(),
                    "conv2": views["conv2"].long(),
                    "position": position,
                    "cu": views["cu"],
                }
                return self._packed_pass(mel, index, on_device, views["slot"].long(), position)

            graph, out = self._capture(run)
            self._packed_graphs[size] = (graph, inputs, out)
        return self._packed_graphs[size]

    def _write_cross_at(self, layer: int, slot: Tensor, position: Tensor, ck: Tensor, cv: Tensor) -> None:
        """Write cross K/V [P, C] of decoder layer ``layer``, position p into slot ``slot[p]`` at ``position[p]``
        (``_write_cross`` for packed rows). On CUDA the model layout's rows go through one kernel for keys and
        values (engine/scatter.py): index_put measured ~11% of an admission's device time at 400 streams."""
        p = ck.shape[0]
        if self.cross_scales is not None:
            for cache, scales, x in zip(
                (self.cross_k, self.cross_v), self.cross_scales, (ck, cv), strict=True
            ):
                q, scale = kv8.quantize(x[None], self.n_head)  # [1, P, C], [1, H, P]
                cache[layer][slot, position] = q[0]
                scales[layer].transpose(1, 2)[slot, position] = scale[0].T
        elif self.cross_per_head:
            heads = (p, self.n_head, self.head_dim)
            self.cross_k[layer].transpose(1, 2)[slot, position] = ck.view(heads)
            self.cross_v[layer].transpose(1, 2)[slot, position] = cv.view(heads)
        else:
            n_ctx, c = self.cross_k.shape[2], self.cross_k.shape[3]
            caches = (self.cross_k[layer].view(-1, c), self.cross_v[layer].view(-1, c))
            scatter_rows((ck, cv), slot * n_ctx + position, caches)

    def _run_prefill_packed(
        self, slots: list[int], specs: list[RowSpec], cross_len: list[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The admission's prompts in one packed prefill (engine/packed_prefill.py): float32 logits at each row's
        last prompt token and its no-speech probability, the first len(slots) rows of each, and the slots on the
        device. Sets the slots' encoder lengths. A captured pass's replay where the shapes allow (the results are
        then views of its outputs, valid until its next replay), else an eager pass of exactly the prompts'
        tokens. Its index reaches the device in one copy."""
        prompts = [spec.initial_tokens for spec in specs]
        used = sum(map(len, prompts))
        size = packed_prefill.pass_size(used)
        graphed = (
            self._packed_prefill_capturable(size)
            and len(prompts) <= self.max_encode
            and max(map(len, prompts)) <= PREFILL_GRAPH_TOKENS[-1]
        )
        if not graphed:
            size = used
        rows = self.max_encode if graphed else len(prompts)
        index = packed_prefill.pack_prompts(
            prompts, slots, cross_len, [spec.sot_index for spec in specs], size=size, rows=rows,
            scratch=self.scratch,
        )  # fmt: skip
        flat = upload(torch.from_numpy(index.flat()), self.device)
        views = packed_prefill.split_flat(flat, size, rows)
        n = len(slots)
        slot_t = views["row_slot"][:n]
        self.cross_len[slot_t] = views["row_cross_len"][:n]
        if not graphed:
            return *self._prefill_packed(views, index), slot_t
        graph, static, outputs = self._packed_prefill_graph(size)
        static.copy_(flat)
        graph.replay()
        return *outputs, slot_t

    def _packed_prefill_capturable(self, size: int) -> bool:
        """Whether a packed prefill of ``size`` tokens has a graph: captured prefills, the cross-attention read by
        length (the eager path's is a host loop), a captured size no larger than ``max_encode`` prompts of
        PREFILL_GRAPH_TOKENS' largest length can fill (nothing larger is ever replayed)."""
        # the largest a replay holds; a capture's positions must stay inside the text context
        most = packed_prefill.pass_size(PREFILL_GRAPH_TOKENS[-1] * self.max_encode)
        fits = packed_prefill.GRAPH_LONGEST <= self.model.dims.n_text_ctx
        return (
            self.prefill_graphs
            and self.cross_by_length
            and packed.flash_varlen(self.device, self.dtype)
            and fits
            and size <= min(packed_prefill.GRAPH_TOKENS, most)
        )

    def _packed_prefill_graph(self, size: int) -> tuple[torch.cuda.CUDAGraph, Tensor, tuple[Tensor, Tensor]]:
        """The captured packed prefill of ``size`` tokens (captured with prompts bound for the scratch slot), its
        flat index buffer and its outputs."""
        if size not in self._packed_prefill_graphs:
            rows = self.max_encode
            per = max(PREFILL_GRAPH_TOKENS[-1], -(-size // rows))
            prompts = [[0] * per] * (size // per)  # the rest of the pass is its tail
            index = packed_prefill.pack_prompts(
                prompts, [self.scratch] * len(prompts), [1] * len(prompts), [0] * len(prompts), size=size,
                rows=rows, scratch=self.scratch,
            )  # fmt: skip
            static = torch.from_numpy(index.flat()).to(self.device)
            views = packed_prefill.split_flat(static, size, rows)
            # FlashAttention's grid is fixed at capture: long enough for any sequence a replay may hold
            sequences = replace(index, longest=min(size, packed_prefill.GRAPH_LONGEST))
            graph, out = self._capture(lambda: self._prefill_packed(views, sequences))
            self._packed_prefill_graphs[size] = (graph, static, out)
        return self._packed_prefill_graphs[size]

    def _prefill_packed(self, views: dict[str, Tensor], index: packed.Sequences) -> tuple[Tensor, Tensor]:
        """``_prefill_logits`` for packed prompts: ``views`` of the index on the device (packed_prefill.split_flat),
        ``index`` where its sequences lie. Each token's self K/V goes to its row's slot at its position."""
        dec, h = self.model.decoder, self.n_head
        token, position, slot, cross_len = (views[name] for name in packed_prefill.TOKEN_FIELDS)
        cu = views["cu"].int()
        x = (dec.token_embedding(token) + dec.positional_embedding[position]).to(self.dtype)  # [T, C]
        to = slot * self.self_k.shape[2] + position  # each token's row of a layer's self K/V, flattened
        splits = choose_splits(token.shape[0], h, self.model.dims.n_audio_ctx, self._n_sm)
        for i, layer in enumerate(dec.layers):
            q, k, v = self._self_qkv(i, layer, layer_norm(layer.attn_ln, x))
            c = k.shape[-1]
            scatter_rows((k, v), to, (self.self_k[i].view(-1, c), self.self_v[i].view(-1, c)))
            x = x + layer.attn.out(packed.varlen_attention(q, k, v, h, index, cu, causal=True))
            q = layer.cross_attn.query(layer_norm(layer.cross_attn_ln, x))
            if self.cross_by_length:
                a = self._cross_by_length(i, q[None], slot, cross_len, splits)[0]
            else:
                a = self._cross_by_sequence(i, q, index, slot, cross_len)
            x = x + layer.cross_attn.out(a)
            x = x + gelu_linear(norm_linear(layer.mlp_ln, x, layer.fc1), layer.fc2)  # (fp8: folded)
        logits = dec.logits(x[views["last"]])
        no_speech = dec.logits(x[views["sot"]]).softmax(dim=-1)[:, self.no_speech]
        return logits, no_speech

    def _cross_by_sequence(
        self, layer: int, q: Tensor, index: packed.Sequences, slot: Tensor, cross_len: Tensor
    ) -> Tensor:
        """Cross-attention of packed queries q [T, C], one SDPA per sequence over its row's slot up to its
        encoder length (the eager form, where the decode kernel is missing; the tail's outputs stay zero)."""
        out = torch.zeros_like(q)
        for a, b in index.bounds:
            row, length = slot[a : a + 1], int(cross_len[a])
            if row.item() == self.scratch:
                continue
            ck, cv = self._read_cross(layer, row, length)
            heads = split_heads(q[None, a:b], self.n_head)
            out[a:b] = merge_heads(F.scaled_dot_product_attention(heads, ck, cv))[0]
        return out

    def _prefill_shape(self, n: int, t: int, s: int, masked: bool) -> tuple[int, int, int, bool]:
        """(rows, prompt tokens, encoder positions, masked) the prefill of ``n`` rows with prompts up to ``t``
        tokens over ``s`` encoder positions runs at: a captured graph's (the next admission bucket and prompt-
        length bucket up; windows shorter than the model's over all its positions, so that one graph serves every
        short-window length: each row masked past its own length, or unmasked where the cross-attention reads stop
        at each row's length anyway, ``cross_by_length``), else as they are."""
        b = next((x for x in self.encoder_buckets if x >= n), 0)
        tb = next((x for x in PREFILL_GRAPH_TOKENS if x >= t), 0)
        full = self.model.dims.n_audio_ctx
        if self._graphed_prefill(b, tb, full):
            return b, tb, full, (masked or s < full) and not self.cross_by_length
        return n, t, s, masked and not self.cross_by_length

    def _graphed_prefill(self, b: int, t: int, s: int) -> bool:
        return (
            self.prefill_graphs
            and b in self.encoder_buckets
            and t in PREFILL_GRAPH_TOKENS
            and s == self.model.dims.n_audio_ctx
        )

    def _run_prefill(self, facts: Tensor, tokens: Tensor, s: int, masked: bool) -> tuple[Tensor, Tensor]:
        """``_prefill_logits``, as a replay of its captured graph for these shapes where they have one (captured
        the first time), else eagerly. A replay's results are views of the graph's output buffers, valid until
        its next replay."""
        b, t = tokens.shape
        if not self._graphed_prefill(b, t, s):
            return self._prefill_logits(facts, tokens, s, masked)
        if (b, t, s, masked) not in self._prefill_graphs:
            self._prefill_graph(b, t, s, masked)
        graph, static_facts, static_tokens, outputs = self._prefill_graphs[(b, t, s, masked)]
        static_facts.copy_(facts)
        static_tokens.copy_(tokens)
        graph.replay()
        return outputs

    def _prefill_graph(self, b: int, t: int, s: int, masked: bool) -> torch.cuda.CUDAGraph:
        """Capture the prefill of ``b`` rows with ``t``-token prompts over ``s`` encoder positions (on the
        scratch slot); its eager form is hundreds of small launches, bound by the host at few rows."""
        static_facts = torch.tensor([[self.scratch] * b, [s] * b, [0] * b, [0] * b], device=self.device)
        static_tokens = torch.zeros(b, t, dtype=torch.long, device=self.device)
        graph, outputs = self._capture(lambda: self._prefill_logits(static_facts, static_tokens, s, masked))
        self._prefill_graphs[(b, t, s, masked)] = (graph, static_facts, static_tokens, outputs)
        return graph

    def _prefill_logits(self, facts: Tensor, tokens: Tensor, s: int, masked: bool) -> tuple[Tensor, Tensor]:
        """Prefill rows whose facts [4, n] are (slot, encoder length, index of the last prompt token, index of
        <|startoftranscript|>) with prompts ``tokens`` [n, t] (see ``_prefill``): float32 logits at each row's
        last prompt token [n, V] and its no-speech probability [n]."""
        slot_t, cross_len_t, last, sot = facts
        with sdpa_kernel(_PREFILL_ATTENTION):
            x = self._prefill(slot_t, tokens, cross_len_t, s, masked)
        dec, rows = self.model.decoder, torch.arange(tokens.shape[0], device=self.device)
        logits = dec.logits(x[rows, last])
        no_speech = dec.logits(x[rows, sot]).softmax(dim=-1)[:, self.no_speech]
        return logits, no_speech

    def _prefill(self, slot_t: Tensor, tokens: Tensor, cross_len_t: Tensor, s: int, masked: bool) -> Tensor:
        """Run every row's prompt tokens [n, t] through the decoder at once, writing its self K/V into its slot
        and attending to the first ``s`` positions of the cross K/V already there (with ``masked``, only each
        row's first ``cross_len_t``): the last layer's output [n, t, C]."""
        dec = self.model.decoder
        t, h = tokens.shape[1], self.n_head
        mask = None
        if masked:
            mask = (torch.arange(s, device=self.device)[None, :] < cross_len_t[:, None])[:, None, None, :]
        x = (dec.token_embedding(tokens) + dec.positional_embedding[:t]).to(self.dtype)
        if self.cross_by_length:  # one query row per prompt token, reading its row's slot
            n_rows = tokens.shape[0] * t
            splits = choose_splits(n_rows, h, self.model.dims.n_audio_ctx, self._n_sm)
            by_token = (slot_t.repeat_interleave(t), cross_len_t.repeat_interleave(t), splits)
        for i, layer in enumerate(dec.layers):
            q, k, v = self._self_qkv(i, layer, layer_norm(layer.attn_ln, x))
            # Rows shorter than the longest are padded on the right: causal attention keeps the padding out of
            # their real positions, and the decode steps overwrite it position by position later.
            self.self_k[i, slot_t, :t] = k
            self.self_v[i, slot_t, :t] = v
            x = x + layer.attn.attend(q, k, v, None, causal=True)
            q = layer.cross_attn.query(layer_norm(layer.cross_attn_ln, x))
            if self.cross_by_length:
                a = self._cross_by_length(i, q, *by_token)
            else:
                # Cross-attention over the rows' slots, gathered once per layer (all queries of a row read its
                # keys together), masked past each row's own encoder length.
                ck, cv = self._read_cross(i, slot_t, s)
                a = merge_heads(F.scaled_dot_product_attention(split_heads(q, h), ck, cv, attn_mask=mask))
            x = x + layer.cross_attn.out(a)
            x = x + gelu_linear(norm_linear(layer.mlp_ln, x, layer.fc1), layer.fc2)  # (fp8: folded)
        return x

    def _cross_by_length(self, layer: int, q: Tensor, rows: Tensor, lengths: Tensor, splits: int) -> Tensor:
        """Cross-attention of decoder layer ``layer`` for prompt queries q [n, t, C] whose slots and encoder
        lengths are ``rows`` and ``lengths`` [n * t] (each row's repeated per token), in ``splits`` key ranges:
        [n, t, C]."""
        n, t, c = q.shape
        scales = None
        if self.cross_scales is not None:
            scales = (self.cross_scales[0][layer], self.cross_scales[1][layer])
        a = decode_attention(
            q.reshape(n * t, self.n_head, self.head_dim),
            self.cross_k[layer],
            self.cross_v[layer],
            rows,
            lengths,
            splits=splits,
            block_n=128,
            num_warps=2,
            scales=scales,
        )
        return a.view(n, t, c)

    def _write_cross(self, layer: int, slot_t: Tensor, s: int, ck: Tensor, cv: Tensor) -> None:
        """Write cross K/V [n, s, C] of decoder layer ``layer`` into the slots ``slot_t`` (in the cache's layout)."""
        if self.cross_scales is not None:
            for cache, scales, x in zip(
                (self.cross_k, self.cross_v), self.cross_scales, (ck, cv), strict=True
            ):
                kv8.quantize_into(x, slot_t, cache[layer], scales[layer])
        elif self.cross_per_head:
            n, h, dh = ck.shape[0], self.n_head, self.head_dim
            self.cross_k[layer, :, :, :s].index_copy_(0, slot_t, ck.view(n, s, h, dh).transpose(1, 2))
            self.cross_v[layer, :, :, :s].index_copy_(0, slot_t, cv.view(n, s, h, dh).transpose(1, 2))
        else:
            self.cross_k[layer, :, :s].index_copy_(0, slot_t, ck)
            self.cross_v[layer, :, :s].index_copy_(0, slot_t, cv)

    def _read_cross(self, layer: int, slot_t: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """The cross K/V of decoder layer ``layer`` for the slots ``slot_t``, first ``s`` positions, per head
        [n, H, s, head_dim] in the model's dtype (a copy)."""
        if self.cross_per_head:  # [L, slots, H, S, head_dim]
            return self.cross_k[layer, slot_t, :, :s], self.cross_v[layer, slot_t, :, :s]
        kv = (self.cross_k[layer, slot_t, :s], self.cross_v[layer, slot_t, :s])
        if self.cross_scales is not None:
            kv = tuple(
                kv8.dequantize(x, scales[layer, slot_t, :, :s], self.dtype)
                for x, scales in zip(kv, self.cross_scales, strict=True)
            )
        return split_heads(kv[0], self.n_head), split_heads(kv[1], self.n_head)

    def _detect_languages(
        self, specs: list[RowSpec], features: Tensor
    ) -> list[tuple[int, tuple[float, ...]] | None]:
        """Per row: (most likely language token, probabilities over its candidates), or None when not asked.
        Whisper decides from one decoder step on <|startoftranscript|> alone, before any prompt."""
        asked = [i for i, s in enumerate(specs) if s.detect_language_ids]
        found: list[tuple[int, tuple[float, ...]] | None] = [None] * len(specs)
        if not asked:
            return found
        sot = torch.tensor([[specs[i].initial_tokens[specs[i].sot_index]] for i in asked], device=self.device)
        logits = self.model.decoder.forward_full(sot, features[asked])[:, 0]
        for row, i in enumerate(asked):
            ids = list(specs[i].detect_language_ids)
            probs = logits[row, ids].softmax(dim=-1).cpu()
            found[i] = (ids[int(probs.argmax())], tuple(probs.tolist()))
        return found

    def _noise(self, n: int, specs: list[RowSpec]) -> Tensor | None:
        if all(s.temperature == 0 for s in specs):
            return None
        return torch.rand(n, self.model.dims.n_vocab, device=self.device)

    # ----- decode

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} rows exceed the largest batch bucket {self.buckets[-1]}")

    def step(self, slots: list[int], sample: bool = False) -> tuple[list[int], list[bool], list[float]]:
        """One decode step for ``slots``: (next token, finished, summed log-prob so far) per slot."""
        return self.collect(self.launch(slots, sample))

    @torch.no_grad()
    def launch(self, slots: list[int], sample: bool = False) -> Launched:
        """Queue one decode step for ``slots`` and return at once (on CUDA): the host does three things, one
        copy of the bucket's rows (padded with the scratch slot) to the device, one graph replay, and one
        queued copy of the packed results into pinned memory. ``collect`` waits for them. The rows' state lives
        on the device, so another step of the same rows may be launched before this one is collected. On the
        CPU the step runs here."""
        if self.device.type == "cpu":
            return Launched(slots, sample, results=self._step_cpu(slots, sample))
        if not self.overlap:
            return self._launch(slots, sample)
        with torch.cuda.stream(self.step_stream):
            return self._launch(slots, sample)

    def _launch(self, slots: list[int], sample: bool) -> Launched:
        n = len(slots)
        b = self.bucket_for(n)
        rows = self._rows[:b]
        if self.use_graphs:
            graph, packed = self._graph(b, sample)  # captured on scratch rows the first time
        host_rows = torch.full((b,), self.scratch, dtype=torch.long)
        host_rows[:n] = torch.tensor(slots, dtype=torch.long)
        rows.copy_(host_rows.pin_memory(), non_blocking=True)  # queued: the host does not wait
        if self.use_graphs:
            graph.replay()
        else:
            packed = self._step(rows, sample)
        # queued now, before any later step overwrites the graph's output
        host, ready = _queued_to_host(packed[:, :n])
        return Launched(slots, sample, packed=host, ready=ready)

    def collect(self, launched: Launched) -> tuple[list[int], list[bool], list[float]]:
        """Wait for a launched step: (next token, finished, summed log-prob so far) per slot."""
        if launched.results is not None:
            return launched.results
        launched.ready.synchronize()
        # one tolist, then Python numbers: iterating the tensor made a tensor per element (0.29 against 0.016 ms
        # for 128 rows on the CPU machine), on the engine thread that shares the GIL with the event loop
        tokens, done, sum_logprob = launched.packed.tolist()
        return [int(t) for t in tokens], [bool(d) for d in done], sum_logprob

    @torch.no_grad()  # warm-up calls it with gradients on: a graph must not keep autograd's saved tensors
    def _capture(self, fn: Callable[[], _Out], pool: str = "admit") -> tuple[torch.cuda.CUDAGraph, _Out]:
        """Capture ``fn`` as a CUDA graph in the memory pool its stream's graphs share, on that pool's capture
        stream (``pool``: "step" or "admit"; one pool and torch's default capture stream for all without
        ``overlap``, since replays then never meet): run twice first on a side stream (compiles, autotunes and
        picks kernels outside the capture), then captured. Returns the graph and the outputs of the captured run,
        which each replay overwrites.

        Captured in thread-local mode: only this thread's calls are checked against the capture. In the default
        global mode an unsafe call from any other thread of the process (a caller's own CUDA work beside an
        engine warming up) invalidates it, which failed a prefill capture in warm-up in one GPU test run (stop 24,
        H100) and not when the test ran alone."""
        streams = self._capture_streams
        key = pool if streams is not None else "admit"
        capture_stream = streams[key] if streams is not None else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(
            graph, pool=self._pools[key], stream=capture_stream, capture_error_mode="thread_local"
        ):
            out = fn()
        self._pools[key] = graph.pool()
        return graph, out

    def _graph(self, b: int, sample: bool) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        key = (b, sample)
        if key not in self._graphs:
            rows = self._rows[:b]
            rows.fill_(self.scratch)  # warm-up and capture really run the step: on the scratch slot only
            self._graphs[key] = self._capture(lambda: self._step_fn(rows, sample), pool="step")
        return self._graphs[key]

    @torch.no_grad()
    def _self_qkv(self, i: int, layer: nn.Module, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention query, key and value of decoder layer ``i``: one fused GEMM where the weights were fused
        (float or quantized), else the layer's own three projections."""
        if self._qkv[i] is not None:
            return few_rows.linear(y, *self._qkv[i]).chunk(3, dim=-1)
        if self._qkv_quant[i] is not None:
            return self._qkv_quant[i](y).chunk(3, dim=-1)
        return layer.attn.query(y), layer.attn.key(y), layer.attn.value(y)

    @torch.no_grad()
    def warmup(self) -> list[tuple[str, int]]:
        """Make the first request as fast as the hundredth. On CUDA: capture and run every decode-step bucket
        (greedy and sampling), every admission encoder graph (each batch bucket at each of ``window_frames``)
        and the prefill of prompts of ``PREFILL_GRAPH_TOKENS`` at each batch bucket (masked too, for short
        windows, where ``window_frames`` has them), on the scratch slot only, so no request pays for capture,
        compilation or kernel selection, and no graph is captured later while other threads launch device work.
        Elsewhere nothing is captured and the step runs exactly its rows: one step of each kind and one encoder
        pass per window length. Short windows are encoded packed where ``packed_encoder`` (every packed pass size
        with a graph instead of each batch bucket at each short length), and prompts prefilled packed where
        ``packed_prefill`` (every packed prefill size with a graph instead of the padded prefill's). Returns what
        ran, as (kind, batch) pairs: "step", "sample", "encoder <frames>", "packed encoder" (positions), "prefill
        <tokens>[ masked]", "packed prefill" (tokens), and on CUDA "log-mel <frames>" (rows: the FFT plans of
        log-mels made from audio windows, engine/mels.py)."""
        ran = []
        graphs = self.use_graphs
        if self.device.type == "cuda":  # log-mels of audio windows: each FFT plan their admissions will use
            most = 1 << (self.max_encode - 1).bit_length()  # rows are padded to a power of two
            for frames in self.window_frames:
                for b in (1 << i for i in range(most.bit_length())):
                    batched_log_mels([], [], self.model.dims.n_mels, self.device, rows=b, width=frames)
                    ran.append((f"log-mel {frames}", b))
        for b in self.buckets if graphs else (1,):
            for sample in (False, True):
                rows = self._rows[:b]
                rows.fill_(self.scratch)
                if graphs:
                    self._graph(b, sample)[0].replay()
                elif self.device.type == "cpu":
                    self._step_cpu([self.scratch], sample)
                else:
                    self._step_fn(rows, sample)
                ran.append(("sample" if sample else "step", b))
        n_mels, n_ctx = self.model.dims.n_mels, self.model.dims.n_audio_ctx
        short = self.window_frames[:-1]  # the full window is the last
        packing = self.packed_encoder and bool(short)
        for frames in self.window_frames[-1:] if packing else self.window_frames:
            for b in self.encoder_buckets if graphs else (1,):
                mel = torch.zeros(b, n_mels, frames, dtype=self.dtype, device=self.device)
                self.encode(mel, torch.full((b,), self.scratch, dtype=torch.long, device=self.device))
                ran.append((f"encoder {frames}", b))
        if packing:  # short windows are encoded packed: every pass size with a graph, else one eager pass
            graphed = self._packed_graphed
            sizes = (
                [x for x in packed.pass_sizes(n_ctx) if self._packed_capturable(x)]
                if graphed
                else [short[0] // 2]
            )
            for size in sizes:
                if graphed:
                    self._packed_graph(size)[0].replay()
                else:
                    self.encode_packed([torch.zeros(n_mels, 2 * size, dtype=self.dtype)], [self.scratch])
                ran.append(("packed encoder", size))
        if self.packed_prefill:  # every packed prefill size with a graph (admissions never use the others)
            for size in packed_prefill.pass_sizes():
                if self._packed_prefill_capturable(size):
                    self._packed_prefill_graph(size)[0].replay()
                    ran.append(("packed prefill", size))
        elif self.prefill_graphs:
            # masked too where short windows will come (unless reads stop at each length)
            short = len(self.window_frames) > 1 and not self.cross_by_length
            for masked in (False, True) if short else (False,):
                for b in self.encoder_buckets:
                    for t in PREFILL_GRAPH_TOKENS:
                        self._prefill_graph(b, t, self.model.dims.n_audio_ctx, masked).replay()
                        ran.append((f"prefill {t}" + (" masked" if masked else ""), b))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return ran

    def _step(self, rows: Tensor, sample: bool) -> Tensor:
        """One step of ``rows`` on the device: [3, B] float64 of next token, finished and summed log-prob, packed
        in the step itself so that the host reads them back in one copy."""
        logits = self._logits(rows)
        noise = torch.rand(rows.shape[0], logits.shape[-1], device=self.device) if sample else None
        return self.policy.select_packed(logits, rows, noise)

    def _logits(self, rows: Tensor) -> Tensor:
        """Run each row's last token through the decoder (writing its K/V): float32 logits [B, V]. Attention
        through the split-K kernel, reading each row's slot of the cache and stopping at its length."""
        b, h, dh = rows.shape[0], self.n_head, self.head_dim
        self_splits, cross_splits = self._splits[b]
        self_len, cross_len = self._self_lengths(rows), self.cross_len[rows]

        def attend(i: int, q: Tensor, cross: bool) -> Tensor:
            if not cross:
                k, v = self.self_k[i], self.self_v[i]
                return decode_attention(q.view(b, h, dh), k, v, rows, self_len, splits=self_splits)
            # Launch shape from a sweep on an H100 (bench/profile_step.py): 128-key tiles, two warps.
            k, v = self.cross_k[i], self.cross_v[i]
            scales = None if self.cross_scales is None else (self.cross_scales[0][i], self.cross_scales[1][i])
            return decode_attention(
                q.view(b, h, dh),
                k,
                v,
                rows,
                cross_len,
                splits=cross_splits,
                block_n=128,
                num_warps=2,
                scales=scales,
            )

        if self.fused_step and b <= fused.MAX_ROWS:
            return self._fused_logits(rows, self_len, attend)
        return self.model.decoder.logits(self._decoder_layers(rows, attend))

    def _fused_logits(
        self, rows: Tensor, self_len: Tensor, attend: Callable[[int, Tensor, bool], Tensor]
    ) -> Tensor:
        """``_logits`` in few kernels per layer (see ``fused_step``): each projection fused with the layer norm
        before it or the bias, GELU and residual after it, the self-attention writing the new K/V itself, and
        the output projection with the final layer norm, straight to float32 logits."""
        dec, pol = self.model.decoder, self.policy
        linear = functools.partial(fused.rows_linear, arrivals=self._arrivals)
        pos = self_len - 1
        x = (dec.token_embedding(pol.last[rows]) + dec.positional_embedding[pos]).to(self.dtype)
        for i, layer in enumerate(dec.layers):
            qkv = linear(x, *self._qkv_rows[i], ln=layer.attn_ln)
            a = decode_self_attention(qkv, self.self_k[i], self.self_v[i], rows, self_len, self.n_head)
            x = linear(a, *_rows_args(layer.attn.out), residual=x)
            q = linear(x, *_rows_args(layer.cross_attn.query), ln=layer.cross_attn_ln)
            x = linear(attend(i, q, True), *_rows_args(layer.cross_attn.out), residual=x)
            h = linear(x, *_rows_args(layer.fc1), ln=layer.mlp_ln, gelu=True)
            x = linear(h, *_rows_args(layer.fc2), residual=x)
        out = dec.proj_out
        args = (dec.token_embedding.weight, None, None) if out is None else _rows_args(out)
        return linear(x, *args, ln=dec.ln, out_dtype=torch.float32)

    def _self_lengths(self, rows: Tensor) -> Tensor:
        """Each row's sequence length, this step's token included, at most the context: a finished row can
        stand one past it (its last step's token counted), and one more step of it (launched before its end
        was known) must not write outside its slot."""
        return self.policy.length[rows].clamp_max(self.self_k.shape[2])

    def _decoder_layers(self, rows: Tensor, attend: Callable[[int, Tensor, bool], Tensor]) -> Tensor:
        """Each row's last token through every decoder layer, writing its self K/V at its position; ``attend(i,
        q, cross)`` is layer i's self- or cross-attention for the rows' queries [B, C]. Returns [B, C]."""
        dec, pol = self.model.decoder, self.policy
        pos = self._self_lengths(rows) - 1  # position of each row's last token, which this step runs
        # Per-step index arithmetic, done once rather than in every layer.
        write_at = rows * self.self_k.shape[2] + pos  # row-major (slot, position) into a layer's cache
        x = (dec.token_embedding(pol.last[rows]) + dec.positional_embedding[pos]).to(self.dtype)
        for i, layer in enumerate(dec.layers):
            q, k, v = self._self_qkv(i, layer, layer_norm(layer.attn_ln, x))
            self.self_k[i].view(-1, k.shape[-1]).index_copy_(0, write_at, k)
            self.self_v[i].view(-1, v.shape[-1]).index_copy_(0, write_at, v)
            x = x + _project(layer.attn.out, attend(i, q, False))
            q = _project(layer.cross_attn.query, layer_norm(layer.cross_attn_ln, x))
            x = x + _project(layer.cross_attn.out, attend(i, q, True))
            x = x + _project(layer.fc2, F.gelu(_project(layer.fc1, layer_norm(layer.mlp_ln, x))))
        return x

    # ----- the CPU step

    def _step_cpu(self, slots: list[int], sample: bool) -> tuple[list[int], list[bool], list[float]]:
        """The decode step on the CPU, where nothing is captured: exactly the active rows (no bucket padding),
        attention over views of the cache (no gather copy of each row's slot: at tiny dimensions the gathered
        cross K/V alone cost more than the rest of the step), and the timestamp rules only when a row has them.
        Rows run in slot order, so consecutive slots share one attention call; results come back in the
        caller's order."""
        order = sorted(range(len(slots)), key=slots.__getitem__)
        ordered = [slots[i] for i in order]
        rows = torch.tensor(ordered, dtype=torch.long)
        threads = self.cpu_step_threads if len(slots) <= self.cpu_step_threads_rows else None
        logits = self._logits_cpu(rows, ordered, threads)
        if len(slots) == 1 and self.row_select and not sample and not bool(self.policy.timestamps[slots[0]]):
            token, done, logprob = self.policy.select_row(logits[0], slots[0])
            return [token], [done], [logprob]
        noise = torch.rand(len(ordered), logits.shape[-1]) if sample else None
        timestamps = bool(self.policy.timestamps[rows].any())
        tokens, done = self.policy.select(logits, rows, noise, timestamps=timestamps, sparse_bias=ordered)
        sum_logprob = self.policy.sum_logprob[rows]
        out_t, out_d, out_lp = tokens.tolist(), done.tolist(), sum_logprob.tolist()
        back = [0] * len(slots)
        for j, i in enumerate(order):
            back[i] = j
        return [out_t[j] for j in back], [bool(out_d[j]) for j in back], [out_lp[j] for j in back]

    def _logits_cpu(self, rows: Tensor, slots: list[int], layer_threads: int | None = None) -> Tensor:
        """As ``_logits`` for ``rows`` in ascending slot order, attending through views of the cache. The
        decoder layers (many small ops) run with ``layer_threads`` intra-op threads (None: torch's setting);
        the output projection, one large memory-bound product, with torch's setting."""
        self_len = self._self_lengths(rows).tolist()
        cross_len = self.cross_len[rows].tolist()
        runs = _consecutive_runs(slots)

        def attend(i: int, q: Tensor, cross: bool) -> Tensor:
            if cross:
                return self._attend_runs(q, self.cross_k[i], self.cross_v[i], runs, cross_len, per_head=True)
            return self._attend_runs(q, self.self_k[i], self.self_v[i], runs, self_len)

        with _intra_op_threads(layer_threads):
            if len(slots) == 1 and self._row_layers is not None:
                slot = slots[0]
                x = self._row_layers(slot, self_len[0], cross_len[0], int(self.policy.last[slot]))
            else:
                x = self._decoder_layers(rows, attend)
        return self.model.decoder.logits(x)

    def _attend_runs(
        self,
        q: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        runs: list[tuple[int, int, int]],
        lengths: list[int],
        per_head: bool = False,
    ) -> Tensor:
        """q [B, C] for rows grouped in runs of consecutive slots (first row, first slot, count); caches
        [S, T, C], or [S, H, T, head_dim] with ``per_head``; lengths per row -> attention output [B, C]. Each run
        attends over a view of its slots' first max(length) positions, masked only where its rows' lengths
        differ."""
        h, dh = self.n_head, self.head_dim
        outs = []
        for first, slot, count in runs:
            lens = lengths[first : first + count]
            t = max(lens)
            if per_head:
                k = k_cache[slot : slot + count, :, :t]
                v = v_cache[slot : slot + count, :, :t]
            else:
                k = k_cache[slot : slot + count, :t].view(count, t, h, dh).transpose(1, 2)
                v = v_cache[slot : slot + count, :t].view(count, t, h, dh).transpose(1, 2)
            mask = None
            if min(lens) != t:
                mask = (torch.arange(t)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]
            qr = q[first : first + count].view(count, h, 1, dh)
            outs.append(F.scaled_dot_product_attention(qr, k, v, attn_mask=mask).reshape(count, h * dh))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged), restored on exit. torch's setting is
    process-wide here (measured: another thread reads the new count meanwhile), so torch work in other threads
    during the block runs with ``n`` threads too."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _consecutive_runs(slots: list[int]) -> list[tuple[int, int, int]]:
    """Ascending slot indices -> (first row, first slot, count) per run of consecutive slots."""
    runs: list[tuple[int, int, int]] = []
    for row, slot in enumerate(slots):
        if runs and runs[-1][1] + runs[-1][2] == slot:
            first, start, count = runs[-1]
            runs[-1] = (first, start, count + 1)
        else:
            runs.append((row, slot, 1))
    return runs


def _with_language(spec: RowSpec, token: int) -> RowSpec:
    tokens = list(spec.initial_tokens)
    tokens[spec.sot_index + 1] = token
    return replace(spec, initial_tokens=tuple(tokens))


def _project(m: nn.Module, x: Tensor) -> Tensor:
    """A decoder projection of a step's few rows: plain Linear layers in the CPU's fastest form for few rows
    (``few_rows.linear``; on CUDA it is F.linear), others (quantized) as they are."""
    return few_rows.linear(x, m.weight, m.bias) if type(m) is nn.Linear else m(x)


def _rows_args(m: nn.Module | None) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    """(weight, bias, weight scale) of a projection for ``fused.rows_linear``: a float Linear's (no scale) or an
    int8 weight-only one's; None for any other module (fp8, int8-dynamic: the fused step does not take them)."""
    if type(m) is nn.Linear:
        return m.weight, m.bias, None
    if type(m) is Int8WeightOnlyLinear:
        return m.weight, m.bias, m.scale
    return None


def _fuse_qkv(attn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """One [3C, C] weight and [3C] bias for the query, key and value projections (the key has no bias: zeros),
    or None when they are not plain Linear layers (e.g. quantized). The modules' own weights become views of the
    fused one, so the weights are stored once."""
    parts = (attn.query, attn.key, attn.value)
    if any(type(m) is not nn.Linear for m in parts):
        return None
    fused = fuse_output_features(parts)
    return fused.weight, fused.bias
