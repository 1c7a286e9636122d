"""Precision of a model's Linear layers: one handler per precision name, chosen by configuration (principle 10).

``quantize_model(model, "fp8" | "int8" | "int8-dynamic" | "fp32" | "fp16" | "bf16")`` swaps, in place, every
``nn.Linear`` of the encoder and decoder blocks (attention projections and MLPs) for the module of that handler
(``qlinear.py``). What stays in the model dtype, and why:

- the two encoder convolutions: 0.1% of the weights, and they see raw log-mel input, whose range differs per
  recording far more than the activations behind a layer norm do;
- layer norms, embeddings and the positional tables: tiny, and (principle 9) numerically sensitive;
- the output projection, which is the token embedding itself (tied): it is an embedding lookup as well as a
  matmul, and logits decide every token, so their error would hit the accuracy gate first. Except for
  int8-dynamic, the CPU precision: there the projection (51865 x d, most of a tiny or base decode step on the
  CPU) gets its own int8 copy as ``decoder.proj_out`` (``set_output_projection``), the embedding lookup stays
  float32; ``quantize_model(..., logits=False)`` keeps it tied.

Static fp8 activation scales come from :class:`CalibrationStats` (collected by ``voxserve.quant``), which carry
the hash of the weights they were measured on, so stats from another checkpoint are refused.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .qlinear import FP8_MAX, QUANT_LINEARS, Fp8Linear, Int8DynamicLinear, Int8WeightOnlyLinear
from .whisper import Whisper

FLOAT_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = (*FLOAT_PRECISIONS, "fp8", "int8", "int8-dynamic")
# fp8 static activation scale = margin * calibrated amax / 448. E4M3 is a floating-point format, so a larger scale
# costs only the smallest binade (values below ~amax/14000 become subnormal), while an activation larger than
# anything seen in calibration clips at the scale's limit: a margin of 2 buys room for twice the calibrated peak.
DEFAULT_FP8_MARGIN = 2.0
STATS_VERSION = 1


def activation_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of everything the precision does not quantize: its own for float precisions; bf16 around
    fp8/int8 on a GPU (_scaled_mm's output); float32 on the CPU (no fast half-precision elementwise work)."""
    if precision in FLOAT_PRECISIONS:
        return FLOAT_PRECISIONS[precision]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class QuantizationError(ValueError):
    """A precision cannot be applied as asked (unknown name, unsupported device, model already quantized)."""


class CalibrationError(QuantizationError):
    """Calibration statistics are missing, unreadable, or belong to other weights; the message says which."""


# --------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LinearStats:
    amax: float  # largest |input| seen by this Linear over all calibration passes
    quantile: float  # |input| at CalibrationStats.quantile: the largest per-pass value over all passes


