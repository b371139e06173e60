"""Which process this is under torchrun / accelerate launch, and joining their process group."""

from __future__ import annotations

from typing import Any

import torch

from medqa.hardware import launch_position


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed(hw: Any) -> Any:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1): join the process group, one device per rank."""
    if launch_position()[1] <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return hw
    backend = "nccl" if hw.backend in ("cuda", "rocm") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(hw.device))  # detect() chose cuda:LOCAL_RANK
    torch.distributed.init_process_group(backend=backend)
    return hw
