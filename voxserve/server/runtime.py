"""One served model: its weights, its batching engine, and the move to a CPU engine when the primary fails.

``ModelRuntime.window_decoder(...)`` gives the long-form seek loop a per-request window decoder (the same
signature as ``decode_with_fallback``) that feeds every window to the shared engine at the request's priority
and deadline, with temperature fallback. Requests the engine cannot decode (beam search, best-of, hotwords)
run on the reference decoder in the request's own thread. When the engine fails (a CUDA error; tests inject
one), every request it held gets ``EngineError``; the first to see it builds a CPU copy of the model (loaded
again from its source: a device that raised a CUDA error cannot be copied from) and a CPU engine, and every
window is submitted again there, so nothing accepted is lost.

With ``engine_process`` the primary engine runs in a process of its own (engine/remote.py), which loads a second
copy of the weights from the model's source: the server's copy stays here for what runs beside the engine
(language detection, the reference decoder, word alignment). Windows cross as CPU log-mels, or as audio for live
streams whose log-mels the engine makes; the engine's metrics (encoder passes, step sizes) come back with its
results. The fail-over is to a CPU engine in this process, as for an engine in a thread (a dead engine process
may mean a broken device), and the failed process is closed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..api import WhisperModel
from ..decoding.batched import make_engine
from ..decoding.decode import DecodingResult, WindowDecoder
from ..decoding.fallback import needs_fallback
from ..decoding.hotwords import Hotword, HotwordDecoder
from ..decoding.options import DecodingOptions, TranscribeOptions, at_temperature
from ..engine.engine import Engine, EngineError
from ..engine.observe import observe_engine
from ..engine.remote import EngineProcess
from ..engine.runner import slot_bytes
from ..engine.threads import engine_owns_cpu_threads, engine_threads
from ..engine.types import EngineConfig, Priority, WindowRequest
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from ..transcribe.longform import WindowDecodeFn
from .metrics import ServerMetrics

log = logging.getLogger("voxserve.server")

ModelLoader = Callable[..., WhisperModel]  # (source, device=..., dtype=...) -> WhisperModel


class DeadlinePassed(Exception):
    """The request's deadline passed while a window was decoding; ``partial`` holds what it had by then."""

    def __init__(self, partial: DecodingResult | None) -> None:
        super().__init__("deadline passed")
        self.partial = partial


@dataclass
class _Engine:
    whisper: WhisperModel
    engine: Engine | EngineProcess
    config: EngineConfig  # as the engine runs it

    @property
    def remote(self) -> bool:
        return isinstance(self.engine, EngineProcess)


