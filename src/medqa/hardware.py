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


def select_device(requested: str, available: dict[str, int], local_rank: int = 0, world_size: int = 1) -> str:
    """The torch device this process uses: a pure function of the request, the devices present
    (`{"cuda": n, "mps": 0/1, "xpu": n}`; ROCm GPUs count as cuda) and the process's place in a launch.

    Under torchrun / accelerate launch (world_size > 1) each process takes the GPU of its LOCAL_RANK, so
    ranks never share cuda:0; an explicit `cuda:N` that is not the rank's own GPU is refused."""
    kind, _, index = requested.partition(":")
    if kind not in ("auto", "cuda", "mps", "xpu", "cpu"):
        raise ConfigError(f"unknown device '{requested}' (auto, cpu, cuda, cuda:N, mps, xpu)")
    if kind == "auto":
        kind = next((k for k in ("cuda", "mps", "xpu") if available.get(k, 0) > 0), "cpu")
    if kind == "cpu":
        return "cpu"
    count = available.get(kind, 0)
    if count == 0:
        raise ConfigError(f"device '{requested}' is not available on this machine")
    if kind == "mps":
        return "mps"
    if index and not index.isdigit():
        raise ConfigError(f"device '{requested}': the index must be a number")
    if world_size > 1:
        if index and int(index) != local_rank:
            raise ConfigError(f"device '{requested}' under a {world_size}-process launch: each process uses the GPU "
                              f"of its LOCAL_RANK ({kind}:{local_rank} here); pass --model.device {kind} and choose "
                              "GPUs with CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES")
        if local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {count} {kind} device(s) are visible to this process")
        return f"{kind}:{local_rank}"
    n = int(index) if index else 0
    if n >= count:
        raise ConfigError(f"device '{requested}' is not available: {count} {kind} device(s) visible")
    return f"{kind}:{n}"


