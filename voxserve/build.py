"""Engine builds: a checkpoint converted once for one machine, loaded without converting again.

``build_engine`` loads a checkpoint in float32 (the oracle), converts it to the target precision (fp8 with
static activation scales calibrated on representative audio, int8 weight-only, int8 dynamic, or a float dtype),
measures the accuracy gate (mean KL of next-token distributions against the float32 model under teacher
forcing) and writes a build directory:

    manifest.json          what was built, for which machine, from which weights (see ``target``)
    engine.safetensors     the converted weights: int8 / E4M3 tensors with their float32 scales, as the
                           quantized modules hold them, so loading is a memory map, not a re-quantization
    tokenizer/             the tokenizer, as Hugging Face files
    calibration.json       fp8 only: the activation statistics the static scales came from
    windows.safetensors    the log-mel windows of calibration and gate (their token sequences are decoded again), so ``rebuild``
                           needs only the source checkpoint

``load_build`` checks the manifest against the machine it runs on and refuses a build made for another GPU,
compute capability, CUDA or torch version, or voxserve version with one clear message (``BuildMismatchError``),
or builds again from the recorded source when asked (``rebuild=True``). ``load_engine`` then starts the batching
engine with the build's batch buckets and warms it up: every decode bucket's CUDA graph is captured and
replayed once and every encoder bucket runs, so the first request costs what the hundredth does.

This is the documented equivalent of an ahead-of-time compiled package: what is stored is the conversion
(quantization, calibration and the gate's verdict), and what is machine-specific and cheap (graph capture) is
redone at load. The driver version is recorded but not compared: no stored artifact depends on it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .api import WhisperModel, _tokenizer_for, load_model
from .config import ModelDims, resolve_dtype
from .engine.engine import Engine
from .engine.runner import buckets_up_to
from .engine.types import EngineConfig
from .model.load import CheckpointInfo, ModelLoadError
from .model.qlinear import cpu_has
from .model.quant import (
    FLOAT_PRECISIONS,
    LOGITS_BY_DEFAULT,
    PRECISIONS,
    CalibrationStats,
    LinearStats,
    QuantizationError,
    activation_dtype,
    get_handler,
    quantizable_linears,
    quantize_model,
    set_output_projection,
    weights_hash,
)
from .model.whisper import Whisper, default_alignment_heads
from .quant.calibrate import audio_windows, collect_activation_stats, reference_token_sequences
from .quant.gate import DEFAULT_MAX_MEAN_KL, DivergenceReport, check_accuracy, measure_divergence

FORMAT = "voxserve-engine"
FORMAT_VERSION = 2  # 2: int8-dynamic builds carry decoder.proj_out (the int8 output projection)
DEFAULT_BUCKETS = EngineConfig().buckets
# Fields of ``target`` that must equal the loading machine's: each changes what the stored conversion means or
# whether it runs (fp8 needs compute capability 8.9; quantized module layouts belong to one voxserve version).
# A CPU build is compared by the instruction sets its int8 kernels chose between, not by CPU model name.
MATCHED = ("device", "compute_capability", "cuda", "torch", "voxserve", "cpu_features")
MATCHED_CUDA = ("name",)
CPU_FEATURES = ("avx512_vnni", "avx512_bf16", "amx_bf16")  # what the CPU int8 kernels choose between


class BuildError(ModelLoadError):
    """A build could not be made or read; the message says what to do."""


class BuildMismatchError(BuildError):
    """The build was made for another machine or software stack."""


def voxserve_version() -> str:
    try:
        return metadata.version("voxserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def target(device: str | torch.device, *, driver: bool = True) -> dict[str, Any]:
    """What this machine is, as far as a build cares: device, GPU name and compute capability (or the CPU's
    int8/bf16 features), driver, CUDA, torch and voxserve versions. ``driver=False`` leaves the driver out:
    it is recorded, never compared, and asking for it may run nvidia-smi."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": device.type, "torch": torch.__version__, "voxserve": voxserve_version()}
    if device.type == "cuda":
        from .bench.machine import _driver_version

        props = torch.cuda.get_device_properties(device)
        info |= {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
        if driver:
            info["driver"] = _driver_version()
    else:
        from .bench.machine import _cpu_model

        info |= {
            "name": _cpu_model() or platform.machine(),
            "cpu_features": sorted(f for f in CPU_FEATURES if cpu_has(f)),
        }
    return info


def _mismatches(built: dict[str, Any], here: dict[str, Any]) -> list[str]:
    keys = MATCHED + (MATCHED_CUDA if "cuda" in (built.get("device"), here.get("device")) else ())
    return [
        f"{k}: built for {built.get(k)!r}, here {here.get(k)!r}"
        for k in keys
        if (k in built or k in here) and built.get(k) != here.get(k)
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    manifest: dict[str, Any]
    gate: DivergenceReport | None  # None for fp32, which is the reference itself


def build_engine(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str,
    max_batch: int,
    audio: Sequence[np.ndarray] = (),
    windows: Sequence[Tensor] | None = None,
    device: str | torch.device | None = None,
    tokenizer: str | os.PathLike | None = None,
    language: str | None = None,
    calibration: CalibrationStats | None = None,
    max_mean_kl: float = DEFAULT_MAX_MEAN_KL,
    max_windows: int = 16,
    sample_len: int | None = None,
    overwrite: bool = False,
) -> BuildResult:
    """Convert ``source`` to ``precision`` for this machine and write the build directory ``out``.

    ``audio`` (16 kHz mono clips) is cut into at most ``max_windows`` 30 s windows; every precision but fp32
    needs it for the gate, fp8 also for calibration (even windows calibrate, odd ones are scored by the gate,
    so the gate sees audio the scales were not fitted to). ``windows`` (log-mel [n_mels, 3000] each) may be
    given instead of audio. A given ``calibration`` replaces the measurement.
    Raises AccuracyGateError (with the measured report) when the converted model diverges beyond
    ``max_mean_kl``; nothing is written then.
    """
    if precision not in PRECISIONS:
        raise QuantizationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise BuildError(f"{out} exists and is not empty; pass overwrite=True (--force) to replace it")
    loaded = load_model(source, device=device, dtype="float32", tokenizer=tokenizer)
    reference, tok = loaded.model, loaded.tokenizer
    dev = reference.device
    get_handler(precision).check(reference)  # fp8 on a CPU etc.: refused before any work
    if windows is None:
        windows = [w for clip in audio for w in audio_windows(clip, reference.dims.n_mels)]
    mels = list(windows)[:max_windows]
    if precision != "fp32" and not mels:
        raise BuildError(
            f"a {precision} build needs representative audio for its accuracy gate"
            + (" and calibration" if precision == "fp8" and calibration is None else "")
        )
    source_hash = weights_hash(reference)
    if precision != "fp32":  # fp32 has no calibration and no gate: no reference decode either
        sequences = reference_token_sequences(reference, tok, mels, language=language, sample_len=sample_len)
        fit = (mels[0::2], sequences[0::2]) if len(mels) > 1 else (mels, sequences)
        check = (mels[1::2], sequences[1::2]) if len(mels) > 1 else (mels, sequences)
        if precision == "fp8" and calibration is None:
            meta = {"source": str(source), "use": "build"}
            calibration = collect_activation_stats(reference, *fit, meta=meta)

    candidate = _convert(copy.deepcopy(reference), precision, calibration)
    report = None
    if precision != "fp32":
        report = check_accuracy(measure_divergence(reference, candidate, *check), max_mean_kl)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(
        parents=True
    )  # written whole, then renamed: a build directory appears complete or not at all
    state = {k: v.detach().to("cpu").contiguous() for k, v in candidate.state_dict().items()}
    save_file(state, str(staging / "engine.safetensors"), metadata={"format": FORMAT})
    tok.save_hf(staging / "tokenizer")
    if precision == "fp8" and calibration is not None:
        calibration.save(staging / "calibration.json")
    if mels:  # float32: a rebuild must see the very windows this build saw
        save_file({"mels": torch.stack(mels).float().cpu()}, str(staging / "windows.safetensors"))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target(dev),
        "source": {
            "model": str(Path(source).resolve()) if Path(source).exists() else str(source),
            "format": loaded.checkpoint.format,
            "tokenizer": None if tokenizer is None else str(Path(tokenizer).resolve()),
            "alignment_heads": loaded.checkpoint.alignment_heads,
        },
        "model_hash": source_hash,
        "dims": reference.dims.to_dict(),
        "precision": precision,
        "dtype": str(activation_dtype(precision, dev)).removeprefix("torch."),
        "static_activation_scales": precision == "fp8" and calibration is not None,
        "max_batch": max_batch,
        "batch_buckets": list(buckets_up_to(max_batch, DEFAULT_BUCKETS)),
        "max_admit": min(max_batch, EngineConfig().max_admit),
        "gate": None
        if report is None
        else {"reference": "float32", "max_mean_kl": max_mean_kl, **report.to_dict()},
        "build_settings": {"language": language, "max_windows": max_windows, "sample_len": sample_len},
        "files": {"engine.safetensors": _sha256(staging / "engine.safetensors")},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    staging.rename(out)
    return BuildResult(out, manifest, report)


def _convert(model: Whisper, precision: str, calibration: CalibrationStats | None) -> Whisper:
    model = model.to(activation_dtype(precision, model.device))
    if precision in FLOAT_PRECISIONS:
        return model
    return quantize_model(model, precision, calibration=calibration if precision == "fp8" else None)


# --------------------------------------------------------------------------------------------------- load


def is_build(path: str | os.PathLike) -> bool:
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: no manifest.json; not a voxserve engine build") from None
    except (OSError, ValueError) as e:
        raise BuildError(f"{file}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BuildError(f"{file}: not a voxserve engine manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BuildMismatchError(
            f"{path}: build format {manifest.get('format_version')}, this voxserve reads {FORMAT_VERSION}; "
            "rebuild it (voxserve build ... --force, or rebuild=True)"
        )
    return manifest


def load_build(
    path: str | os.PathLike, *, device: str | torch.device | None = None, rebuild: bool = False
) -> WhisperModel:
    """The converted model of build ``path``, after checking that it was made for this machine.

    A mismatch raises BuildMismatchError naming every differing field, unless ``rebuild``: then the build is
    made again in place from its recorded source checkpoint, calibration windows, precision and batch size.
    """
    return _load_checked(Path(path), read_manifest(path), device, rebuild)[0]


def _load_checked(
    path: Path, manifest: dict[str, Any], device: str | torch.device | None, rebuild: bool
) -> tuple[WhisperModel, dict[str, Any]]:
    """load_build on a manifest already read; returns the model and the manifest it was loaded by (the new
    one after a rebuild)."""
    built = manifest["target"]
    device = torch.device(device or built["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        differences = ["device: built for 'cuda', here 'cpu' (no CUDA device is available)"]
    else:
        differences = _mismatches(built, target(device, driver=False))
    if differences:
        if not rebuild:
            raise BuildMismatchError(
                f"{path} was built for another machine ({'; '.join(differences)}); build it here with "
                f"`voxserve build` or load it with --rebuild / rebuild=True"
            )
        manifest = _rebuild(path, manifest, device)
    return _load_converted(path, manifest, device), manifest


def _rebuild(path: Path, manifest: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Build ``path`` again here, from its recorded source checkpoint and its stored windows."""
    source = manifest["source"]["model"]
    stored = path / "windows.safetensors"
    windows = list(load_file(str(stored))["mels"]) if stored.is_file() else []
    settings = manifest.get("build_settings", {})
    gate = manifest.get("gate") or {}
    try:
        result = build_engine(
            source,
            path,
            precision=manifest["precision"],
            max_batch=int(manifest["max_batch"]),
            windows=windows,
            device=device,
            tokenizer=manifest["source"].get("tokenizer"),
            language=settings.get("language"),
            max_mean_kl=float(gate.get("max_mean_kl", DEFAULT_MAX_MEAN_KL)),
            max_windows=int(settings.get("max_windows", len(windows) or 16)),
            sample_len=settings.get("sample_len"),
            overwrite=True,
        )
    except ModelLoadError as e:
        raise BuildError(f"cannot rebuild {path}: its source checkpoint could not be loaded ({e})") from None
    return result.manifest


def _load_converted(path: Path, manifest: dict[str, Any], device: torch.device) -> WhisperModel:
    weights = path / "engine.safetensors"
    if not weights.is_file():
        raise BuildError(f"{path}: engine.safetensors is missing")
    expected = manifest.get("files", {}).get("engine.safetensors")
    if expected is not None and _sha256(weights) != expected:
        raise BuildError(
            f"{weights}: contents differ from the manifest's hash (damaged or replaced); rebuild"
        )
    dims = ModelDims(**manifest["dims"])
    precision = manifest["precision"]
    dtype = resolve_dtype(manifest["dtype"])
    with torch.device("meta"):
        model = Whisper(dims).to(dtype)
    _swap_skeleton(model, precision, static=bool(manifest.get("static_activation_scales")))
    state = load_file(str(weights), device=str(device))  # straight onto the device: no host copy to move
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise BuildError(
            f"{weights}: does not match a {precision} model of the manifest's dims ({e})"
        ) from None
    model.alignment_heads = default_alignment_heads(
        dims
    )  # not in the state dict: the meta placeholder goes first
    model = model.to(device).eval()
    heads = manifest["source"].get("alignment_heads")
    if heads:
        model.set_alignment_heads([list(h) for h in heads])
    info = CheckpointInfo(
        source=str(path),
        format="engine",
        directory=path / "tokenizer",
        alignment_heads=tuple(tuple(h) for h in heads) if heads else None,
    )
    return WhisperModel(model, _tokenizer_for(model, info, None), info)


def _swap_skeleton(model: Whisper, precision: str, *, static: bool) -> None:
    """Replace the block Linears of a meta-device model with the precision's modules, so that the stored state
    dict (quantized tensors and scales) loads into them by name and shape."""
    handler = get_handler(precision)
    if not handler.swaps:
        return
    linears = list(quantizable_linears(model))
    # Static fp8 modules hold an input_scale buffer; these placeholder statistics only make the handler create
    # it (its value is replaced by the stored scale when the state dict loads).
    placeholder = (
        CalibrationStats(
            model_hash="",
            layers=dict.fromkeys((n for n, _ in linears), LinearStats(amax=1.0, quantile=1.0)),
            quantile=1.0,
            n_windows=0,
            n_tokens=0,
        )
        if static
        else None
    )
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, handler.convert(name, linear, placeholder))
    if precision in LOGITS_BY_DEFAULT:  # quantize_model gave it its own output projection too
        # No device check: the skeleton runs nothing, and the device it loads onto matched the manifest's.
        set_output_projection(model, precision, check=False)


def load_engine(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    rebuild: bool = False,
    warmup: bool = True,
) -> tuple[Engine, WhisperModel, dict[str, Any]]:
    """The batching engine of build ``path`` (slots = the build's max batch, its batch buckets), warmed up:
    returns (engine, model, manifest). Close the engine when done."""
    from .decoding.batched import make_engine

    loaded, manifest = _load_checked(Path(path), read_manifest(path), device, rebuild)
    config = EngineConfig(
        max_slots=int(manifest["max_batch"]),
        buckets=tuple(manifest["batch_buckets"]),
        max_admit=int(manifest.get("max_admit", EngineConfig().max_admit)),
    )
    engine = make_engine(loaded.model, loaded.tokenizer, config)
    if warmup:
        # The worker thread is idle until the first submit, so the runner is ours while this runs.
        engine.warmed = engine.runner.warmup()
    return engine, loaded, manifest