@dataclass(frozen=True)
class CalibrationStats:
    """Per-Linear input statistics over representative audio, tied to the weights they were measured on."""

    model_hash: str  # weights_hash() of the model the stats came from
    layers: dict[str, LinearStats]  # Linear module name ("decoder.layers.3.fc1") -> its input statistics
    quantile: float  # which quantile of |input| LinearStats.quantile holds (e.g. 0.9999)
    n_windows: int  # 30 s windows passed through the encoder
    n_tokens: int  # decoder tokens passed through teacher-forced decoder passes
    version: int = STATS_VERSION
    meta: dict[str, str] = field(default_factory=dict)  # free-form provenance (audio source, dtype, device)

    def input_scale(self, name: str, margin: float = DEFAULT_FP8_MARGIN) -> float:
        """The static fp8 activation scale for Linear ``name``: margin * amax / 448."""
        if name not in self.layers:
            raise CalibrationError(f"the calibration statistics have no entry for {name}")
        amax = self.layers[name].amax
        if not (math.isfinite(amax) and amax > 0):
            raise CalibrationError(f"{name}: calibrated amax is {amax}; recalibrate on audio that reaches it")
        return margin * amax / FP8_MAX

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibrationStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"no calibration file at {path}; run `voxserve calibrate`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CalibrationError(f"{path}: unreadable calibration file ({e})") from None
        if not isinstance(data, dict) or data.get("version") != STATS_VERSION:
            raise CalibrationError(
                f"{path}: not a version-{STATS_VERSION} voxserve calibration file; run `voxserve calibrate` again"
            )
        try:
            layers = {
                k: LinearStats(float(v["amax"]), float(v["quantile"])) for k, v in data["layers"].items()
            }
            return cls(
                model_hash=str(data["model_hash"]),
                layers=layers,
                quantile=float(data["quantile"]),
                n_windows=int(data["n_windows"]),
                n_tokens=int(data["n_tokens"]),
                meta={str(k): str(v) for k, v in data.get("meta", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CalibrationError(f"{path}: malformed calibration file ({type(e).__name__}: {e})") from None


def weights_hash(model: nn.Module) -> str:
    """sha256 over every persistent tensor's name, shape and value rounded to bfloat16.

    Rounding to bf16 makes one checkpoint hash alike whether it was loaded in fp32 or bf16, so statistics taken
    on the CPU in fp32 apply to the same weights served in bf16 on a GPU.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        if t.is_floating_point():
            t = t.to(torch.bfloat16)
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- handlers


class PrecisionHandler:
    """How one precision treats a model: what it requires, and what replaces each Linear."""

    name = ""

    def check(self, model: Whisper) -> None:
        """Raise QuantizationError when ``model`` (its device, its dtype) cannot run this precision."""

    def convert(self, name: str, linear: nn.Linear, calibration: CalibrationStats | None) -> nn.Module:
        return linear

    @property
    def swaps(self) -> bool:
        return True


class FloatHandler(PrecisionHandler):
    """fp32 / fp16 / bf16: no swap, the whole model in one floating-point dtype."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, FLOAT_PRECISIONS[name]

    @property
    def swaps(self) -> bool:
        return False


class Int8WeightOnlyHandler(PrecisionHandler):
    name = "int8"

    def convert(self, name: str, linear: nn.Linear, calibration: CalibrationStats | None) -> nn.Module:
        return Int8WeightOnlyLinear(linear)


class Int8DynamicHandler(PrecisionHandler):
    name = "int8-dynamic"

    def check(self, model: Whisper) -> None:
        if model.device.type != "cpu":
            raise QuantizationError(
                f"int8-dynamic is a CPU precision (FBGEMM kernels); this model is on {model.device}: "
                "use fp8 or int8 on a GPU"
            )

    def convert(self, name: str, linear: nn.Linear, calibration: CalibrationStats | None) -> nn.Module:
        return Int8DynamicLinear(linear)


class Fp8Handler(PrecisionHandler):
    name = "fp8"

    def __init__(self, margin: float = DEFAULT_FP8_MARGIN) -> None:
        if not (math.isfinite(margin) and margin >= 1.0):
            raise QuantizationError(f"the fp8 activation margin must be >= 1, got {margin}")
        self.margin = margin

    def check(self, model: Whisper) -> None:
        device = model.device
        if device.type != "cuda":
            raise QuantizationError(
                f"fp8 needs a CUDA GPU with compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                f"this model is on {device}. On the CPU use int8-dynamic."
            )
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise QuantizationError(
                f"fp8 needs compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} has "
                f"{major}.{minor}. Use bf16 or int8 on this GPU."
            )

    def convert(self, name: str, linear: nn.Linear, calibration: CalibrationStats | None) -> nn.Module:
        scale = calibration.input_scale(name, self.margin) if calibration is not None else None
        return Fp8Linear(linear, input_scale=scale)


def get_handler(precision: str, *, fp8_margin: float = DEFAULT_FP8_MARGIN) -> PrecisionHandler:
    """The handler for a precision name; QuantizationError naming the valid ones otherwise."""
    if precision in FLOAT_PRECISIONS:
        return FloatHandler(precision)
    if precision == "int8":
        return Int8WeightOnlyHandler()
    if precision == "int8-dynamic":
        return Int8DynamicHandler()
    if precision == "fp8":
        return Fp8Handler(fp8_margin)
    raise QuantizationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


# ------------------------------------------------------------------------------------------------ swapping


def quantizable_linears(model: Whisper) -> Iterator[tuple[str, nn.Linear]]:
    """(name, module) for every Linear inside the encoder and decoder blocks, in model order."""
    for stack in ("encoder", "decoder"):
        for name, module in getattr(model, stack).layers.named_modules(prefix=f"{stack}.layers"):
            if isinstance(module, nn.Linear):
                yield name, module


def quantize_model(
    model: Whisper,
    precision: str,
    *,
    calibration: CalibrationStats | None = None,
    skip: Sequence[str] = (),
    fp8_margin: float = DEFAULT_FP8_MARGIN,
    logits: bool | None = None,
) -> Whisper:
    """Put ``model`` in ``precision``, in place, and return it.

    fp32/fp16/bf16 cast the whole model (no swap). fp8/int8/int8-dynamic replace the block Linears, leaving the
    model's other tensors in its current dtype (cast it first: bf16 for fp8 on a GPU, fp32 for int8-dynamic on
    the CPU). ``calibration`` gives fp8 static activation scales (without it they are per token, dynamic);
    ``skip`` holds glob patterns of Linear names kept in the model dtype ("encoder.layers.0.*").
    ``logits`` quantizes the output projection too (``set_output_projection``); None: only for int8-dynamic.
    """
    handler = get_handler(precision, fp8_margin=fp8_margin)
    if any(isinstance(m, QUANT_LINEARS) for m in model.modules()):
        raise QuantizationError("this model is already quantized; quantize a fresh copy of the float model")
    handler.check(model)
    if not handler.swaps:
        if logits:
            raise QuantizationError(f"{precision} has no quantized output projection; pass logits=False")
        return model.to(FLOAT_PRECISIONS[precision])
    swap_linears(model, handler, calibration=calibration, skip=skip)
    if logits if logits is not None else precision in LOGITS_BY_DEFAULT:
        set_output_projection(model, precision)
    return model


# Precisions whose output projection is quantized unless asked otherwise: int8-dynamic, where the float32
# projection was most of a CPU decode step (tiny, one row: 8.4 of ~10 ms in fp32, 0.65 ms in int8 on the 2-core
# bench machine). On a GPU the projection stays in the activation dtype (the accuracy gate's first casualty).
LOGITS_BY_DEFAULT = ("int8-dynamic",)
OUTPUT_PROJECTIONS = ("int8", "int8-dynamic")


def quantize_encoder(model: Whisper, precision: str) -> Whisper:
    """Only the encoder's block Linears in ``precision`` (fp8: per-token activation scales, no calibration), the
    decoder left in the model dtype: the live path's optional fp8 encoder. In place; raises QuantizationError."""
    return quantize_model(model, precision, skip=["decoder.*"])


def output_projection_module(precision: str, linear: nn.Linear) -> nn.Module:
    """The module that computes the logits in ``precision`` from ``linear`` (the embedding as [V, C])."""
    if precision == "int8-dynamic":
        return Int8DynamicLinear(linear)
    if precision == "int8":
        return Int8WeightOnlyLinear(linear)
    raise QuantizationError(
        f"no {precision} output projection; choose one of {', '.join(OUTPUT_PROJECTIONS)}"
    )


def set_output_projection(model: Whisper, precision: str, *, check: bool = True) -> Whisper:
    """Untie the output projection: ``model.decoder.proj_out`` becomes a ``precision`` copy of the token
    embedding (which stays as it is for the embedding lookup), so the logits matmul runs quantized. In place.
    ``check=False`` skips the int8-dynamic device check, for a meta-device skeleton that runs nothing."""
    if check and precision == "int8-dynamic":
        Int8DynamicHandler().check(model)
    embedding = model.decoder.token_embedding.weight
    linear = nn.Linear(embedding.shape[1], embedding.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(embedding.detach(), requires_grad=False)  # quantized from, not shared
    model.decoder.proj_out = output_projection_module(precision, linear)
    return model


def swap_linears(
    model: Whisper,
    handler: PrecisionHandler,
    *,
    calibration: CalibrationStats | None = None,
    skip: Sequence[str] = (),
) -> Whisper:
    """The swap itself, without the handler's device check (quantize_model runs it first). Tests use this to
    run the fp8 math through torch's CPU ``_scaled_mm``, which no production path should rely on."""
    targets = list(quantizable_linears(model))
    names = [n for n, _ in targets]
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise QuantizationError(
                f"skip pattern {pattern!r} matches no Linear (names look like {names[0]!r})"
            )
    targets = [(n, m) for n, m in targets if not any(fnmatch.fnmatchcase(n, p) for p in skip)]
    if calibration is not None:
        if handler.name != "fp8":
            raise QuantizationError(f"{handler.name} does not use calibration statistics (only fp8 does)")
        missing = [n for n, _ in targets if n not in calibration.layers]
        if missing:
            raise CalibrationError(
                f"the calibration statistics lack {len(missing)} Linear(s), e.g. {missing[:3]}: they were "
                "collected on a model of other dimensions"
            )
        actual = weights_hash(model)
        if calibration.model_hash != actual:
            raise CalibrationError(
                f"the calibration statistics were measured on other weights (hash {calibration.model_hash[:12]}, "
                f"this model {actual[:12]}); run `voxserve calibrate` on this model"
            )
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, handler.convert(name, linear, calibration))
    return model
