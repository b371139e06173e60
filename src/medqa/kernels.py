"""Training kernels: which attention implementation and which kernel path a training run takes.

One pure decision, `training_kernels(hw, model_type, ...)`, from the device, the model family, the
training dtype, `train.kernels` and the packages installed (`installed_kernels()`, read from package
metadata: nothing is imported, so `medqa doctor` stays fast and a CPU machine never imports Triton).

Attention (`auto_attention`, applied by `load_model` when `model.attn_implementation` is unset):
flash_attention_2 when flash-attn (>= 2.3.3, Transformers' floor) is installed, the device is a CUDA or
ROCm GPU and the run is in bf16/fp16 (FlashAttention has no fp32 kernels); batches are then padding-free
(`train.batching auto`: examples concatenated in one row, no compute on padding). Otherwise Transformers'
default, sdpa (eager for a model without SDPA support), with balanced micro-batches.

Kernel paths (`train.kernels`), all computing the same loss and gradients up to float rounding:

- liger: Liger Kernel's Triton kernels (https://github.com/linkedin/Liger-Kernel) through the Trainer's
  `use_liger_kernel`: RMSNorm, RoPE, SwiGLU/GeGLU and the fused linear-cross-entropy (the vocabulary
  head and the loss in chunks, no logits kept). CUDA/ROCm only, for the model types in LIGER_MODEL_TYPES.
- lean: MedQA's own autograd functions (medqa.lean): SwiGLU and LoRA dropout saving less for the backward
  pass, the head and cross-entropy fused in chunks in plain PyTorch. Runs on every device: the CPU path,
  and the GPU path where Liger is missing or does not support the model (`train.kernels lean` elsewhere).
- plain: the model's own modules and PyTorch's autograd, nothing patched.

`auto` takes liger on a CUDA/ROCm GPU when liger-kernel is installed and supports the model type, else
lean (plain when `train.lean_activations` is false). An explicit `liger` that cannot run is an error
naming the fix, never a silent fallback. The table (`train.kernels auto`, bf16/fp16 on the GPUs):

    device      liger-kernel, model type    flash-attn   ->  kernels  attention          batching (auto)
    CUDA/ROCm   installed, supported        installed        liger    flash_attention_2  padding-free
    CUDA/ROCm   installed, supported        missing          liger    sdpa               balanced
    CUDA/ROCm   missing or unsupported      installed        lean     flash_attention_2  padding-free
    CUDA/ROCm   missing or unsupported      missing          lean     sdpa               balanced
    CPU/MPS/XPU (any)                       (any)            lean     sdpa               balanced

How the liger path keeps Liger's fused linear-cross-entropy. `Trainer(use_liger_kernel=True)` calls
liger-kernel's `_apply_liger_kernel_to_instance(model, **liger_kernel_config)` at the start of `train()`.
It rebinds this model's RMSNorm and MLP forwards to Liger's kernels (and RoPE in the model's module) and,
with `fused_linear_cross_entropy` (its default), replaces the model's `forward` with Liger's `lce_forward`,
which computes the loss from the hidden states without logits, but only when it is called with `labels`
(or `shift_labels`) in training mode. MedQA's target-only loss (`train.target_only_logits`, the default)
calls the model without labels and asks for the logits of the target positions only, so through that
forward Liger's fused loss would be silently lost (it would compute the logits and hand them back). So,
with target-only logits, the Trainer applies every Liger kernel except that forward (`liger_kernel_config`:
`fused_linear_cross_entropy` and `cross_entropy` off) and MedQA runs Liger's fused linear-cross-entropy
itself, on the final hidden states of the target positions (`liger_linear_cross_entropy`, in place of
medqa.lean.LinearCrossEntropy): Liger's Triton kernel on only the positions that have a target, with the
model's own forward (and so the shared prompt prefix) unchanged. With `train.target_only_logits false` the
Trainer's own compute_loss calls the model with labels, so Liger's forward is kept and computes the fused
loss over every position. MedQA's lean patches are never combined with Liger: both rebind the MLP's
forward, and lean's restore would remove Liger's. The fused loss needs a plain frozen head
(medqa.lean.plain_frozen_head; not a soft-capped one such as Gemma 2's) and no torch.compile; otherwise the
logits of the target positions are computed as they are.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medqa.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from medqa.hardware import Hardware

KERNEL_CHOICES = ("auto", "liger", "lean", "plain")
PATH_NAMES = {"liger": "Liger's Triton kernels", "lean": "MedQA's lean autograd", "plain": "plain PyTorch"}
GPU_BACKENDS = ("cuda", "rocm")  # where Liger's Triton kernels and flash-attn run
LIGER_MIN = "0.8.0"  # the model table below and the functional API used here; Transformers 5 support
FLASH_ATTN_MIN = "2.3.3"  # Transformers' floor for flash_attention_2
LIGER_FIX = 'pip install "medqa[liger]" (or pip install liger-kernel)'
FLASH_FIX = "pip install flash-attn --no-build-isolation (CUDA; on ROCm the ROCm build of flash-attention)"
DEFAULT_MODEL_TYPE = "llama"  # the offline default, SmolLM2-135M-Instruct, is a Llama architecture
# config.model_type values liger-kernel 0.8.x patches (its MODEL_TYPE_TO_APPLY_LIGER_FN); for any other
# type the Trainer's use_liger_kernel only logs that nothing was applied
LIGER_MODEL_TYPES = frozenset({
    "deepseek_v2", "deepseek_v3", "deepseek_v4", "exaone4", "falcon_h1", "gemma", "gemma2", "gemma3",
    "gemma3_text", "gemma4", "gemma4_text", "glm4", "glm4v", "glm4v_moe", "gpt_oss", "granite",
    "hunyuan_v1_dense", "hunyuan_v1_moe", "internvl", "llama", "llama4", "llama4_text", "llava", "ministral",
    "mistral", "mixtral", "mllama", "mllama_text_model", "muse_glimmer", "nemotron", "olmo2", "olmo3",
    "paligemma", "phi3", "pixtral", "qwen2", "qwen2_5_vl", "qwen2_5_vl_text", "qwen2_vl", "qwen2_vl_text",
    "qwen3", "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_moe", "qwen3_next",
    "qwen3_vl", "qwen3_vl_moe", "qwen3_vl_moe_text", "qwen3_vl_text", "smollm3", "smolvlm",
})


@dataclass(frozen=True)
class KernelPlan:
    """What a training run uses. `path`: liger | lean | plain. `attention`: the attention implementation.
    `batching`: what `train.batching auto` gives with it (padding_free with flash attention, else
    balanced). `use_liger_kernel`: the Trainer argument. `reason`: why, in a few words."""

    path: str
    attention: str
    batching: str
    use_liger_kernel: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        out.append(int(digits) if digits else 0)
    return tuple(out)


def at_least(version: str | None, floor: str) -> bool:
    return version is not None and _version_tuple(version) >= _version_tuple(floor)


def _dist_version(module: str, *dists: str) -> str | None:
    """The installed version of `module` (by its distribution name), without importing it; None if absent."""
    import importlib.metadata as md

    if importlib.util.find_spec(module) is None:
        return None
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


def installed_kernels() -> dict[str, str | None]:
    """{"liger_kernel": version or None, "flash_attn": version or None}, from package metadata only.
    flash-attn counts only as the FlashAttention-2 distribution (`flash-attn`; FA3/FA4 ship as others)."""
    return {"liger_kernel": _dist_version("liger_kernel", "liger-kernel", "liger_kernel"),
            "flash_attn": _dist_version("flash_attn", "flash-attn", "flash_attn")}


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def auto_attention(hw: Hardware, dtype: str | torch.dtype | None = None,
                   installed: dict[str, str | None] | None = None) -> str:
    """flash_attention_2 with flash-attn installed on a CUDA/ROCm GPU in bf16/fp16, else sdpa (Transformers'
    default, which itself falls back to eager for a model without SDPA)."""
    installed = installed_kernels() if installed is None else installed
    dtype = _dtype_name(dtype) if dtype is not None else hw.dtype
    if (hw.backend in GPU_BACKENDS and dtype in ("bfloat16", "float16")
            and at_least(installed.get("flash_attn"), FLASH_ATTN_MIN)):
        return "flash_attention_2"
    return "sdpa"


def _liger_blocker(hw: Hardware, model_type: str | None, installed: dict[str, str | None]
                   ) -> tuple[str, str] | None:
    """(why the liger path cannot run here, the fix), or None when it can."""
    version = installed.get("liger_kernel")
    if hw.backend not in GPU_BACKENDS:
        return (f"Liger's Triton kernels need a CUDA or ROCm GPU; this run is on {hw.backend}",
                "set train.kernels auto or lean on this device")
    if version is None:
        return "liger-kernel is not installed", LIGER_FIX
    if not at_least(version, LIGER_MIN):
        return f"liger-kernel {version} is older than {LIGER_MIN}", f"pip install -U \"liger-kernel>={LIGER_MIN}\""
    if model_type not in LIGER_MODEL_TYPES:
        return f"liger-kernel has no kernels for model type '{model_type}'", "set train.kernels auto or lean"
    return None


def training_kernels(hw: Hardware, model_type: str | None, dtype: str | torch.dtype | None = None,
                     requested: str = "auto", installed: dict[str, str | None] | None = None,
                     attn_implementation: str | None = None, lean: bool = True) -> KernelPlan:
    """The kernel path and attention of a training run (see the module docstring for the table).

    `model_type`: the model's `config.model_type`. `dtype`: the training dtype (default: the device's).
    `requested`: `train.kernels`. `installed`: `installed_kernels()` (probed when None). `attn_implementation`:
    the model's (or `model.attn_implementation`) when known, else the automatic choice. `lean`:
    `train.lean_activations`, what `auto` falls back to where Liger is not used."""
    if requested not in KERNEL_CHOICES:
        raise ConfigError(f"train.kernels '{requested}': one of {', '.join(KERNEL_CHOICES)}")
    installed = installed_kernels() if installed is None else installed
    attention = attn_implementation or auto_attention(hw, dtype, installed)
    batching = "padding_free" if "flash" in attention else "balanced"
    blocker = _liger_blocker(hw, model_type, installed)
    if requested == "liger":
        if blocker is not None:
            raise ConfigError(f"train.kernels liger: {blocker[0]}; {blocker[1]}")
        path, reason = "liger", "asked for (train.kernels liger)"
    elif requested in ("lean", "plain"):
        path, reason = requested, f"asked for (train.kernels {requested})"
    elif blocker is None:
        path, reason = "liger", f"liger-kernel {installed['liger_kernel']} on {hw.backend}, model type {model_type}"
    else:
        path = "lean" if lean else "plain"
        reason = blocker[0] + ("" if lean else "; train.lean_activations false")
    return KernelPlan(path, attention, batching, path == "liger", reason)


def liger_kernel_config(target_only_logits: bool) -> dict[str, bool]:
    """The Trainer's `liger_kernel_config`: Liger's loss-computing forward only where the model's own loss is
    used (target-only logits run Liger's fused linear-cross-entropy themselves: see the module docstring)."""
    return {"fused_linear_cross_entropy": not target_only_logits, "cross_entropy": False}


def liger_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` (-100: ignored) through Liger's fused
    linear-cross-entropy Triton kernel (no logits kept); the liger path's counterpart of
    medqa.lean.LinearCrossEntropy."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as e:
        raise ConfigError(f"train.kernels liger: cannot import liger-kernel ({e}); {LIGER_FIX}") from None
    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-100, reduction="sum")
