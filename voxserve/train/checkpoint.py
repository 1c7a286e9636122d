"""Training checkpoints: model, optimizer, loss scaler, step, random-number states and the run's settings,
saved atomically (written to a temporary name, then renamed) so a run killed mid-save leaves the previous
checkpoint intact."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` (plus the RNG states) as ``directory/step-N.pt``; keep the newest ``keep`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint_state(path: Path, device: torch.device) -> dict[str, Any]:
    # The file holds Python RNG tuples and numpy arrays, so it is not weights-only; it is one this code wrote.
    return torch.load(path, map_location=device, weights_only=False)


__all__ = ["list_checkpoints", "load_checkpoint_state", "rng_state", "save_checkpoint", "set_rng_state"]
