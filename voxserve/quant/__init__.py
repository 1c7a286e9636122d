"""Calibration and the accuracy gate for reduced-precision models (the Linear swaps live in model/quant.py).

Imports point down: this package uses the model, features and the reference decoder; the engine and the CLI use
it to build quantized engines.
"""

from ..model.quant import (
    PRECISIONS,
    CalibrationError,
    CalibrationStats,
    QuantizationError,
    quantize_model,
    weights_hash,
)
from .calibrate import audio_windows, collect_activation_stats, reference_token_sequences
from .gate import DEFAULT_MAX_MEAN_KL, AccuracyGateError, DivergenceReport, check_accuracy, measure_divergence

__all__ = [
    "DEFAULT_MAX_MEAN_KL",
    "PRECISIONS",
    "AccuracyGateError",
    "CalibrationError",
    "CalibrationStats",
    "DivergenceReport",
    "QuantizationError",
    "audio_windows",
    "check_accuracy",
    "collect_activation_stats",
    "measure_divergence",
    "quantize_model",
    "reference_token_sequences",
    "weights_hash",
]
