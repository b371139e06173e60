"""The loss: causal-LM cross-entropy with vocabulary logits only where a target is predicted, and the
prompt prefix every row shares run once per batch (`share_prefix`) or once per optimizer step
(`StepPrefix`)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from medqa.lean import LinearCrossEntropy, head_passthrough, plain_frozen_head


def shared_prefix_length(input_ids: torch.Tensor, first_kept: int) -> int:
    """Tokens every row of the batch starts with (e.g. the system prompt), stopping before the first
    position whose logits are needed and leaving each row at least one token of its own."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    differ = (~same).nonzero()
    n = int(differ[0]) if len(differ) else input_ids.shape[1]
    return max(0, min(n, first_kept, input_ids.shape[1] - 1))


def common_prefix(features: list[dict[str, Any]], minimum: int = 16) -> list[int]:
    """Tokens every training example starts with (system prompt and template), ending before any
    example's first target and leaving each example a token of its own; [] if shorter than `minimum`
    (below that the extra forward call costs more than it saves)."""
    if len(features) < 2:
        return []
    first = features[0]["input_ids"]
    n = min(len(f["input_ids"]) - 1 for f in features)
    for f in features:
        n = min(n, next((i for i, x in enumerate(f["labels"]) if x != -100), n + 1) - 1)
        ids = f["input_ids"]
        while n > 0 and ids[:n] != first[:n]:
            n = next(i for i in range(n) if ids[i] != first[i])
    return list(first[:n]) if n >= minimum else []


class StepPrefix:
    """The prefix every example starts with, run once per optimizer step instead of once per micro-batch.

    The weights only change at the optimizer step, so the prefix's keys and values are the same for all
    micro-batches of a step. The first micro-batch runs the prefix (with its autograd graph); the others
    continue from detached copies (leaves) whose gradients accumulate; the step's last micro-batch uses
    the graph itself, and its backward pass also hands the prefix keys/values the accumulated gradients
    (`add_earlier_gradients`), so the prefix's backward runs once, inside the step's last backward pass
    (under DDP, the synchronised one).

    Whatever multiplies the loss between `compute_loss` and its backward pass (GradScaler's fp16 loss
    scale, the Trainer's division by the accumulation steps) is the same for all micro-batches of a step
    (GradScaler changes its scale in `update()`, after the step) and is already in the accumulated
    gradients, so they are handed on as they are, not through the last loss (which would apply it twice).
    A non-finite accumulated gradient (an fp16 overflow in an earlier micro-batch) makes the whole step's
    gradients non-finite, so GradScaler skips the step as it would on the plain path.

    What holds: without LoRA dropout (or in eval mode) the loss and the gradients equal running the prefix
    in every micro-batch (up to float rounding). With dropout in training mode the prefix runs once, so
    ONE dropout mask over the prefix positions is shared by every row and micro-batch of the step (the
    plain path draws one per row and micro-batch): each row's mask has the same distribution, so the loss
    and the gradients are equal in expectation, but they are a different (more correlated) sample, not the
    plain path's draw for draw."""

    def __init__(self, ids: list[int]):
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.leaves: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.step: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def matches(self, input_ids: torch.Tensor) -> bool:
        p = len(self.ids)
        return input_ids.shape[1] > p and bool((input_ids[:, :p] == self.ids.to(input_ids.device)).all())

    def cache(self, model: Any, config: Any, rows: int, last: bool, step: Any = None
              ) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]] | None, int]:
        """A cache holding the prefix for `rows` rows; on the step's last micro-batch, the (prefix key or
        value, accumulated gradient) pairs to hand to `add_earlier_gradients` (None when there are none);
        and the prefix positions this call ran through the model (0 when the step's prefix was reused)."""
        from transformers import DynamicCache

        ran = 0
        if self.kv is None or step != self.step:  # a new step (a stale state never outlives its step)
            out = model(input_ids=self.ids[None].to(model.device), use_cache=True,
                        logits_to_keep=torch.zeros(0, dtype=torch.long))
            cache = out["cache"] if "cache" in out else out.get("past_key_values")
            if cache is None:
                return None, None, 0
            self.kv = [(layer.keys, layer.values) for layer in cache.layers]
            self.leaves, self.step, ran = None, step, len(self.ids)
        earlier = None
        if last:
            kv = self.kv
            if self.leaves is not None:
                earlier = [(t, leaf.grad) for pair, leaves in zip(self.kv, self.leaves)
                           for t, leaf in zip(pair, leaves) if leaf.grad is not None and t.requires_grad] or None
            self.kv = self.leaves = None
        else:
            if self.leaves is None:  # none for what needs no gradient (layer 0's keys: nothing trainable before)
                self.leaves = [tuple(t.detach().requires_grad_(t.requires_grad) for t in pair) for pair in self.kv]
            kv = self.leaves
        expanded = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv]
        return DynamicCache(expanded, config=config), earlier, ran

    @staticmethod
    def add_earlier_gradients(loss: torch.Tensor, earlier: list[tuple[torch.Tensor, torch.Tensor]]
                              ) -> torch.Tensor:
        """`loss` itself (same value), whose backward pass also gives each prefix key/value tensor its
        accumulated gradient as it is, whatever the loss's own gradient (e.g. a loss scale) is."""
        return StepPrefix._EarlierGradients.apply(loss, [g for _, g in earlier], *(t for t, _ in earlier))

    class _EarlierGradients(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, loss: torch.Tensor, grads: list[torch.Tensor], *kv: torch.Tensor) -> torch.Tensor:
            ctx.grads = grads
            return loss.clone()

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            grads, ctx.grads = ctx.grads, None
            # an overflow in an earlier micro-batch: non-finite gradients everywhere, so GradScaler skips the
            # step (checked on the device, no synchronisation)
            finite = torch.stack([torch.isfinite(t).all() for t in grads]).all()
            return (torch.where(finite, g, torch.full_like(g, float("nan"))), None, *grads)


