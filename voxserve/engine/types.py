"""What goes into the engine and what comes out: token ids and features only, never text (DESIGN: the engine
knows token ids and features). The decoding layer above turns options into a RowSpec and outputs into results."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from torch import Tensor


class Priority(IntEnum):
    """Admission order: lower first. Within a priority, first come first served."""

    REALTIME = 0  # live streams: partial results while someone speaks
    INTERACTIVE = 1  # a person waits for this request
    BATCH = 2  # offline work: files, jobs


@dataclass(frozen=True)
class RowSpec:
    """How one window decodes, in token ids: derived from DecodingOptions by the decoding layer."""

    initial_tokens: tuple[int, ...]
    sot_index: int
    suppress: tuple[int, ...]  # always suppressed
    suppress_blank: bool  # forbid blank (space, end-of-text) as the first sampled token
    timestamps: bool  # apply the timestamp rules
    max_initial_timestamp_index: int | None
    sample_len: int  # most tokens to sample
    temperature: float
    # language tokens to choose from when the language is to be detected (written at sot_index + 1); None: given
    detect_language_ids: tuple[int, ...] | None = None


_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class AudioWindow:
    """A window given as its audio: the engine makes the log-mel on its device at admission, batched with the
    other windows admitted (engine/mels.py). Equal to the log-mel of ``samples`` followed by silence up to
    ``frames`` mel frames. ``samples`` is read at admission: do not change it after submitting."""

    samples: np.ndarray  # float32 16 kHz samples, at most frames * HOP_LENGTH of them
    frames: int  # the window's length in mel frames (even; the model's window at most)
    # Names a growing signal whose every window is a prefix of it (a live utterance from its first sample): the
    # engine keeps its audio on the device and sends only the samples it gains (engine/audio_cache.py)
    key: Hashable | None = None
    # The key's last window (a live utterance's final decode): its kept audio is dropped once this one is taken
    last: bool = False


@dataclass
class WindowRequest:
    # the window: a log-mel [n_mels, frames] (frames even, 3000 for a whole 30 s window) on any device, or its audio
    mel: Tensor | AudioWindow
    spec: RowSpec
    priority: Priority = Priority.INTERACTIVE
    deadline: float | None = None  # time.monotonic() after which the request ends with what it has
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True)
class WindowOutput:
    tokens: tuple[int, ...]  # sampled tokens without end-of-text
    sum_logprob: float  # includes end-of-text's log-prob when it was sampled
    no_speech_prob: float
    finish_reason: str  # "stop", "length", "deadline" or "cancelled"
    language_token: int | None = None  # the detected language, when detection was asked for
    language_probs: tuple[float, ...] | None = None  # over RowSpec.detect_language_ids


@dataclass(frozen=True)
class TokenEvent:
    request_id: int
    index: int  # 0 for the first sampled token
    token: int


@dataclass(frozen=True)
class EngineConfig:
    # slots (concurrent windows); None sizes them from memory_fraction of the free device memory
    max_slots: int | None = None
    # share of free device memory the slot caches may take when max_slots is None
    memory_fraction: float = 0.6
    # decode-step batch sizes captured as CUDA graphs (rows are padded up to the next one)
    buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # capture the decode step as CUDA graphs (CUDA only)
    cuda_graphs: bool = True
    # most windows encoded together at one admission
    max_admit: int = 32
    # compile the decode step and the encoder with torch.compile (Inductor fuses the small kernels between
    # the matrix products); costs compile time per batch bucket at start-up
    compile: bool = False
    # slots on the CPU when max_slots is None
    cpu_slots: int = 8
    # intra-op threads of the engine's worker thread on the CPU (None: the count of engine_owns_cpu_threads'
    # policy when the process adopted it, else torch's count in the thread that creates the engine)
    cpu_threads: int | None = None
    # intra-op threads of the CPU decode step's decoder layers when it runs at most cpu_step_threads_rows rows
    # (None: the worker's count, as the encoder, prefill and the output projection use). When the engine's worker
    # thread holds its OpenMP team beside a caller's (see engine/threads.py), libgomp stops spinning between
    # parallel regions and every small op of a step waits for a sleeping thread to wake: on 2 cores a one-row
    # tiny int8 step measured ~8.5-9 ms with 2 threads, ~6.3 ms with 1. Ignored under engine_owns_cpu_threads'
    # policy, where the worker's team is the only one and the whole step runs with the worker's count.
    cpu_step_threads: int | None = 1
    cpu_step_threads_rows: int = 2
    # window lengths in mel frames, shorter than the model's 30 s, that requests will use (live short windows):
    # warm-up captures the encoder's graphs for them too (other lengths are captured at first use), or with
    # packed_encoder every packed pass size
    short_window_frames: tuple[int, ...] = ()
    # the CUDA step's fused kernels: the policy's select in three kernels (select_kernel.py) and, at most
    # fused.MAX_ROWS rows, each decoder projection one kernel with its layer norm, bias, GELU and residual add
    # (fused.py); False keeps the separate kernels. Measured on an H100 (large-v3 fp16, graph replay, stop 14):
    # batch 1 2.09 ms against 2.91, batch 8 2.80 against 3.50, batch 32 5.12 against 5.54; inert on the CPU
    fused_step: bool = True
    # launch each decode step before reading the previous one's results (the device keeps every row's state), so
    # the device computes while the host handles tokens; a row's extra step after it finished is wasted work.
    # None: on where steps run asynchronously (CUDA); on the CPU a step is done when launched and nothing would
    # overlap. Measured on an H100 in one run (large-v3 fp16, fused step, stop 14): offline 1,418 -> 1,485x, a 5 s
    # request 80.2 -> 67.9 ms, a 30 s one 252 -> 238 ms
    lookahead: bool | None = None
    # with cuda_graphs: capture the prefill of prompts of up to 64 tokens at each admission batch bucket and
    # prompt-length bucket (runner.PREFILL_GRAPH_TOKENS: Whisper's usual 4, then live partials' forced prefixes and
    # short prompts), short windows in the full window's graph (their cross-attention reads stop at each row's
    # length; masked where the decode kernel is missing); longer prompts run eagerly
    prefill_graphs: bool = True
    # how the cross-attention K/V (most of a batched decode step's memory reads) is stored: "model" in the model's
    # dtype; "int8" with a float32 scale per (position, head) (engine/kv8.py): 53% of the reads and ~36% less memory
    # a slot (fp16 models), at a bounded accuracy cost; CUDA only. Measured (large-v3 fp16, 64 rows): step 8.60 -> 7.67 ms
    # on an H100, 6.90 -> 7.15 ms on an H200 (its kernel keeps the fp16 tiles), hence off by default
    cross_kv: str = "model"
    # Admission while rows are decoding (TGI's waiting-served ratio and max waiting tokens, by other names): an
    # admission stalls every running row for its encoder pass and prefill, so with admit_wait_steps > 0 waiting
    # requests join a running batch only once they are at least admit_ratio times its rows, or once
    # admit_wait_steps decode steps have run since the last admission; an idle engine admits at once. 0 admits at
    # every step.
    # Live partials are many short decodes of similar length: admitting at every step made each of their tokens
    # wait for a whole admission (bench/profile_streams.py: 163 ms admissions between 22 ms steps).
    admit_wait_steps: int = 0
    admit_ratio: float = 2.0
    # encode an admission's windows shorter than the model's in one packed pass (engine/packed.py) instead of one
    # padded batch per window length. Captured as CUDA graphs where FlashAttention's variable-length form runs
    # (CUDA, fp16/bf16), eager elsewhere. Off by default: at 100 live streams (large-v3 fp16, H100, one run,
    # bench/profile_streams.py) it measured p50 263 vs 304 ms, p99 1.33 vs 1.45 s and 339 decodes/s both ways; at
    # 200 the difference was within run-to-run noise (stop 19); with engine log-mels (stop 20, H100, one run each)
    # p99 1.40 / 1.93 s packed against 1.66 / 2.27 s per length at 200 / 300 streams, inside the same spread
    packed_encoder: bool = False
    # run an admission's prompts end to end in one prefill pass (engine/packed_prefill.py) instead of a [rows,
    # tokens] batch padded to a graph's bucket. Captured per pass size where the prefill's cross-attention reads by
    # length (CUDA with Triton) and FlashAttention's variable-length form runs (fp16/bf16); eager elsewhere. At 400
    # live streams (large-v3 fp16, H100, one run each, stop 23) an admission's prefill 9.3 -> 7.0 ms of device time,
    # 709 -> 793 decodes/s. Off by default as packed_encoder is (live serving wants both): for one request's short
    # prompt a packed pass runs at least 64 token positions where the padded prefill's graph runs 4, unmeasured.
    packed_prefill: bool = False
    # run admissions (log-mels, encoder pass, prefill) on a CUDA stream of their own beside the decode steps'
    # (a higher-priority stream), so running rows keep stepping while an admission is on the device; its rows join
    # the batch once it is done. Serially, every token of a live partial waited for the admission in front of it:
    # at 400 streams (large-v3 fp16, H100, bench/profile_streams.py, stop 24) admissions held the device ~85% of
    # the time, ~48 ms each, against ~7 ms steps. CUDA only (inert elsewhere). Off by default: measured at 400
    # streams (H100, stop 25, two runs each) steps did run beside admissions, 16 -> 26 a second, but p99 and
    # decodes/s stayed within the runs' spread, since the engine thread spends about an admission's device time
    # launching it (bench/README.md, "Overlapped admissions"). Stop 26 found that time to be six device waits in
    # PolicyState.reset (now gone), and stop 27 measured the gain (live streams with packed passes: 400 streams
    # p99 1.39 against 1.99 s, 200 streams held), so `voxserve serve` and the stream bench turn it on by default.
    # Off here: embedded engines and the offline bench keep what was measured for them (offline unmeasured).
    overlap_admissions: bool = False

    def __post_init__(self) -> None:
        if self.max_slots is not None and self.max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {self.max_slots}")
        if not 0.0 < self.memory_fraction <= 0.95:
            raise ValueError(f"memory_fraction must be in (0, 0.95], got {self.memory_fraction}")
        if not self.buckets or any(b < 1 for b in self.buckets):
            raise ValueError("buckets must be positive batch sizes")
        if self.cross_kv not in ("model", "int8"):
            raise ValueError(f"cross_kv must be 'model' or 'int8', got {self.cross_kv!r}")
        if self.max_admit < 1:
            raise ValueError("max_admit must be >= 1")
        if self.admit_wait_steps < 0:
            raise ValueError(f"admit_wait_steps must be >= 0, got {self.admit_wait_steps}")
        if not self.admit_ratio > 0:
            raise ValueError(f"admit_ratio must be > 0, got {self.admit_ratio}")
        if any(f < 2 or f % 2 for f in self.short_window_frames):
            raise ValueError(
                f"short_window_frames must be even frame counts >= 2, got {self.short_window_frames}"
            )
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if self.cpu_step_threads is not None and self.cpu_step_threads < 1:
            raise ValueError(f"cpu_step_threads must be >= 1 or None, got {self.cpu_step_threads}")
