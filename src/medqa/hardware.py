"""Hardware: which accelerator is here (ROCm, CUDA, MPS, XPU, CPU) and which dtype to train in.

ROCm builds of PyTorch expose AMD GPUs through the `torch.cuda` API; they are told apart by
`torch.version.hip`. CPUs without bf16 matrix units run bf16 ~100x slower than fp32, so CPU runs
are fp32; GPUs use bf16 where supported and fp16 otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from medqa.errors import ConfigError


@dataclass(frozen=True)
class Hardware:
    backend: str  # "rocm" | "cuda" | "mps" | "xpu" | "cpu"
    device: str  # torch device string
    name: str
    dtype: str  # "bfloat16" | "float16" | "float32"
    bf16: bool
    fp16: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _cuda_bf16(index: int) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch
        major, _ = torch.cuda.get_device_capability(index)
        return major >= 8


def detect(device: str = "auto") -> Hardware:
    """Pick the device (or honour an explicit one) and its best training dtype."""
    want = device.split(":")[0] if device != "auto" else None
    if want in (None, "cuda") and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        bf16 = _cuda_bf16(index)
        return Hardware(backend, f"cuda:{index}", torch.cuda.get_device_name(index),
                        "bfloat16" if bf16 else "float16", bf16, True)
    if want in (None, "mps") and torch.backends.mps.is_available():
        return Hardware("mps", "mps", "Apple MPS", "float16", False, True)
    if want in (None, "xpu") and hasattr(torch, "xpu") and torch.xpu.is_available():
        return Hardware("xpu", "xpu:0", torch.xpu.get_device_name(0), "bfloat16", True, True)
    if want not in (None, "cpu"):
        raise ConfigError(f"device '{device}' is not available on this machine")
    return Hardware("cpu", "cpu", "CPU", "float32", False, False)


def resolve_dtype(requested: str, hw: Hardware) -> torch.dtype:
    name = hw.dtype if requested == "auto" else requested
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
