"""The training loop: AdamW with warmup and cosine decay, mixed precision, gradient accumulation and clipping,
checkpoints and exact resume, a wall-clock budget, held-out WER at intervals, a JSON-lines log and a progress
bar. The model is voxserve's own ``Whisper``; the loss is cross entropy on every target token after
``<|startoftranscript|>`` (see ``voxserve.train.targets``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .checkpoint import list_checkpoints, load_checkpoint_state, save_checkpoint, set_rng_state
from .ctc import CTCHead, ctc_loss
from .data import Batch, TrainingSet
from .dropout import NO_DROPOUT, Dropout, decode_full, encode
from .evaluate import EvalReport, evaluate
from .export import export_hf
from .manifest import Utterance
from .targets import IGNORE

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MIN_STEPS_TO_PLAN = 50  # steps timed before the schedule is fitted to a --max-minutes budget


class TrainError(RuntimeError):
    """Training cannot start or continue as asked; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps in the whole run (resumed runs count from where they stopped)
    batch_size: int = 16  # windows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate, reached after `warmup` steps, then cosine decay
    warmup: int = 100
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.01  # on weight matrices only (not biases, norms or embeddings)
    max_grad_norm: float = 1.0
    precision: str = "bf16"  # autocast dtype on CUDA; the CPU always trains in fp32
    eval_every: int = 500  # steps between held-out evaluations (0: only at the end)
    eval_limit: int | None = 256  # held-out utterances per evaluation (None: all)
    eval_batch_size: int = 64
    save_every: int = 1000  # steps between checkpoints (one is always written at the end)
    log_every: int = 10
    seed: int = 0
    # stop cleanly (checkpoint + export) after this much training time; the cosine is fitted to end there
    max_minutes: float | None = None
    compile: bool = False  # torch.compile the loss computation
    keep_checkpoints: int = 2
    export_dtype: str = "fp16"  # dtype of the weights written to DIR/final
    # weight of the auxiliary character CTC loss on the encoder (see ctc.py); 0 turns it off. It speeds up
    # training from scratch a great deal; fine-tuning a pretrained checkpoint does not need it.
    ctc_weight: float = 0.0
    # With max_minutes, end the cosine where the time budget will end (True), or keep it planned for `steps`
    # (False: a run split over several sessions, each stopped by its budget and resumed).
    fit_schedule: bool = True
    # With a value, the CTC weight moves linearly from ctc_weight at step 0 to this at the cosine's end (e.g. a
    # strong listening signal early, more room for the decoder later); None keeps ctc_weight throughout.
    ctc_weight_end: float | None = None
    # Regularisation against memorising the training text (all off by default; see dropout.py): residual
    # dropout in the decoder (with its input embeddings) and in the encoder, dropout on attention weights, and
    # label smoothing of the decoder's targets.
    dropout: float = 0.0
    encoder_dropout: float = 0.0
    attention_dropout: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise TrainError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS or self.export_dtype not in PRECISIONS:
            raise TrainError(f"precision must be one of {sorted(PRECISIONS)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError("lr must be > 0 and min_lr_ratio in [0, 1]")
        for name in ("ctc_weight", "ctc_weight_end"):
            w = getattr(self, name)
            if w is not None and not 0.0 <= w <= 1.0:
                raise TrainError(f"{name} must be in [0, 1], got {w}")
        for name in ("dropout", "encoder_dropout", "attention_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TrainError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TrainError(f"max_minutes must be > 0, got {self.max_minutes}")


def learning_rate(step: int, config: TrainConfig, total: int | None = None) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at step
    ``total`` (default ``config.steps``)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, (total or config.steps) - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def ctc_weight_at(step: int, config: TrainConfig, total: int | None = None) -> float:
    """The CTC loss weight at ``step``: ``ctc_weight``, or a line from it to ``ctc_weight_end`` at step
    ``total`` (default ``config.steps``)."""
    if config.ctc_weight_end is None:
        return config.ctc_weight
    progress = min(1.0, step / max(1, total or config.steps))
    return config.ctc_weight + (config.ctc_weight_end - config.ctc_weight) * progress


def token_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """(training loss, plain cross entropy) of logits [B, T, V] against labels [B, T] (IGNORE skipped). With
    label smoothing the training loss is torch's definition, (1 - e) * cross entropy + e * the mean over the
    vocabulary of -log p; the plain cross entropy comes from the same log-softmax, for logs comparable across
    runs."""
    flat, target = logits.flatten(0, 1), labels.flatten()
    if label_smoothing == 0:
        ce = F.cross_entropy(flat, target, ignore_index=IGNORE)
        return ce, ce
    logp = flat.log_softmax(-1)
    keep = (target != IGNORE).to(logp.dtype)
    n = keep.sum().clamp_min(1)
    ce = -(logp.gather(1, target.clamp_min(0)[:, None])[:, 0] * keep).sum() / n
    uniform = -(logp.mean(-1) * keep).sum() / n
    return (1 - label_smoothing) * ce + label_smoothing * uniform, ce


def training_loss(
    model: Whisper,
    head: CTCHead | None,
    batch: Batch,
    *,
    ctc_weight: float = 0.0,
    label_smoothing: float = 0.0,
    dropout: Dropout = NO_DROPOUT,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, plain cross entropy, CTC loss or None): the decoder's loss, mixed as (1 - w) * it + w * CTC when
    a CTC head is given; with dropout, the passes of ``dropout.py`` over the same weights."""
    if dropout.active:
        features = encode(model.encoder, batch.mel, dropout)
        logits = decode_full(model.decoder, batch.inputs, features, dropout)
    else:
        features = model.encoder(batch.mel)
        logits = model.decoder.forward_full(batch.inputs, features)
    loss, ce = token_loss(logits, batch.labels, label_smoothing)
    if head is None:
        return loss, ce, None
    ctc = ctc_loss(head, features, batch.chars, batch.char_lengths)
    return (1 - ctc_weight) * loss + ctc_weight * ctc, ce, ctc


def sequence_loss(model: Whisper, mel: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy of the next-token predictions over all non-padding labels."""
    logits = model.decoder.forward_full(inputs, model.encoder(mel))
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def init_for_training(model: Whisper, seed: int) -> Whisper:
    """Seeded initialisation: normal(0, 0.02) weights (as ``init_random``), zero biases, unit norms."""
    from ..model.load import init_random

    fresh = init_random(model.dims, seed=seed)
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
    return fresh


def _param_groups(model: Whisper, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matrix = p.dim() >= 2 and "embedding" not in name
        (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainResult:
    step: int
    stopped_early: bool  # the time budget ran out before `steps`
    final_dir: Path
    checkpoint: Path
    last_eval: EvalReport | None


class Trainer:
    def __init__(
        self,
        model: Whisper,
        tokenizer: Tokenizer,
        train_set: TrainingSet,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        eval_items: Sequence[Utterance] = (),
        eval_audio: Sequence[np.ndarray] = (),
        base_generation: dict[str, Any] | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.train_set, self.config = model, tokenizer, train_set, config
        self.out = Path(out_dir)
        self.device = model.device
        self.eval_items = list(eval_items)[: config.eval_limit]
        self.eval_audio = list(eval_audio)[: config.eval_limit]
        self.base_generation = base_generation
        # An undertrained model repeats itself until the length limit; twice the longest reference (plus some)
        # still shows every error, and keeps early evaluations from decoding 224 tokens an utterance.
        longest = max((len(tokenizer.encode(" " + u.text)) for u in self.eval_items), default=0)
        self._eval_sample_len = min(model.dims.n_text_ctx // 2, 2 * longest + 16)
        self.run_info = run_info or {}
        cuda = self.device.type == "cuda"
        self.amp_dtype = PRECISIONS[config.precision] if cuda else torch.float32
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # The CTC head trains beside the model and is saved in checkpoints, never exported.
        uses_ctc = max(config.ctc_weight, config.ctc_weight_end or 0.0) > 0
        self.ctc_head = CTCHead(model.dims.n_audio_state).to(self.device) if uses_ctc else None
        self.dropout = Dropout(config.encoder_dropout, config.dropout, config.attention_dropout)
        # Runs without CTC, dropout and label smoothing take the plain (optionally compiled) loss, as before.
        self._plain = self.ctc_head is None and not self.dropout.active and config.label_smoothing == 0
        groups = _param_groups(model, config.weight_decay)
        if self.ctc_head is not None:
            groups.append({"params": list(self.ctc_head.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=cuda)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self._loss: Callable[..., Tensor] = sequence_loss
        if config.compile:
            self._loss = torch.compile(sequence_loss)
        self.step = 0
        # Where the cosine ends: config.steps, or fewer when --max-minutes will stop the run before then.
        self.planned_steps = config.steps
        self.last_eval: EvalReport | None = None
        self.ctc_total = torch.zeros((), device=self.device)  # CTC loss summed since the last log line

    # ----- state

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "dims": self.model.dims.to_dict(),
            "config": asdict(self.config),
            "planned_steps": self.planned_steps,
            **({"ctc_head": self.ctc_head.state_dict()} if self.ctc_head is not None else {}),
        }

    def save(self) -> Path:
        return save_checkpoint(
            self.out / "checkpoints", self.step, self.state(), keep=self.config.keep_checkpoints
        )

    def resume(self) -> bool:
        """Continue from the newest checkpoint in DIR/checkpoints; False when there is none."""
        found = list_checkpoints(self.out / "checkpoints")
        if not found:
            return False
        state = load_checkpoint_state(found[-1], torch.device("cpu"))
        if state["dims"] != self.model.dims.to_dict():
            raise TrainError(f"{found[-1]} was trained with other model dimensions: {state['dims']}")
        old = state["config"]
        for key in ("batch_size", "grad_accum", "seed"):
            if old[key] != getattr(self.config, key):
                raise TrainError(
                    f"{found[-1]} was trained with {key}={old[key]}; resume with the same value to continue exactly"
                )
        if (self.ctc_head is None) != ("ctc_head" not in state):
            raise TrainError(
                f"{found[-1]} was trained with another ctc_weight on/off; resume with the same setting"
            )
        self.model.load_state_dict(state["model"])
        if self.ctc_head is not None:
            self.ctc_head.load_state_dict(state["ctc_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.planned_steps = min(self.config.steps, int(state.get("planned_steps", self.config.steps)))
        return True

    # ----- logging

    def _log(self, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "train.log", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----- the loop

    def train_step(self) -> tuple[Tensor, Tensor, int]:
        """One optimizer step; returns (mean loss, gradient norm, utterances seen) as device tensors. With a
        CTC weight or label smoothing the loss returned is the decoder's plain cross entropy alone (comparable
        across runs); the CTC part is accumulated in ``self.ctc_total``."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, cfg, self.planned_steps)
        ctc_weight = ctc_weight_at(self.step, cfg, self.planned_steps)
        self.model.train()
        total = torch.zeros((), device=self.device)
        seen = 0
        for k in range(cfg.grad_accum):
            batch = self.train_set.batch(self.step * cfg.grad_accum + k, cfg.batch_size)
            with self._autocast():
                if self._plain:
                    loss = self._loss(self.model, batch.mel, batch.inputs, batch.labels)
                    reported = loss.detach()
                else:
                    loss, ce, ctc = training_loss(
                        self.model, self.ctc_head, batch, ctc_weight=ctc_weight, label_smoothing=cfg.label_smoothing,
                        dropout=self.dropout,
                    )  # fmt: skip
                    if ctc is not None:
                        self.ctc_total += ctc.detach() / cfg.grad_accum
                    reported = ce.detach()
            self.scaler.scale(loss / cfg.grad_accum).backward()
            total += reported / cfg.grad_accum
            seen += batch.n_utterances
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, norm, seen

    def evaluate(self) -> EvalReport | None:
        if not self.eval_items:
            return None
        report = evaluate(
            self.model,
            self.tokenizer,
            self.eval_items,
            self.eval_audio,
            batch_size=self.config.eval_batch_size,
            sample_len=self._eval_sample_len,
        )
        self.last_eval = report
        self._log({"step": self.step, "eval": report.summary()})
        return report

    def _fit_schedule_to_budget(self, start: float, first_step: int) -> None:
        """With a time budget, end the cosine where the budget will end: at the pace measured so far (evaluations
        included), from ``MIN_STEPS_TO_PLAN`` steps into this session on. Runs with a budget are therefore not
        bit-reproducible (the step count depends on the machine's speed); runs without one are."""
        cfg = self.config
        done = self.step - first_step
        if cfg.max_minutes is None or not cfg.fit_schedule or done < MIN_STEPS_TO_PLAN:
            return
        elapsed = time.monotonic() - start
        remaining = 60 * cfg.max_minutes - elapsed
        projected = self.step + int(done / elapsed * max(0.0, remaining))
        planned = max(self.step + 1, min(cfg.steps, projected))
        if abs(planned - self.planned_steps) > max(1, self.planned_steps // 100):  # log real changes only
            self._log({"step": self.step, "planned_steps": planned})
        self.planned_steps = planned

    def run(self, *, resume: bool = False, progress: bool = True) -> TrainResult:
        from tqdm import tqdm

        cfg = self.config
        if resume and not self.resume():
            print(f"voxserve train: no checkpoint in {self.out / 'checkpoints'}; starting from step 0")
        if self.step == 0:
            self._log(
                {"start": self.run_info, "config": asdict(cfg), "train_utterances": len(self.train_set)}
            )
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", unit="step", disable=not progress)
        start, last_log_time, last_log_step = time.monotonic(), time.monotonic(), self.step
        first_step = self.step
        loss_sum, seen_sum, saved_at, stopped = torch.zeros((), device=self.device), 0, -1, False
        postfix: dict[str, str] = {}
        while self.step < cfg.steps:
            loss, norm, seen = self.train_step()
            loss_sum += loss
            seen_sum += seen
            bar.update()
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.monotonic()
                n = self.step - last_log_step
                record = {
                    "step": self.step,
                    "loss": round(float(loss_sum) / n, 5),
                    "grad_norm": round(float(norm), 4),
                    **({"ctc": round(float(self.ctc_total) / n, 5)} if self.ctc_head is not None else {}),
                    **(
                        {"ctc_weight": round(ctc_weight_at(self.step - 1, cfg, self.planned_steps), 4)}
                        if cfg.ctc_weight_end is not None
                        else {}
                    ),  # fmt: skip
                    "lr": learning_rate(self.step - 1, cfg, self.planned_steps),
                    "utterances_per_s": round(seen_sum / max(now - last_log_time, 1e-9), 1),
                    "steps_per_s": round(n / max(now - last_log_time, 1e-9), 3),
                    "elapsed_s": round(now - start, 1),
                }
                if not math.isfinite(record["loss"]):
                    self._log({**record, "error": "non-finite loss"})
                    raise TrainError(
                        f"loss became {record['loss']} at step {self.step}; lower --lr or use bf16/fp32"
                    )
                self._log(record)
                postfix["loss"] = f"{record['loss']:.3f}"
                bar.set_postfix(postfix, refresh=False)
                loss_sum, seen_sum = torch.zeros((), device=self.device), 0
                self.ctc_total.zero_()
                last_log_time, last_log_step = now, self.step
                self._fit_schedule_to_budget(start, first_step)
                bar.total = self.planned_steps if cfg.max_minutes is not None else cfg.steps
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                report = self.evaluate()
                if report:
                    postfix.update(
                        {
                            f"{k}_{v['metric'].lower()}": f"{100 * v['rate']:.1f}%"
                            for k, v in report.summary().items()
                        }
                    )
                    bar.set_postfix(postfix)
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
                saved_at = self.step
            if cfg.max_minutes is not None and time.monotonic() - start > 60 * cfg.max_minutes:
                stopped = self.step < cfg.steps
                break
        bar.close()
        checkpoint = self.save() if saved_at != self.step else list_checkpoints(self.out / "checkpoints")[-1]
        report = self.evaluate()
        info = {**self.run_info, "step": self.step, "config": asdict(cfg), "stopped_early": stopped}
        if report:
            info["eval"] = report.summary()
        final = export_hf(
            self.model, self.tokenizer, self.out / "final", dtype=PRECISIONS[cfg.export_dtype],
            base_generation=self.base_generation, extra=info,
        )  # fmt: skip
        self._log({"step": self.step, "end": True, "stopped_early": stopped, "final": str(final)})
        return TrainResult(self.step, stopped, final, checkpoint, report)


__all__ = [
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "Trainer",
    "ctc_weight_at",
    "init_for_training",
    "learning_rate",
    "sequence_loss",
    "token_loss",
    "training_loss",
]
