"""Where a benchmark ran: CPU, memory, GPU, driver, CUDA and library versions, and voxserve's own revision.

Everything is read at run time from the machine itself; a value that cannot be read is recorded as None,
never guessed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
_LIBRARIES = ("torch", "numpy", "transformers", "ctranslate2", "tiktoken", "safetensors")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def source_digest() -> str:
    """sha256 over voxserve's Python sources (path and content), identifying the code even without git."""
    h = hashlib.sha256()
    package = REPO_ROOT / "voxserve"
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # missing package or no NVML: fall back to nvidia-smi
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_info(device: torch.device) -> dict[str, Any] | None:
    """The CUDA device's name, compute capability, memory, driver and CUDA / cuDNN versions; None without one."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "count": torch.cuda.device_count(),
        "driver": _driver_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": affinity,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
        },
        "ram_gib": _ram_gib(),
        "gpu": gpu_info(device),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "torch_build": torch.__version__,
        "voxserve": {
            "git_commit": commit,
            "git_dirty": bool(dirty) if dirty is not None and commit else None,
            "source_sha256": source_digest(),
        },
    }


def load_snapshot() -> dict[str, Any]:
    """How busy the machine is right now: load averages and, where the kernel reports it (Linux PSI), how much
    of the time runnable tasks waited for a CPU. Other work on a shared machine slows CPU figures; the result
    file records it, and :func:`contention_pct` turns two snapshots into the share of a run spent waiting."""
    snap: dict[str, Any] = {"monotonic_s": time.monotonic()}
    try:
        snap["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        snap["load_average"] = None
    try:
        line = Path("/proc/pressure/cpu").read_text(encoding="utf-8").splitlines()[0]
        fields = dict(kv.split("=") for kv in line.split()[1:])
        snap["cpu_pressure_pct"] = {"avg10": float(fields["avg10"]), "avg60": float(fields["avg60"])}
        snap["cpu_pressure_total_us"] = int(fields["total"])
    except (OSError, IndexError, KeyError, ValueError):
        snap["cpu_pressure_pct"] = None
    return snap


def contention_pct(start: dict[str, Any], end: dict[str, Any]) -> float | None:
    """Percent of the wall time between two snapshots in which some runnable task waited for a CPU (PSI
    "some"); near 0 on an otherwise idle machine. None where the kernel does not report it."""
    if "cpu_pressure_total_us" not in start or "cpu_pressure_total_us" not in end:
        return None
    wall_us = (end["monotonic_s"] - start["monotonic_s"]) * 1e6
    stalled = end["cpu_pressure_total_us"] - start["cpu_pressure_total_us"]
    return round(100.0 * stalled / wall_us, 1) if wall_us > 0 else None


def machine_label(info: dict[str, Any]) -> str:
    """A short file-name-safe name for the machine: the GPU when one was used, else the CPU and its cores."""
    if info.get("gpu"):
        name = info["gpu"]["name"]
    else:
        name = (
            f"{info['cpu']['model'] or 'cpu'}-{info['cpu']['usable_cores'] or info['cpu']['logical_cores']}c"
        )
    name = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine"