def _cache_kwarg(model: Any) -> str:
    """The forward argument taking a KV cache: `cache` since Transformers 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(type(base))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def target_only_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                     share_prefix: bool = False, prefix_model: Any = None,
                     work: dict[str, int] | None = None, step_prefix: StepPrefix | None = None,
                     last_in_step: bool = True, step: Any = None, scale: float = 1.0,
                     fused_head: bool | str = False) -> torch.Tensor:
    """Causal-LM cross-entropy computing the vocabulary logits only at positions that predict a target
    token (`logits_to_keep` with the positions, shared by the rows of the batch). Equal to the model's
    own loss; normalised by `num_items_in_batch` (all target tokens of the accumulated batch) when given.

    `share_prefix`: the tokens all rows start with (the system prompt and template) are run once, not
    once per row; the rows continue from that prefix's keys and values (gradients flow through the prefix
    once). `prefix_model` runs the prefix (the unwrapped model under DDP).
    `step_prefix`: a prefix every example starts with, run once per optimizer step (see StepPrefix);
    `last_in_step` says whether this is the step's last micro-batch, `step` which step it is. The caller
    may scale the returned loss before its backward pass (GradScaler, the Trainer's division by the
    accumulation steps) as long as the factor is the same for all micro-batches of a step.
    Both prefix options give the plain path's loss and gradients without LoRA dropout (or in eval mode);
    with dropout in training mode the prefix positions share one dropout mask (for the batch, or for the
    whole step), which is equal in expectation but not draw for draw (see StepPrefix).
    `scale` multiplies the loss (e.g. by the number of processes under DDP, which averages gradients).
    `fused_head`: with a plain frozen vocabulary head, the head and the cross-entropy run as one chunked
    function that keeps no logits: medqa.lean.LinearCrossEntropy (True or "lean"), or Liger's fused
    linear-cross-entropy kernel ("liger", medqa.kernels.liger_linear_cross_entropy).
    `work` accumulates what was computed: token positions run through the model, logit positions."""
    inputs = dict(inputs)
    inputs.setdefault("use_cache", False)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    ids = inputs["input_ids"]
    rows, width = ids.shape
    runner = prefix_model or model
    p, ran, earlier, cache = _prefix_cache(runner, inputs, keep, share_prefix, step_prefix, last_in_step, step)
    if cache is not None and p:
        inputs.update(input_ids=ids[:, p:], use_cache=True, **{_cache_kwarg(runner): cache})
    else:
        p = 0
    keep_in = keep - p
    if work is not None:
        work["positions"] = work.get("positions", 0) + ran + rows * (width - p)
        work["logit_positions"] = work.get("logit_positions", 0) + (
            int((targets[:, keep] != -100).sum()) if fused_head else rows * len(keep))
    gold = targets[:, keep]
    loss = _summed_loss(model, plain_frozen_head(runner) if fused_head else None, inputs, keep_in, gold,
                        liger=fused_head == "liger")
    loss = loss / ((gold != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    if scale != 1.0:
        loss = loss * scale
    if earlier is not None:  # the earlier micro-batches' gradients for the prefix, at no cost to the value
        loss = StepPrefix.add_earlier_gradients(loss, earlier)
    return loss


def _prefix_cache(runner: Any, inputs: dict[str, Any], keep: torch.Tensor, share_prefix: bool,
                  step_prefix: StepPrefix | None, last_in_step: bool, step: Any) -> tuple[int, int, Any, Any]:
    """(prefix length, prefix positions run now, earlier micro-batches' prefix gradients, the prefix's
    cache) for a batch: the step's prefix, else the prefix this batch's rows share, else none (0, 0, None,
    None). Not for padding-free rows (position ids), nor when no position is a target."""
    ids = inputs["input_ids"]
    rows = ids.shape[0]
    p, ran, earlier, cache = 0, 0, None, None
    config = getattr(runner, "config", None)
    if ("position_ids" not in inputs and len(keep) and step_prefix is not None and len(step_prefix)
            and len(step_prefix) <= int(keep[0]) and step_prefix.matches(ids)):
        cache, earlier, ran = step_prefix.cache(runner, config, rows, last_in_step, step)
        if cache is not None:
            p = len(step_prefix)
    elif share_prefix and "position_ids" not in inputs and len(keep) and rows > 1:
        p = shared_prefix_length(ids, int(keep[0]))
        p = p if p >= 16 else 0  # below that the extra call costs more than it saves
        if p:
            out = runner(input_ids=ids[:1, :p], use_cache=True, logits_to_keep=torch.zeros(0, dtype=torch.long))
            # Transformers >= 5.2x names it `cache`
            cache = out["cache"] if "cache" in out else out.get("past_key_values")
            if cache is None:  # the model refused a cache (e.g. gradient checkpointing): the plain path
                p = 0
            else:
                cache.batch_repeat_interleave(rows)
                ran = p
    return p, ran, earlier, cache


def _summed_loss(model: Any, head: Any, inputs: dict[str, Any], keep_in: torch.Tensor, gold: torch.Tensor,
                 liger: bool = False) -> torch.Tensor:
    """The summed cross-entropy of the `gold` tokens predicted at positions `keep_in`: through the fused
    head and cross-entropy when `head` (a plain frozen head) is given (Liger's kernel with `liger`), else
    from the model's logits there."""
    if head is not None:
        with head_passthrough(head):  # the model's "logits" are its final hidden states at the kept positions
            hidden = model(**inputs, logits_to_keep=keep_in).logits
        rows_with_target = gold.reshape(-1) != -100  # positions kept for one row need not be targets of all
        h = hidden.reshape(-1, hidden.shape[-1])[rows_with_target].to(head.weight.dtype)
        if liger:
            from medqa import kernels

            return kernels.liger_linear_cross_entropy(h, head.weight, gold.reshape(-1)[rows_with_target])
        return LinearCrossEntropy.apply(h, head.weight, gold.reshape(-1)[rows_with_target])
    try:
        logits = model(**inputs, logits_to_keep=keep_in).logits.float()
    except TypeError:  # an architecture without logits_to_keep: all logits, then the kept positions
        logits = model(**inputs).logits[:, keep_in].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                             ignore_index=-100, reduction="sum")