def launch_position() -> tuple[int, int]:
    """(LOCAL_RANK, WORLD_SIZE) set by torchrun / accelerate launch; (0, 1) for a plain process."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_rank() -> int:
    """The global RANK set by torchrun / accelerate launch (0 for a plain process), before any process group."""
    import os

    return int(os.environ.get("RANK", "0"))


def _available() -> dict[str, int]:
    return {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "mps": int(torch.backends.mps.is_available()),
            "xpu": torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0}


def detect(device: str = "auto") -> Hardware:
    """Pick the device (or honour an explicit one; the LOCAL_RANK's GPU under a launcher) and its best
    training dtype."""
    chosen = select_device(device, _available(), *launch_position())
    kind, _, index = chosen.partition(":")
    if kind == "cuda":
        i = int(index)
        backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        bf16 = _cuda_bf16(i)
        return Hardware(backend, chosen, torch.cuda.get_device_name(i), "bfloat16" if bf16 else "float16", bf16, True)
    if kind == "mps":
        return Hardware("mps", "mps", "Apple MPS", "float16", False, True)
    if kind == "xpu":
        return Hardware("xpu", chosen, torch.xpu.get_device_name(int(index)), "bfloat16", True, True)
    return Hardware("cpu", "cpu", "CPU", "float32", False, False)


def sharded_engine() -> str | None:
    """'fsdp' or 'deepspeed-zero3' when Accelerate launched this process to shard the model's parameters
    (its launcher sets these variables from the config file), else None (one whole model per process)."""
    import os

    def on(name: str) -> bool:
        return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes", "on")

    if on("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if on("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip() == "3":
        return "deepspeed-zero3"
    return None


def resolve_dtype(requested: str, hw: Hardware) -> torch.dtype:
    name = hw.dtype if requested == "auto" else requested
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ----------------------------------------------------------------------------- medqa doctor

ROCM_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION", "PYTORCH_ROCM_ARCH",
             "CUDA_VISIBLE_DEVICES")
# gfx targets that ROCm supports officially (data-centre Instinct and recent Radeon); others may need an override
ROCM_SUPPORTED = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1200", "gfx1201", "gfx908")


def _attention(flash_attn: bool) -> dict[str, bool]:
    out = {"sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
           "flash_attention_2": flash_attn,
           "eager": True}
    if torch.cuda.is_available():
        out["sdpa_flash_kernel"] = bool(torch.backends.cuda.flash_sdp_enabled())
    return out


def doctor() -> dict:
    """Everything a user needs to know about this machine before training, with advice.

    `kernels`: liger-kernel and flash-attn versions (None: not installed); `training_path`: what training
    the default model on the selected device would use (medqa.kernels.training_kernels)."""
    import os
    import platform

    from medqa import kernels
    from medqa.config import DEFAULT_MODEL

    selected = detect()
    installed = kernels.installed_kernels()
    plan = kernels.training_kernels(selected, kernels.DEFAULT_MODEL_TYPE, installed=installed)
    report: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_hip": getattr(torch.version, "hip", None),
        "torch_cuda": torch.version.cuda,
        "selected": selected.as_dict(),
        "devices": [],
        "attention": _attention(kernels.at_least(installed["flash_attn"], kernels.FLASH_ATTN_MIN)),
        "kernels": installed,
        "training_path": {"model": DEFAULT_MODEL, "model_type": kernels.DEFAULT_MODEL_TYPE} | plan.as_dict(),
        "env": {k: os.environ[k] for k in ROCM_VARS if k in os.environ},
        "advice": [],
    }
    hip = report["torch_hip"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            arch = getattr(p, "gcnArchName", None) if hip else f"sm_{p.major}{p.minor}"
            report["devices"].append({
                "index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "arch": arch,
                "bf16": _cuda_bf16(i), "fp16": True,
            })
            if hip and arch and arch.split(":")[0] not in ROCM_SUPPORTED and "HSA_OVERRIDE_GFX_VERSION" not in os.environ:
                report["advice"].append(f"GPU {i} ({arch}) is not an officially supported ROCm target: if kernels fail, "
                                        "try HSA_OVERRIDE_GFX_VERSION for the nearest supported target (consumer cards only).")
            if hip and arch and arch.startswith("gfx942") and "HSA_OVERRIDE_GFX_VERSION" in os.environ:
                report["advice"].append("MI300X (gfx942) is supported natively: unset HSA_OVERRIDE_GFX_VERSION.")
    elif torch.backends.mps.is_available():
        report["devices"].append({"index": 0, "name": "Apple MPS", "arch": "mps", "bf16": False, "fp16": True})
    else:
        report["devices"].append({"index": 0, "name": platform.processor() or platform.machine(), "arch": platform.machine(),
                                  "threads": torch.get_num_threads(), "bf16": False, "fp16": False})
        report["advice"].append("No GPU: training runs in fp32 on the CPU (bf16 matmul is ~100x slower without bf16 "
                                "hardware). Fine for the quickstart and tests; use a GPU for the Qwen3-1.7B recipe.")
    if hip and "CUDA_VISIBLE_DEVICES" in os.environ and "HIP_VISIBLE_DEVICES" not in os.environ:
        report["advice"].append("On ROCm prefer HIP_VISIBLE_DEVICES (CUDA_VISIBLE_DEVICES is honoured too, but "
                                "ROCR_VISIBLE_DEVICES/HIP_VISIBLE_DEVICES are what ROCm tools read).")
    if selected.backend in kernels.GPU_BACKENDS:
        if installed["liger_kernel"] is None:
            report["advice"].append("liger-kernel is not installed: training uses MedQA's lean autograd (fine); "
                                    f"{kernels.LIGER_FIX} for Liger's Triton kernels (fused RMSNorm, RoPE, SwiGLU "
                                    "and linear-cross-entropy).")
        elif not kernels.at_least(installed["liger_kernel"], kernels.LIGER_MIN):
            report["advice"].append(f"liger-kernel {installed['liger_kernel']} is older than {kernels.LIGER_MIN}: "
                                    f"not used; pip install -U liger-kernel")
        if not report["attention"]["flash_attention_2"]:
            report["advice"].append("flash-attn is not installed: SDPA is used (fine); "
                                    f"{kernels.FLASH_FIX} for padding-free training with flash_attention_2.")
    return report


def format_doctor(r: dict) -> str:
    from medqa.kernels import PATH_NAMES

    lines = [f"torch {r['torch']}" + (f" (ROCm/HIP {r['torch_hip']})" if r["torch_hip"] else "")
             + (f" (CUDA {r['torch_cuda']})" if r["torch_cuda"] else ""),
             f"selected: {r['selected']['backend']} {r['selected']['device']} ({r['selected']['name']}), "
             f"training dtype {r['selected']['dtype']}"]
    for d in r["devices"]:
        mem = f", {d['memory_gib']} GiB" if "memory_gib" in d else ""
        lines.append(f"  device {d['index']}: {d['name']} [{d['arch']}]{mem}, bf16 {'yes' if d['bf16'] else 'no'}, "
                     f"fp16 {'yes' if d['fp16'] else 'no'}")
    lines.append("attention: " + ", ".join(k for k, v in r["attention"].items() if v))
    if "kernels" in r:
        lines.append("kernels: " + ", ".join(f"{name} {r['kernels'][key] or 'not installed'}" for key, name in
                                             (("liger_kernel", "liger-kernel"), ("flash_attn", "flash-attn"))))
    if "training_path" in r:
        t = r["training_path"]
        batching = "padding-free" if t["batching"] == "padding_free" else "padded (balanced)"
        lines.append(f"training path ({t['model']}, {t['model_type']}): kernels {t['path']} "
                     f"({PATH_NAMES.get(t['path'], t['path'])}: {t['reason']}), attention {t['attention']}, "
                     f"{batching} batching")
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in r["env"].items()) or "no ROCm/CUDA device variables set"))
    lines += [f"advice: {a}" for a in r["advice"]]
    return "\n".join(lines)
