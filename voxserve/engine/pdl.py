"""Programmatic dependent launch (PDL): a decode-step kernel starts before the kernel it follows has finished.

A decode step at a small batch is a chain of ~300 short kernels, and between two of them the GPU drains one grid
before it launches the next: a few microseconds each, most of the step at batch 1. On Hopper and later a kernel
launched with PDL may start as soon as every program of its predecessor has signalled
(``gdc_launch_dependents``), and it waits (``gdc_wait``) for the predecessor to finish, its writes visible,
before it reads them. Our kernels use that head start to have their programs resident when the wait returns
(rows_linear can also pull its weights into L2 first, VOXSERVE_PDL=prefetch, which measured slower: see
``prefetching``). CUDA-graph capture keeps the dependency, so the captured step gets it too.

What keeps it correct (each kernel that launches with PDL follows these):
- it waits before its first store and before reading anything the step writes, so a kernel's writes never
  overlap its predecessor's reads or writes;
- it signals its dependents only after its own wait has returned, so at most one kernel runs ahead of the
  chain: everything the step wrote before its predecessor is complete when a kernel starts;
- before the wait it touches no memory, or (with the prefetch) only weights, which no kernel of the step
  writes, through an L2 prefetch that brings nothing into registers.

Off without CUDA, on GPUs before compute capability 9.0, in Triton's interpreter, and with VOXSERVE_PDL=0 (for
comparisons: bench/profile_step.py measures the step with and without).
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # the CPU build needs no Triton; older Tritons lack grid dependency control
    triton = None


# The most rows a step may have for its kernels to launch with PDL: measured on an H100 (bench/profile_step.py,
# graph replay of the large-v3 fused step), PDL took 1 row from 2.12 to 1.97 ms and 8 rows from 2.84 to 2.80, but
# 16 rows from 3.57 to 3.64 and 32 from 5.12 to 5.60 (programs waiting early hold multiprocessors that the
# running kernel's larger grid wanted).
MAX_ROWS = 8


def enabled(device: torch.device, rows: int) -> bool:
    """Whether a kernel of a step of ``rows`` rows on ``device`` launches with PDL (read at each launch, so
    VOXSERVE_PDL applies to graphs captured after it is set)."""
    if (
        triton is None
        or device.type != "cuda"
        or rows > MAX_ROWS
        or os.environ.get("VOXSERVE_PDL", "1") == "0"
    ):
        return False
    return os.environ.get("TRITON_INTERPRET", "0") != "1" and _capability(device.index) >= 9


@functools.cache
def _capability(index: int | None) -> int:
    return torch.cuda.get_device_capability(index)[0]


def prefetching() -> bool:
    """Whether rows_linear prefetches its weights into L2 before the wait (VOXSERVE_PDL=prefetch). Measured
    slower at every row count (H100: 1 row 2.20 ms against 1.97 without it), so off; kept for the comparison."""
    return os.environ.get("VOXSERVE_PDL") == "prefetch"


def launch_options(device: torch.device, rows: int) -> dict[str, bool]:
    """Keyword arguments for a Triton launch (empty where PDL is off, so nothing changes there)."""
    return {"launch_pdl": True} if enabled(device, rows) else {}


if triton is not None:

    @triton.jit
    def wait_for_previous():  # noqa: ANN201 - a Triton device function
        """Block until the previous kernel has finished (its writes visible), then let the next one launch."""
        gdc_wait()
        gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptrs):  # noqa: ANN001, ANN201 - a Triton device function
        """Ask for the 128-byte lines at ``ptrs`` to be brought into L2 (no registers, no fault on the lines)."""
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
        )
