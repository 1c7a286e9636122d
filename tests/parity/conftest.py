"""Reference pairs: one set of seeded random weights loaded into voxserve and into openai-whisper."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxserve.model.load import save_openai
from voxserve.model.whisper import Whisper


def to_openai(model: Whisper, tmp_path: Path):  # noqa: ANN201 - whisper.model.Whisper
    whisper = pytest.importorskip("whisper")
    path = save_openai(model, tmp_path / "model.pt")
    return whisper.load_model(str(path), device="cpu")
