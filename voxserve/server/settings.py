"""Server settings: the one place that reads the environment (DESIGN principle 7).

Every field can be set as ``VOXSERVE_<FIELD>`` (upper case); dicts and lists are given as JSON, e.g.
``VOXSERVE_MODELS='{"default": "default", "large": "/models/large-v3"}'``. ``voxserve serve`` fills the same
fields from its flags, which take precedence. Everything below the server receives plain arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PRIORITIES = ("realtime", "interactive", "batch")


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXSERVE_", extra="ignore", frozen=True)

    # alias -> checkpoint source (HF directory, openai .pt file, hub id or "default"); loaded on first use
    models: dict[str, str] = Field(default_factory=lambda: {"default": "default"})
    # alias used when a request names no model or OpenAI's "whisper-1"
    default_model: str = "default"
    # device for the primary engines ("cuda", "cpu"); None: CUDA when available
    device: str | None = None
    # weights dtype; None: float16 on CUDA, float32 on the CPU
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer keys accepted on /v1/*; empty: no authentication
    api_keys: list[str] = Field(default_factory=list)
    # largest request body accepted (OpenAI's own upload limit is 25 MB)
    max_upload_bytes: int = 25 * 1024 * 1024
    # longest audio a synchronous request may carry; longer files go through /v1/jobs
    max_audio_seconds: float = 1800.0
    # longest audio a job may carry
    max_job_audio_seconds: float = 4 * 3600.0
    # requests decoding at once (each feeds its windows to the shared engine, which batches them)
    max_concurrency: int = 8
    # requests allowed to wait for a decoding turn, per priority; beyond that the answer is 429
    queue_limits: dict[str, int] = Field(
        default_factory=lambda: {"realtime": 16, "interactive": 64, "batch": 256}
    )
    # KV-cache slots per engine; None lets the engine size them from free memory
    engine_slots: int | None = None
    # how the engines store the cross-attention K/V: "model" (its dtype) or "int8" (about half the decode step's
    # main memory reads; CUDA only, so a CPU engine, the fallback included, keeps "model")
    engine_cross_kv: Literal["model", "int8"] = "model"
    # waiting requests join a decoding batch once they number engine_admit_ratio times its rows, or after this
    # many decode steps (EngineConfig.admit_wait_steps; 0: at every step). With ~50 ms admissions live partials
    # gained much from waiting (100 streams, large-v3 fp16, H100, stop 18: p99 2.1 s at every step in a run with
    # GPU log-mels, 0.41 s with 16 steps / ratio 2); after the prefill's by-length cross-attention (~24 ms) the
    # two measured alike (331 vs 324 ms), and on a 2-core CPU (demo int8, 4 streams) waiting was worse (p99
    # 690-728 vs 560-602 ms), so the default admits at every step. Raise it where admissions are costly (long
    # prompts, large admission batches).
    engine_admit_wait_steps: int = Field(default=0, ge=0)
    engine_admit_ratio: float = Field(default=2.0, gt=0)
    # windows an engine admits (encodes and prefills) together at most (EngineConfig.max_admit); the GPU stream
    # benches of stops 27-30 ran live streams with 64
    engine_max_admit: int = Field(default=32, ge=1)
    # live short windows of an admission encoded in one packed pass instead of one batch per length
    # (EngineConfig.packed_encoder: off by default, see there)
    engine_packed_encoder: bool = False
    # an admission's prompts prefilled end to end in one pass (EngineConfig.packed_prefill: off by default)
    engine_packed_prefill: bool = False
    # admissions on a CUDA stream of their own beside the decode steps, so running rows keep stepping meanwhile
    # (EngineConfig.overlap_admissions, whose own default stays off for embedded engines and the offline bench).
    # On since stop 27: once an admission's launch stopped waiting for the device (stop 26), live streams gained
    # at every count measured (large-v3 fp16, H100, `voxserve bench --streams` with packed encoder and prefill,
    # as live serving should run; bench/README.md: 400 streams p99 1.39 s against 1.99 s one after the other; 200
    # streams held in two runs of three where 150 was the most before). Measured only in that setup: without the
    # packed passes, for offline requests through the server, and its graphs' extra memory (a pool per stream)
    # are not; its tokens equal the serial engine's (GPU tests). --no-overlap-admissions turns it off.
    engine_overlap_admissions: bool = True
    # each model's primary engine in a process of its own (engine/remote.py), so its worker thread does not share
    # a GIL with the event loop that serves the requests and live streams. It loads a second copy of the weights
    # (the server keeps its own for language detection, beam search, hotwords and word alignment). Off by default:
    # measured only through `voxserve bench --streams --engine-process` (the same LiveService and EngineProcess,
    # without the server's metrics, which ride with the results; large-v3 fp16, H100, stop 30): level with the
    # thread at 200 streams (p99 292-303 against 298-337 ms), ahead once the device is busy (250 streams: p99
    # 394-426 against 497-697 ms; 300: 847 against 948 ms). Not yet measured through `voxserve serve` itself.
    engine_process: bool = False
    # upper bound on the estimated bytes of all loaded models and their engines; None: no bound
    memory_budget_bytes: int | None = None
    # audio longer than this is cut at pauses (VAD) and its pieces decoded as one batch
    split_above_seconds: float = 60.0
    # SQLite database and audio folder of /v1/jobs
    jobs_db: Path = Path("voxserve-jobs.sqlite3")
    jobs_dir: Path = Path("voxserve-jobs")
    # jobs decoded at once
    job_workers: int = 1
    # load and warm the default model at start-up (/ready waits for it)
    preload: bool = True
    # when the primary (GPU) engine fails, rebuild the model on the CPU and carry on there
    cpu_fallback: bool = True
    # seconds uvicorn waits for in-flight requests after SIGTERM before it gives up on them
    shutdown_grace_seconds: float = 30.0
    # ----- live transcription (/v1/realtime; voxserve.live.service.LiveOptions holds what each means)
    # Silero VAD ONNX file; None: ../shared/data/vad/silero_vad.onnx beside the project
    vad_model: Path | None = None
    realtime_max_streams: int = 256
    realtime_max_streams_per_key: int = 16
    realtime_partial_interval_s: float = 0.3
    realtime_short_windows: bool = False
    # with short windows: the lengths (seconds) an utterance's window is padded up to (LiveOptions.window_buckets_s)
    realtime_window_buckets_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    realtime_idle_timeout_s: float = 60.0
    realtime_max_ahead_s: float = 10.0
    # where live windows' log-mels are made: "engine" (its device, batched per admission) or "host" (worker
    # threads); see LiveOptions.mels
    realtime_mels: Literal["host", "engine"] = "engine"

    @field_validator("queue_limits")
    @classmethod
    def _known_priorities(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(v) - set(PRIORITIES))
        if unknown:
            raise ValueError(f"queue_limits: unknown priorities {unknown}; expected {list(PRIORITIES)}")
        if any(n < 0 for n in v.values()):
            raise ValueError("queue_limits must be >= 0")
        return {p: v.get(p, 0) for p in PRIORITIES}

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if not self.models:
            raise ValueError("models: at least one model is needed")
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model {self.default_model!r} is not one of models {sorted(self.models)}"
            )
        for name in ("max_upload_bytes", "max_concurrency", "job_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_audio_seconds <= 0 or self.max_job_audio_seconds <= 0:
            raise ValueError("audio duration limits must be > 0")
        return self