class ModelRuntime:
    def __init__(
        self,
        alias: str,
        source: str,
        whisper: WhisperModel,
        *,
        loader: ModelLoader,
        engine_config: EngineConfig,
        metrics: ServerMetrics,
        cpu_fallback: bool = True,
        engine_process: bool = False,
        dtype: str | None = None,
    ) -> None:
        """``whisper`` was loaded from ``source`` by ``loader`` with ``dtype`` (None: the loader's default); an
        engine process loads its copy the same way."""
        self.alias, self.source, self.dtype = alias, source, dtype
        self.loader, self.engine_config, self.metrics = loader, engine_config, metrics
        self.cpu_fallback = cpu_fallback
        self._lock = threading.Lock()
        # off while the graphs warm up: not served work (an engine process's warm-up is not seen either)
        self._observing = True
        self.primary = self._new_engine(whisper, remote=engine_process)
        self.fallback: _Engine | None = None
        self.warm = False

    # ----- state

    @property
    def current(self) -> _Engine:
        return self.fallback or self.primary

    @property
    def whisper(self) -> WhisperModel:
        return self.current.whisper

    @property
    def healthy(self) -> bool:
        """False once the primary engine has failed (the CPU engine may still be answering)."""
        return self.primary.engine.failure is None and self.fallback is None

    def memory_bytes(self) -> int:
        """Estimated device memory: weights (twice with an engine process: its copy and the server's) plus the
        engine's KV-cache slots."""
        total = 0
        for e in (self.primary, self.fallback):
            if e is not None:
                model = e.whisper.model
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
                # an engine process's own copy, until it failed (it is being closed then)
                total += weights * (2 if e.remote and e.engine.failure is None else 1)
                total += e.engine.n_slots * slot_bytes(model, e.config.cross_kv)
        return total

    def close(self) -> None:
        for e in (self.primary, self.fallback):
            if e is not None:
                e.engine.close()

    # ----- engines

    def _new_engine(self, whisper: WhisperModel, *, remote: bool = False) -> _Engine:
        """An engine for ``whisper``: here, or in a process of its own that loads the same weights (``remote``)."""
        config = self.engine_config
        if whisper.device.type != "cuda" and config.cross_kv != "model":
            config = replace(config, cross_kv="model")  # 8-bit cross K/V is CUDA only (kv8.supported)
        if not remote:
            engine = make_engine(whisper.model, whisper.tokenizer, config)
            observe_engine(engine, self._observe)
            return _Engine(whisper, engine, config)
        factory = functools.partial(
            served_engine, self.loader, self.source, str(whisper.device), self.dtype, config, engine_threads()
        )
        log.info("model %r: starting its engine in a process of its own", self.alias)
        return _Engine(whisper, EngineProcess(factory, observer=self._observe), config)

    def _observe(self, name: str, value: float) -> None:
        """The engine's encoder passes and decode steps (engine/observe.py), in the metrics."""
        if not self._observing:
            return
        if name == "encoder":
            self.metrics.observe_stage("encoder", value)
        elif name == "batch_size":
            self.metrics.batch_size.observe(value)

    def fail_over(self, failed: Engine | EngineProcess, error: BaseException) -> bool:
        """Move to a CPU engine after ``failed`` broke; False when there is nowhere to go."""
        with self._lock:
            if self.fallback is not None and failed is not self.fallback.engine:
                return True  # another request already moved everyone over
            if not self.cpu_fallback or self.fallback is not None:
                return False
            log.error("model %r: engine failed (%s); moving its requests to a CPU engine", self.alias, error)
            primary = self.primary.whisper
            if primary.device.type == "cpu":
                cpu = primary  # the weights are fine; only the engine's state is suspect
            else:
                cpu = self.loader(self.source, device="cpu", dtype="float32")
            self.fallback = self._new_engine(cpu)
            self.metrics.fallbacks.labels(self.alias).inc()
        if isinstance(failed, EngineProcess):
            # its process may live on with its device memory: closed beside the requests that move over
            threading.Thread(target=failed.close, name="voxserve-engine-close", daemon=True).start()
        return True

    # ----- decoding

    def warm_up(self) -> None:
        """Capture every CUDA graph and run every batch size once, then decode one silent window, so first
        requests do not pay for allocation and graph capture, and no graph is captured later while request
        threads launch work on the device (a capture then can fail). Called before the runtime serves anything,
        when the engine's worker is idle. (An engine process warmed its engine up before it said it was ready.)"""
        engine = self.current.engine
        if isinstance(engine, Engine):
            self._observing = False
            try:
                engine.runner.warmup()
            finally:
                self._observing = True
        model = self.whisper.model
        mel = torch.full((model.dims.n_mels, 3000), -1.5, device=model.device)
        decoding = DecodingOptions(language="en" if self.whisper.tokenizer.is_multilingual else None)
        self._decode_engine(mel, self.whisper.tokenizer, decoding, Priority.BATCH, None)
        self.warm = True

    def _decode_engine(
        self,
        mel: Tensor,
        tokenizer: Tokenizer,
        decoding: DecodingOptions,
        priority: Priority,
        deadline: float | None,
    ) -> DecodingResult:
        while True:
            current = self.current
            decoder = WindowDecoder(current.whisper.model, tokenizer, decoding)
            window = mel.cpu() if current.remote else mel  # an engine process takes CPU log-mels
            request = WindowRequest(mel=window, spec=decoder.row_spec(), priority=priority, deadline=deadline)
            submitted = time.monotonic()
            try:
                # (only the output is read here: no token events, which an engine process would send across)
                ticket = current.engine.submit(request, token_events=False)
                output = ticket.result()
            except EngineError as e:
                if not self.fail_over(current.engine, e):
                    raise
                continue
            done = time.monotonic()
            admitted = ticket.admitted_at if ticket.admitted_at is not None else done  # None: never admitted
            self.metrics.observe_stage("queue_wait", admitted - submitted)
            self.metrics.observe_stage("decoder", done - admitted)
            self.metrics.windows.labels("engine").inc()
            return decoder.result_from(output)

    def _decode_reference(
        self, mel: Tensor, tokenizer: Tokenizer, decoding: DecodingOptions, hotwords: Sequence[Hotword]
    ) -> tuple[DecodingResult, Tensor]:
        model = self.whisper.model
        decoder = (
            HotwordDecoder(model, tokenizer, decoding, hotwords)
            if hotwords
            else WindowDecoder(model, tokenizer, decoding)
        )
        t0 = time.monotonic()
        features = decoder.encode(mel)
        t1 = time.monotonic()
        result = decoder.decode_features(features)[0]
        self.metrics.observe_stage("encoder", t1 - t0)
        self.metrics.observe_stage("decoder", time.monotonic() - t1)
        self.metrics.windows.labels("reference").inc()
        return result, features

    def window_decoder(
        self, *, priority: Priority, deadline: float | None, hotwords: Sequence[Hotword] = ()
    ) -> WindowDecodeFn:
        """A window decoder for one request (``decode_with_fallback``'s signature), see the module docstring."""

        def decode(
            model: Whisper,
            tokenizer: Tokenizer,
            mel: Tensor,
            options: TranscribeOptions,
            decoding: DecodingOptions,
            prompt: tuple[int, ...],
        ) -> tuple[DecodingResult, Tensor]:
            decoding = decoding.with_changes(prompt=prompt or None)
            result: DecodingResult | None = None
            features: Tensor | None = None
            for temperature in options.temperatures:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlinePassed(result)
                at_t = at_temperature(decoding, temperature, options.best_of)
                if hotwords or at_t.n_group > 1:
                    result, features = self._decode_reference(mel, tokenizer, at_t, hotwords)
                else:
                    result = self._decode_engine(mel, tokenizer, at_t, priority, deadline)
                    if result.finish_reason == "deadline":
                        raise DeadlinePassed(result)
                if not needs_fallback(result, options):
                    break
            assert result is not None  # temperatures is never empty (validated)
            if features is None and options.word_timestamps:
                # Word alignment needs the encoder output, which stays inside the engine: encode once more.
                features = WindowDecoder(self.whisper.model, tokenizer, decoding).encode(mel)
            return result, features if features is not None else torch.empty(0)

        return decode


def served_engine(
    loader: ModelLoader,
    source: str,
    device: str,
    dtype: str | None,
    config: EngineConfig,
    threads: int | None = None,
) -> Engine:
    """The engine of ``voxserve serve --engine-process``, built and warmed up in the engine's process (a
    module-level function: it crosses to that process pickled, with its arguments). ``threads``: the engines'
    CPU threads under the server's process policy (engine/threads.py), None where it has none."""
    if device == "cpu":
        # the process is the engine's: its worker gets the server's engine threads, else torch's (threads.py)
        engine_owns_cpu_threads(threads)
    whisper = loader(source, device=device, dtype=dtype)
    engine = make_engine(whisper.model, whisper.tokenizer, config)
    engine.runner.warmup()
    return engine
