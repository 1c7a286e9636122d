"""voxserve: fast, dependable Whisper-family speech recognition.

    import voxserve
    model = voxserve.load_model("openai/whisper-large-v3")      # or a local directory / .pt file
    segments, info = model.transcribe("call.wav", language="en", word_timestamps=True)
    for s in segments:
        print(s.start, s.end, s.text)

Names are imported on first use, so ``import voxserve`` (and the ``voxserve`` command's --help) does not pay
for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "WhisperModel": ".api",
    "load_model": ".api",
    "make_options": ".api",
    "transcribe": ".api",
    "DecodingResult": ".decoding.decode",
    "decode_windows": ".decoding.decode",
    "DecodingOptions": ".decoding.options",
    "OptionsError": ".decoding.options",
    "TranscribeOptions": ".decoding.options",
    "ModelLoadError": ".model.load",
    "Segment": ".results",
    "Transcription": ".results",
    "TranscriptionInfo": ".results",
    "Word": ".results",
}
__all__ = [
    "DecodingOptions",
    "DecodingResult",
    "ModelLoadError",
    "OptionsError",
    "Segment",
    "TranscribeOptions",
    "Transcription",
    "TranscriptionInfo",
    "WhisperModel",
    "Word",
    "decode_windows",
    "load_model",
    "make_options",
    "transcribe",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'voxserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .api import WhisperModel, load_model, make_options, transcribe
    from .decoding.decode import DecodingResult, decode_windows
    from .decoding.options import DecodingOptions, OptionsError, TranscribeOptions
    from .model.load import ModelLoadError
    from .results import Segment, Transcription, TranscriptionInfo, Word
