"""Memory-lean training: the model's own maths, fewer activations kept for the backward pass.

LoRA training without gradient checkpointing spends its memory on what autograd saves between the
forward and backward passes. Three blocks of a Llama/Qwen-style decoder save more than they need:

- **SwiGLU MLP** `down(silu(gate(x)) * up(x))`: autograd keeps `gate(x)`, `silu(gate(x))` and `up(x)`,
  three intermediate-size tensors per layer (half of all saved activations). `SwiGLU` keeps `gate(x)`
  and `up(x)` and recomputes the SiLU (element-wise, cheap) in the backward pass.
- **LoRA dropout** `lora_A(dropout(x))`: on CPU the dropout keeps a float mask and the A projection a
  dropped copy of x, for each adapted module; q and v read the same x, so four hidden-size float tensors
  per layer. `DropoutLinear` keeps x itself (shared by q and v) and a one-byte mask, and recomputes the
  dropped input in the backward pass. Same random draws as `torch.nn.Dropout` (bernoulli of 1 - p).
- **Vocabulary head + cross-entropy** (`LinearCrossEntropy`): the logits at every target position (a
  vocabulary-sized row each: 49k floats for SmolLM2, 152k for Qwen3) are kept three times around the
  backward pass (logits, log-softmax, their gradient). With a frozen head the gradient with respect to
  the hidden states is known in the forward pass (softmax - one-hot, times the head), so it is computed
  there, in chunks of rows, and only that hidden-size gradient is kept. Same FLOPs.
- **Grouped-query attention**: Transformers expands keys and values to every query head
  before SDPA when there is an attention mask; on CPU, SDPA's own GQA takes the mask, keeps the
  unexpanded keys and values and is faster. (On CUDA a mask with GQA falls back to the math kernel,
  so this is left to Transformers there.)

Results and gradients are the same (bit for bit on CPU, tested in tests/test_lean.py). `lean_training`
patches a model for the duration of a `with` block and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)  # what autograd's SiluBackward computes
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        return grad_gate, grad_up


class DropoutLinear(torch.autograd.Function):
    """linear(dropout(x, p), weight) saving x and a one-byte keep mask (not the float mask and the
    dropped copy). The mask is drawn as torch.nn.Dropout draws it on CPU: bernoulli(1 - p)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
        ctx.save_for_backward(x, keep, weight)
        ctx.p = p
        return F.linear(x * keep.to(x.dtype).div_(1 - p), weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, keep, weight = ctx.saved_tensors
        noise = keep.to(x.dtype).div_(1 - ctx.p)
        grad = grad.to(weight.dtype)  # under autocast the output (and its gradient) may be bf16/fp16
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(weight).to(x.dtype) * noise
        if ctx.needs_input_grad[1]:
            grad_w = grad.reshape(-1, grad.shape[-1]).t().mm((x * noise).reshape(-1, x.shape[-1]).to(weight.dtype))
        return grad_x, grad_w, None


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `linear(h, weight)` against `targets` (-100: ignored), in chunks of rows,
    the gradient for `h` computed in the forward pass (`weight` is frozen and gets none)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        chunk = max(1, 2**24 // weight.shape[0])  # at most 16 M logits (64 MB in fp32) at a time
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        for s in range(0, h.shape[0], chunk):
            t = targets[s:s + chunk]
            valid = t != -100
            t = t.clamp(min=0)
            logits = F.linear(h[s:s + chunk], weight).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * valid).sum()
            if grad is not None:
                p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                p[torch.arange(len(t), device=p.device), t] -= 1.0
                p.mul_(valid[:, None])
                grad[s:s + chunk] = p.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * g.to(grad.dtype) if grad is not None else None), None, None


@functools.cache
def _logits_are_the_head(cls: type) -> bool:
    """Whether `cls.forward` computes `logits = self.lm_head(hidden_states)` with nothing after it (read once
    per class from its source: no scaling or soft-capping)."""
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "logits = self.lm_head(hidden_states)\n\n        loss = None" in src


def plain_frozen_head(model: nn.Module) -> nn.Linear | None:
    """The model's vocabulary head if its logits are exactly `lm_head(final hidden states)` and the head is
    frozen without bias; else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head if _logits_are_the_head(type(base)) else None


@contextlib.contextmanager
def head_passthrough(head: nn.Module) -> Iterator[None]:
    """The head returns its input: the model's `logits` are then its final hidden states."""
    head.forward = lambda x: x
    try:
        yield
    finally:
        del head.forward


def _swiglu_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def _dropout_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    p = self._medqa_dropout
    if not self.training:
        return F.linear(x, self.weight)
    if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return DropoutLinear.apply(x, self.weight, p)
    return F.linear(F.dropout(x, p, True), self.weight)


def _is_swiglu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    return (all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj"))
            and (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"))


@contextlib.contextmanager
def lean_training(model: nn.Module, gqa: bool | None = None) -> Iterator[dict[str, int]]:
    """Patch `model` in place for memory-lean training; yields what was patched; restores on exit.

    `gqa`: let SDPA handle grouped-query attention with a mask (default: on CPU only)."""
    patched = {"swiglu_mlp": 0, "lora_dropout": 0, "gqa": 0}
    undo: list[Any] = []
    try:
        for module in model.modules():
            if _is_swiglu_mlp(module) and "forward" not in vars(module):
                module.forward = types.MethodType(_swiglu_mlp_forward, module)
                undo.append(lambda m=module: delattr(m, "forward"))
                patched["swiglu_mlp"] += 1
            lora_a, dropouts = getattr(module, "lora_A", None), getattr(module, "lora_dropout", None)
            if not isinstance(lora_a, nn.ModuleDict) or not isinstance(dropouts, nn.ModuleDict):
                continue
            variants = getattr(module, "lora_variant", {}) or {}  # DoRA etc. use the dropout themselves
            for name, a in lora_a.items():
                drop = dropouts[name] if name in dropouts else None
                if (name in variants or not isinstance(drop, nn.Dropout) or drop.p <= 0
                        or type(a) is not nn.Linear or a.bias is not None or "forward" in vars(a)):
                    continue
                a._medqa_dropout = drop.p
                a.forward = types.MethodType(_dropout_linear_forward, a)
                dropouts[name] = nn.Identity()

                def restore(m: nn.ModuleDict = dropouts, n: str = name, d: nn.Module = drop, lin: nn.Linear = a) -> None:
                    m[n] = d
                    del lin.forward, lin._medqa_dropout

                undo.append(restore)
                patched["lora_dropout"] += 1
        cpu = next(model.parameters()).device.type == "cpu"
        if (cpu if gqa is None else gqa) and "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ:
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"  # read by Transformers' sdpa_attention_forward per call
            undo.append(lambda: os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None))
            patched["gqa"] = 1
        yield patched
    finally:
        for fn in reversed(undo):
            fn()
