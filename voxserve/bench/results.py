"""Result files: one JSON document per ``voxserve bench`` run, under bench/results/.

A document holds the machine, the settings, the subjects measured (voxserve's and the peers'), each suite's
figures with their units and definitions, and the peers that were asked for but could not run. Only figures
measured in that run are written. :func:`validate` checks a document before it is written (and in tests).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "voxserve.bench/1"
SUITES = ("offline", "latency", "step")

DEFINITIONS = {
    "timed": "float32 PCM windows in host memory -> copy to the device -> log-mel -> encoder -> prompt -> "
    "n greedy tokens per window with end-of-text suppressed -> token ids on the host. Not timed: reading WAV "
    "files, loading or converting the model, warm-up runs.",
    "offline": "n_inputs windows of 30 s, 100 tokens each, decoded in batches of `batch`, one after another; "
    "realtime_factor = audio seconds / wall seconds (median over passes).",
    "latency": "one request (batch 1) on an idle subject: a 5 s window (20 tokens) and a 30 s window "
    "(100 tokens); median, p90 and min over repeats after warm-up.",
    "step": "decode-step latency at a batch size, by difference: (median t(100 tokens) - median t(1 token)) / 99 "
    "on the same 30 s windows; encoder, features and prompt cancel out.",
}

UNITS = {
    "audio_s": "s",
    "input_s": "s",
    "wall_s": "s",
    "wall_s_passes": "s",
    "realtime_factor": "x (seconds of audio per wall-clock second)",
    "ms_per_input": "ms",
    "tokens_per_s": "generated tokens per second (all windows)",
    "median_ms": "ms",
    "p90_ms": "ms",
    "min_ms": "ms",
    "samples_ms": "ms",
    "full_ms_median": "ms",
    "one_token_ms_median": "ms",
    "step_ms": "ms per decode step (whole batch)",
    "decode_tokens_per_s": "tokens per second in the decode loop (batch / step)",
    "cpu_contention_pct": "% of the measurement's wall time in which some task waited for a CPU (PSI 'some'): "
    "other work, or the subject's own threads when it runs more than there are cores",
}

_REQUIRED = {
    "offline": ("subject", "batch", "n_inputs", "audio_s", "wall_s", "realtime_factor", "tokens_per_input"),
    "latency": ("subject", "input_s", "tokens", "repeats", "median_ms", "p90_ms", "samples_ms"),
    "step": ("subject", "batch", "tokens", "full_ms_median", "one_token_ms_median", "step_ms"),
}


class ResultError(ValueError):
    """A result document does not follow the schema; the message names the first problem."""


def new_document(
    *,
    suite: str,
    command: list[str],
    machine: dict[str, Any],
    settings: dict[str, Any],
    created: datetime | None = None,
) -> dict[str, Any]:
    created = created or datetime.now(UTC)
    return {
        "schema": SCHEMA,
        "created_utc": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suite": suite,
        "command": command,
        "machine": machine,
        "settings": settings,
        "subjects": [],
        "figures": {name: [] for name in SUITES},
        "skipped": [],
        "conditions": {},  # machine load at the start and end of the run (machine.load_snapshot)
        "units": UNITS,
        "definitions": DEFINITIONS,
    }


def add_subject(
    doc: dict[str, Any], *, name: str, side: str, device: str, precision: str, config: dict
) -> None:
    doc["subjects"].append(
        {"name": name, "side": side, "device": device, "precision": precision, "config": config}
    )


def _fail(msg: str) -> None:
    raise ResultError(msg)


def validate(doc: dict[str, Any]) -> None:
    """Raise ResultError unless ``doc`` is a complete result document with at least one measured figure."""
    if not isinstance(doc, dict):
        _fail("a result document is a JSON object")
    if doc.get("schema") != SCHEMA:
        _fail(f"schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    for key, kind in (("created_utc", str), ("suite", str), ("command", list), ("machine", dict),
                      ("settings", dict), ("subjects", list), ("figures", dict), ("skipped", list)):  # fmt: skip
        if not isinstance(doc.get(key), kind):
            _fail(f"{key!r} must be a {kind.__name__}")
    for key in ("cpu", "gpu", "libraries", "voxserve"):
        if key not in doc["machine"]:
            _fail(f"machine.{key} is missing")
    names = set()
    for s in doc["subjects"]:
        for key in ("name", "side", "device", "precision", "config"):
            if key not in s:
                _fail(f"subject {s.get('name')!r} lacks {key!r}")
        if s["side"] not in ("voxserve", "peer"):
            _fail(f"subject {s['name']!r}: side must be 'voxserve' or 'peer'")
        names.add(s["name"])
    unknown = set(doc["figures"]) - set(SUITES)
    if unknown:
        _fail(f"unknown suites in figures: {sorted(unknown)}")
    count = 0
    for suite, rows in doc["figures"].items():
        for row in rows:
            missing = [k for k in _REQUIRED[suite] if k not in row]
            if missing:
                _fail(f"figures.{suite}: a row lacks {missing}")
            if row["subject"] not in names:
                _fail(f"figures.{suite}: subject {row['subject']!r} is not listed in subjects")
            for key, value in row.items():
                if key in UNITS and not isinstance(value, int | float | list | type(None)):
                    _fail(f"figures.{suite}.{key} must be a number")
            count += 1
    if count == 0:
        _fail("no figures: a result file records at least one measurement")


def result_filename(doc: dict[str, Any], label: str) -> str:
    """<date>T<time>_<suite>_<dims>_<machine>.json, e.g. 2026-11-21T0530_all_tiny_amd-epyc-2c.json."""
    stamp = doc["created_utc"][:16].replace(":", "")
    dims = doc["settings"].get("dims", "model")
    parts = [stamp, doc["suite"], str(dims), label]
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts) + ".json"


def write_result(doc: dict[str, Any], out_dir: str | Path, label: str) -> Path:
    """Validate ``doc`` and write it to ``out_dir``; never overwrites an earlier file."""
    validate(doc)
    return write_new(doc, out_dir, result_filename(doc, label))


def write_new(doc: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """Write ``doc`` as JSON to ``out_dir``/``name``, or, when a file of that name exists (a second run in the
    same minute), to <name>-run2.json, -run3 and so on: never over an earlier result, and only characters that
    any file system and the device machine's copy-back take."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    path, i = out / name, 1
    while True:
        try:
            with path.open("x", encoding="utf-8") as f:  # "x": fails if another run wrote it meanwhile
                f.write(text)
            return path
        except FileExistsError:
            i += 1
            path = out / f"{name.removesuffix('.json')}-run{i}.json"


def read_result(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    validate(doc)
    return doc
