"""Host-to-device copies that do not wait for the device.

A pageable host-to-device copy synchronises the stream: the engine thread then waits for all queued device work,
and under load, where it shares the interpreter with the callers' threads, hands them the GIL for up to a switch
interval. Copies from pinned memory are queued instead, and values sent together travel in one copy.

Hidden copies wait too: a Python number stored through a tensor index (``state[rows] = 0.0``, an ``index_put_``)
sends the number from pageable memory. Six such stores made every live admission wait for its own encoder pass
(stop 26; PolicyState.reset now uses ``index_fill_``). tests/gpu launches admissions and steps under torch's sync
debug mode "error" to catch the next one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def upload(host: Tensor, device: torch.device) -> Tensor:
    """``host`` on ``device``: through pinned memory as a non-blocking copy on CUDA; as it is elsewhere."""
    if device.type != "cuda" or host.device.type == "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def upload_together(device: torch.device, *hosts: Tensor) -> list[Tensor]:
    """Host tensors of one dtype on ``device`` in one copy, each in its own shape (views of one buffer)."""
    packed = upload(torch.cat([h.reshape(-1) for h in hosts]), device)
    sizes = [h.numel() for h in hosts]
    return [part.view(h.shape) for part, h in zip(packed.split(sizes), hosts, strict=True)]
