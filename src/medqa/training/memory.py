"""Training memory: what the device has free, what training will need (from the model's shape), and
the early, advised refusal when it does not fit."""

from __future__ import annotations

from typing import Any

import torch

from medqa.errors import ModelError
from medqa.hardware import Hardware, launch_position, launch_rank


def available_memory(hw: Hardware) -> int:
    """Bytes free on the training device (GPU: free memory; CPU/MPS: available RAM)."""
    if hw.backend in ("cuda", "rocm"):
        return int(torch.cuda.mem_get_info(torch.device(hw.device))[0])
    if hw.backend == "xpu":
        props = torch.xpu.get_device_properties(torch.device(hw.device))
        return int(props.total_memory - torch.xpu.memory_allocated(torch.device(hw.device)))
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_memory(model: Any, batch_size: int, seq_len: int, logit_positions: int, gradient_checkpointing: bool,
                    act_bytes: int, lean: bool = False) -> dict[str, int]:
    """Peak training memory, in bytes, from the model's shape (a deliberately conservative estimate).

    weights (as loaded) + trainable parameters with their gradient and two AdamW moments in fp32
    + activations kept for backward: per token and layer about 16 hidden-sized and 4
    intermediate-sized tensors (attention, norms, MLP), 9 and 2 with `lean` (medqa.lean), or 2
    hidden-sized with gradient checkpointing (plus one layer's worth recomputed) + the fp32 logits where they are computed
    (forward, log-softmax and gradient: 3 copies).
    """
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    inter = int(getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = batch_size * seq_len
    per_layer = ((9 * hidden + 2 * inter) if lean else (16 * hidden + 4 * inter)) * act_bytes
    if gradient_checkpointing:
        activations = tokens * (layers * 2 * hidden * act_bytes + per_layer)
    else:
        activations = tokens * layers * per_layer
    logits = batch_size * logit_positions * vocab * 4 * 3
    parts = {"weights": weights, "optimizer_and_grads": trainable * 16, "activations": activations, "logits": logits}
    parts["total"] = sum(parts.values())
    return parts


def describe_memory(estimate: dict[str, int]) -> str:
    gib = 2**30
    return (f"training needs about {estimate['total'] / gib:.1f} GiB (weights {estimate['weights'] / gib:.1f}, "
            f"activations {estimate['activations'] / gib:.1f}, logits {estimate['logits'] / gib:.1f})")


def check_memory(estimate: dict[str, int], free: int, device: str) -> None:
    gib = 2**30
    if estimate["total"] <= 0.9 * free:
        return
    raise ModelError(
        f"{describe_memory(estimate)} but {device} has {free / gib:.1f} GiB free. Lower train.batch_size (raise train.grad_accum to keep the effective batch), "
        "set train.gradient_checkpointing true, lower train.max_length, or on a GPU use model.load_in_4bit true "
        "(QLoRA). train.memory_check false skips this check"
    )



def training_memory(model: Any, feats: list[dict[str, Any]], tc: Any, dtype: str, hw: Hardware) -> dict[str, int]:
    """The estimate for this run's longest example (per GPU under FSDP / ZeRO-3) with the memory free on
    this rank's own device (cuda:LOCAL_RANK under a launcher); refused early when it does not fit
    (unless `train.memory_check` is off)."""
    from medqa.hardware import sharded_engine

    longest = max(f["length"] for f in feats)
    target_positions = max(sum(1 for x in f["labels"] if x != -100) for f in feats)
    mem = estimate_memory(model, tc.batch_size, longest, target_positions if tc.target_only_logits else longest,
                          tc.gradient_checkpointing, 4 if dtype == "float32" else 2, tc.lean_activations)
    if sharded_engine() is not None:  # FSDP / ZeRO-3: each GPU holds 1/world of the weights and optimizer state
        world = launch_position()[1]
        for k in ("weights", "optimizer_and_grads"):
            mem[k] = -(-mem[k] // world)
        mem["total"] = mem["weights"] + mem["optimizer_and_grads"] + mem["activations"] + mem["logits"]
        mem["sharded_over"] = world
    mem["free"] = available_memory(hw)
    if tc.memory_check:
        check_memory(mem, mem["free"], hw.device)
    if launch_rank() == 0:
        print(f"medqa: {describe_memory(mem)}; {mem['free'] / 2**30:.1f} GiB free on {hw.device}", flush=True)
    return mem
