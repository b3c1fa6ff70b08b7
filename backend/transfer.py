"""Host-to-device copies that do not stall the GPU.

A copy from ordinary (pageable) host memory makes the host wait until the GPU has drained its queue, so
every small tensor drawn on the CPU (noise, timesteps, cameras; drawn there so a seed repeats a run on any
device) would serialise the training loop. Pinned memory lets the copy be queued like a kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def host_to_device(x: Tensor, device: torch.device | str) -> Tensor:
    device = torch.device(device)
    if device.type != "cuda" or x.is_cuda:
        return x.to(device)
    # The caching host allocator keeps the pinned block alive until the queued copy has run.
    return x.pin_memory().to(device, non_blocking=True)


__all__ = ["host_to_device"]
