"""Training: LoRA supervised fine-tuning with the Transformers Trainer.

What makes it fast (see BENCHMARKS.md, `benchmarks/train_speed.py`):
  * no compute on padding: padding-free batches (examples concatenated, positions restarting per
    example) with flash attention, length-grouped batches otherwise; the share of non-padding
    tokens is measured and reported;
  * target-only logits: the vocabulary projection runs only where a target token is predicted
    (the answer and its explanation), not on every prompt position;
  * no gradient checkpointing unless asked (it recomputes the forward pass to save memory).

The run directory gets:
  adapter/            the LoRA adapter (safetensors) and the tokenizer (the best one, with eval_size)
  best/               the best adapter so far by held-out accuracy, and best.json (with eval_size)
  config.yaml         the resolved config
  metrics.jsonl       one line per logging step (loss, lr, grad norm, tokens/s, non-padding share,
                      eval accuracy)
  tensorboard/        the same, for TensorBoard (`tensorboard --logdir OUT/tensorboard`)
  train_curves.png    loss and held-out accuracy against steps; train_report.md shows it
  train_summary.json  steps, wall time, examples/s, tokens/s, truncation, memory estimate
  checkpoints/        Trainer checkpoints (adapter, optimizer, scheduler, RNG, data position)
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from medqa.config import RunConfig, dump_config
from medqa.data import MCQRecord
from medqa.errors import ConfigError, DataError, ModelError
from medqa.format import PromptFormat
from medqa.hardware import Hardware, detect
from medqa.io import atomic_write_json, atomic_write_text
from medqa.modeling import resolve_base, resolve_protocol
from medqa.lean import LinearCrossEntropy, head_passthrough, lean_training, plain_frozen_head


def build_features(fmt: PromptFormat, records: list[MCQRecord], max_length: int,
                   completion_only: bool = True) -> tuple[list[dict], dict[str, int]]:
    """Token ids and labels per example (labels -100 on the prompt unless `completion_only` is off)."""
    feats, stats = [], {"examples": 0, "truncated": 0, "dropped_too_long": 0}
    for r in records:
        ex = fmt.encode_example(r, max_length)
        if ex is None:
            stats["dropped_too_long"] += 1
            continue
        stats["truncated"] += int(ex.pop("truncated"))
        if not completion_only:
            ex["labels"] = list(ex["input_ids"])
        ex["length"] = len(ex["input_ids"])  # for length-grouped batches
        feats.append(ex)
    stats["examples"] = len(feats)
    if not feats:
        raise DataError("train", None, None, f"no example fits max_length={max_length}")
    return feats, stats


class TokenCounter:
    """Counts real and padded token slots of the batches a collator builds."""

    def __init__(self) -> None:
        self.tokens = 0
        self.slots = 0

    def count(self, tokens: int, slots: int) -> None:
        self.tokens += tokens
        self.slots += slots

    @property
    def non_padding_share(self) -> float:
        return self.tokens / self.slots if self.slots else 1.0


class PadCollator(TokenCounter):
    """Right-pads input_ids with the pad token and labels with -100."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        self.count(int(mask.sum()), mask.numel())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class FlatCollator(TokenCounter):
    """Padding-free: one row of concatenated examples, position ids restarting at each example
    (Transformers' DataCollatorWithFlattening); attention stays within each example."""

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        super().__init__()
        self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = self.inner([{"input_ids": b["input_ids"], "labels": b["labels"]} for b in batch])
        n = out["input_ids"].numel()
        self.count(n, n)
        # without a KV cache Transformers reads the restarting position ids as separate sequences; with
        # one (the default use_cache=True, even in training) SDPA/eager would attend across examples
        out["use_cache"] = False
        return out


def resolve_batching(choice: str, model: Any) -> str:
    """auto: padding-free where attention is computed per example without a mask (flash attention),
    balanced otherwise (SDPA/eager would need a dense block-diagonal mask over the whole row).

    balanced: Transformers' BatchRebalanceSampler: each optimizer step takes batch_size x grad_accum
    random examples, sorts them by length and cuts them into micro-batches of about equal padded size
    (fewer rows when long, more when short), so little padding and a peak memory set by the average
    micro-batch, not by batch_size of the longest examples as with length_grouped."""
    if choice != "auto":
        return choice
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return "padding_free" if "flash" in impl else "balanced"


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` whose files are all there and readable; an incomplete or corrupt
    newer one (a kill during saving, a torn file) is reported and skipped."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ck in found:
        problem = _checkpoint_problem(ck)
        if problem is None:
            return ck
        print(f"medqa: skipping incomplete or corrupt checkpoint {ck} ({problem})", flush=True)
    return None


def _checkpoint_problem(ck: Path) -> str | None:
    missing = [f for f in CHECKPOINT_FILES if not (ck / f).is_file() or (ck / f).stat().st_size == 0]
    if missing:
        return "missing: " + ", ".join(missing)
    try:
        json.loads((ck / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json unreadable"
    try:  # the header and every tensor's byte range must be intact
        from safetensors import safe_open

        with safe_open(str(ck / "adapter_model.safetensors"), framework="pt") as f:
            for k in f.keys():
                f.get_slice(k)
    except Exception as e:  # noqa: BLE001 - any failure to open means a damaged file
        return f"adapter_model.safetensors unreadable: {type(e).__name__}"
    for name in ("optimizer.pt", "scheduler.pt"):
        try:
            torch.load(ck / name, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            return f"{name} unreadable: {type(e).__name__}"
    return None


RUN_FILE = "medqa_run.json"  # in every checkpoint: the identity of the run that wrote it
# what a run writes into OUT; --overwrite removes exactly these (anything else in OUT is left alone)
RUN_OUTPUTS = ("checkpoints", "best", "adapter", "eval_before", "eval_after", "tensorboard", "metrics.jsonl",
               "config.yaml", "train_summary.json", "run_summary.json", "train_report.md", "train_curves.png",
               "quickstart.md")
# settings a resumed run may change: how long it runs (train longer), how it reports, and how it computes
# the same gradients (e.g. gradient checkpointing after running out of memory)
_NOT_IDENTITY = {"train": {"resume", "overwrite", "report_to", "memory_check", "logging_steps", "save_steps",
                           "save_total_limit", "max_steps", "epochs", "eval_steps", "keep_best",
                           "early_stopping_patience", "gradient_checkpointing", "torch_compile", "lean_activations",
                           "shared_prefix", "target_only_logits"}}


def run_identity(cfg: RunConfig) -> dict[str, Any]:
    """What makes two runs the same training run: the model, adapter settings, data (evaluation sets too:
    they decide which questions are removed from training), training settings and prompt protocol; with
    the sha256 of that. Output folder, logging and tracking settings are not part of it."""
    import hashlib

    tree = cfg.model_dump(mode="json", exclude={"out", "hardware", "eval"})
    for section, keys in _NOT_IDENTITY.items():
        for k in keys:
            tree[section].pop(k, None)
    tree["eval"] = {"protocol": resolve_protocol(cfg)}
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()
    return {"config_sha256": digest, "config": tree}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def check_checkpoint_belongs(ck: Path, identity: dict[str, Any]) -> None:
    """A resume continues only a checkpoint written by the same run (same config_sha256)."""
    f = ck / RUN_FILE
    if not f.is_file():
        raise ConfigError(f"{ck} was not written by this run (it has no {RUN_FILE}: an older MedQA or another tool); "
                          "refusing to resume from it. Train into a new --out, or pass --overwrite to start over")
    theirs = json.loads(f.read_text(encoding="utf-8"))
    if theirs.get("config_sha256") != identity["config_sha256"]:
        diff = _differences(theirs.get("config", {}), identity["config"])
        raise ConfigError(f"{ck} belongs to another run (config differs: {'; '.join(diff[:6]) or 'unknown'}); "
                          "refusing to resume it with this config. Resume with the run's own config "
                          f"({ck.parent.parent / 'config.yaml'}), train into a new --out, or pass --overwrite")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """A run never mixes with an earlier one: a non-empty OUT is refused unless `resume` (continue it) or
    `overwrite` (its MedQA outputs are removed first; other files are left alone). Returns what was removed."""
    if resume and overwrite:
        raise ConfigError("train.resume and train.overwrite exclude each other: continue the run, or replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a run folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or resume:
        return []
    if not overwrite:
        shown = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "")
        raise ConfigError(f"{out} already holds files ({shown}); pass --resume to continue that run, --overwrite "
                          "to replace its outputs, or choose a new --out")
    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


# ----------------------------------------------------------------------------- memory estimate

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


def check_memory(estimate: dict[str, int], free: int, device: str) -> None:
    gib = 2**30
    if estimate["total"] <= 0.9 * free:
        return
    raise ModelError(
        f"training needs about {estimate['total'] / gib:.1f} GiB (weights {estimate['weights'] / gib:.1f}, activations "
        f"{estimate['activations'] / gib:.1f}, logits {estimate['logits'] / gib:.1f}) but {device} has "
        f"{free / gib:.1f} GiB free. Lower train.batch_size (raise train.grad_accum to keep the effective batch), "
        "set train.gradient_checkpointing true, lower train.max_length, or on a GPU use model.load_in_4bit true "
        "(QLoRA). train.memory_check false skips this check"
    )


# ----------------------------------------------------------------------------- the trainer

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
                     fused_head: bool = False) -> torch.Tensor:
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
    function that keeps no logits (medqa.lean.LinearCrossEntropy).
    `work` accumulates what was computed: token positions run through the model, logit positions."""
    inputs = dict(inputs)
    inputs.setdefault("use_cache", False)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    ids = inputs["input_ids"]
    rows, width = ids.shape
    p, ran, earlier, cache = 0, 0, None, None
    runner = prefix_model or model
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
    head = plain_frozen_head(runner) if fused_head else None
    if head is not None:
        with head_passthrough(head):  # the model's "logits" are its final hidden states at the kept positions
            hidden = model(**inputs, logits_to_keep=keep_in).logits
        rows_with_target = gold.reshape(-1) != -100  # positions kept for one row need not be targets of all
        loss = LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1])[rows_with_target].to(head.weight.dtype),
                                        head.weight, gold.reshape(-1)[rows_with_target])
    else:
        try:
            logits = model(**inputs, logits_to_keep=keep_in).logits.float()
        except TypeError:  # an architecture without logits_to_keep: all logits, then the kept positions
            logits = model(**inputs).logits[:, keep_in].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
    loss = loss / ((gold != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    if scale != 1.0:
        loss = loss * scale
    if earlier is not None:  # the earlier micro-batches' gradients for the prefix, at no cost to the value
        loss = StepPrefix.add_earlier_gradients(loss, earlier)
    return loss


def _trainer_class():
    from transformers import Trainer

    class MedQATrainer(Trainer):
        """Trainer with target-only logits and shared prefixes, atomic checkpoints, seeded length-grouped
        order, and tokens/s and the non-padding share in the logs."""

        token_counter: TokenCounter | None = None
        target_only_logits: bool = True
        share_prefix: bool = False
        step_prefix: StepPrefix | None = None
        fused_head: bool = False
        work: dict[str, int] | None = None
        run_identity: dict[str, Any] | None = None
        _last_log: tuple[float, int] | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if not self.target_only_logits or return_outputs or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = target_only_loss(model, inputs, num_items_in_batch, share_prefix=self.share_prefix,
                                    prefix_model=self.accelerator.unwrap_model(model), work=self.work,
                                    step_prefix=self.step_prefix if self.share_prefix else None,
                                    last_in_step=self.accelerator.sync_gradients, step=self.state.global_step,
                                    # as Trainer.compute_loss: DDP averages gradients
                                    scale=self.accelerator.num_processes if num_items_in_batch is not None
                                    and self.args.average_tokens_across_devices else 1.0,
                                    fused_head=self.fused_head)
            return loss

        _staging: str | None = None

        def _get_output_dir(self, trial):  # noqa: ANN001
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):  # noqa: ANN001
            """Atomic checkpoints: written into OUT/checkpoints/.staging, then renamed into place, so a
            `checkpoint-N` folder is either complete or absent (a kill or a full disk mid-save)."""
            from transformers.trainer_utils import rotate_checkpoints

            run_dir = super()._get_output_dir(trial)
            name = f"checkpoint-{self.state.global_step}"
            staging = os.path.join(run_dir, ".staging")
            if self.args.should_save:
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self._staging = staging
            try:
                super()._save_checkpoint(model, trial)
            except BaseException:
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)  # e.g. a full disk: no debris
                raise
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()  # every rank's files (e.g. its RNG state) are written
            if self.args.should_save:
                if self.run_identity is not None:  # which run this checkpoint belongs to (checked on resume)
                    with open(os.path.join(staging, name, RUN_FILE), "w", encoding="utf-8") as f:
                        json.dump(self.run_identity, f)
                final = os.path.join(run_dir, name)
                if os.path.exists(final):  # a leftover of an earlier, interrupted run
                    shutil.rmtree(final)
                os.replace(os.path.join(staging, name), final)
                with contextlib.suppress(OSError):
                    os.rmdir(staging)
                rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            self.accelerator.wait_for_everyone()

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
            sampler = super()._get_train_sampler(train_dataset)
            if self.args.train_sampling_strategy == "batch_rebalance" and sampler is not None:
                sampler.seed = self.args.seed  # Transformers leaves it at 42 whatever the run's seed
                # balance the positions each micro-batch runs: a prefix run once per step does not count
                p = len(self.step_prefix) if self.step_prefix is not None else 0
                sampler.lengths = [max(1, n - p) for n in sampler.lengths]
            if self.args.train_sampling_strategy != "group_by_length" or sampler is None:
                return sampler
            ds = train_dataset if train_dataset is not None else self.train_dataset
            return _seeded_length_sampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                          ds["length"], self.args.seed)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self.token_counter is not None:
                now = time.perf_counter()
                counts = torch.tensor([self.token_counter.tokens, self.token_counter.slots], dtype=torch.float64,
                                      device=self.args.device)
                if self.accelerator.num_processes > 1:
                    counts = self.accelerator.reduce(counts, reduction="sum")
                tokens, slots = (int(x) for x in counts.tolist())
                if self._last_log is not None:
                    t0, tok0 = self._last_log
                    logs["tokens_per_second"] = round((tokens - tok0) / max(now - t0, 1e-9), 1)
                logs["non_padding_share"] = round(tokens / slots, 4) if slots else 1.0
                self._last_log = (now, tokens)
            super().log(logs, start_time)

    return MedQATrainer


def _seeded_length_sampler(batch_size: int, lengths: list[int], seed: int):
    """Length-grouped order drawn from seed + epoch (not the global RNG): a resumed run, every rank
    of a data-parallel run and an uninterrupted run all see the same batches."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            return super().__iter__()

    return EpochSeeded(batch_size, lengths=list(lengths))


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and state.is_world_process_zero:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsLog()


class HeldOutEval:
    """Scores held-out questions with the fast letter scorer every `every` steps; keeps the best
    adapter in OUT/best (atomically); asks the Trainer to stop after `patience` evaluations
    without improvement. Its state lives in OUT/best/best.json, so a resumed run continues it."""

    def __init__(self, fmt: PromptFormat, records: list[MCQRecord], batch_size: int, every: int, out: Path,
                 patience: int | None, resume_step: int | None):
        self.fmt, self.records, self.batch_size, self.every = fmt, records, batch_size, every
        self.dir = out / "best"
        self.patience = patience
        self.trainer: Any = None
        self.state = {"step": None, "accuracy": -1.0, "evals_since_best": 0, "history": []}
        if resume_step is not None and (self.dir / "best.json").is_file():
            saved = json.loads((self.dir / "best.json").read_text())
            # forget evaluations logged after the checkpoint the run restarts from: the best step, its accuracy
            # and the evaluations since it are recomputed from what is left, as if the run had stopped there
            self.state = self.state_at(saved["history"], resume_step)
            if saved.get("step") is not None and saved["step"] > resume_step:
                # the saved best adapter comes from a step the resumed run will redo; the best one before the
                # checkpoint was overwritten by it, so none is kept until the run improves again
                print(f"medqa: the best adapter in {self.dir} is from step {saved['step']}, after the checkpoint "
                      f"(step {resume_step}); it is discarded", flush=True)
                shutil.rmtree(self.dir / "adapter", ignore_errors=True)
        elif resume_step is None and self.dir.exists():
            shutil.rmtree(self.dir)

    @staticmethod
    def state_at(history: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """The early-stopping state after the evaluations up to `step`, replayed as the callback keeps it."""
        state: dict[str, Any] = {"step": None, "accuracy": -1.0, "evals_since_best": 0, "history": []}
        for h in history:
            if h["step"] > step:
                continue
            state["history"].append(h)
            if h["eval_accuracy"] > state["accuracy"]:
                state.update(step=h["step"], accuracy=h["eval_accuracy"], evals_since_best=0)
            else:
                state["evals_since_best"] += 1
        return state

    def score(self, model: Any) -> dict[str, float]:
        import numpy as np

        from medqa.evaluate import score_records

        was_training = model.training
        model.eval()
        probs = score_records(model, self.fmt, self.records, self.batch_size, progress=False, desc="held-out")
        model.train(was_training)
        answers = np.array([r.answer for r in self.records])
        pred = np.array([int(np.argmax(p)) for p in probs])
        gold_p = np.array([max(float(p[a]), 1e-12) for p, a in zip(probs, answers)])
        return {"eval_accuracy": float((pred == answers).mean()), "eval_nll": float(-np.log(gold_p).mean())}

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Cb(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                last = state.global_step >= state.max_steps
                if state.global_step % outer.every and not last:
                    return control
                if any(h["step"] == state.global_step for h in outer.state["history"]):
                    return control  # already scored before a resume
                metrics = outer.score(model)
                outer.trainer.log(dict(metrics))
                acc = metrics["eval_accuracy"]
                outer.state["history"].append({"step": state.global_step, **metrics})
                if acc > outer.state["accuracy"]:
                    outer.state.update(step=state.global_step, accuracy=acc, evals_since_best=0)
                    if state.is_world_process_zero:
                        outer.save_best(model)
                else:
                    outer.state["evals_since_best"] += 1
                    if outer.patience and outer.state["evals_since_best"] >= outer.patience:
                        print(f"medqa: early stopping at step {state.global_step}: no improvement in "
                              f"{outer.patience} evaluations (best {outer.state['accuracy']:.1%} at step "
                              f"{outer.state['step']})", flush=True)
                        control.should_training_stop = True
                if state.is_world_process_zero:
                    outer.dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(outer.dir / "best.json", outer.state)
                return control

        return Cb()

    def save_best(self, model: Any) -> None:
        save_adapter(model, None, self.dir / "adapter")

    def load_best_into(self, model: Any) -> bool:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        f = self.dir / "adapter" / "adapter_model.safetensors"
        if self.state["step"] is None or not f.is_file():
            return False
        set_peft_model_state_dict(model, load_file(str(f), device=str(next(model.parameters()).device)))
        return True


def save_adapter(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any] | None = None) -> Path:
    """Save the adapter (and tokenizer) into a temporary folder beside `dest`, then swap it in: `dest` is
    the old complete adapter or the new complete one, never a half-written one (a full disk, a kill).

    `meta` ({"base_model": ..., "protocol": ...}) is written as `medqa_adapter.json` with the adapter, so
    that predict, the demo and a Space load the right base model with the protocol it was trained with."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if meta is not None:
            from medqa.modeling import write_adapter_meta

            write_adapter_meta(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _report_to(requested: list[str]) -> list[str]:
    """Trackers that are installed; a missing one is named, not a crash deep in the Trainer."""
    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "trackio": ("trackio",),
                "wandb": ("wandb",)}
    out = []
    for r in requested:
        if r == "none":
            continue
        if not any(importlib.util.find_spec(m) for m in packages.get(r, (r,))):
            print(f"medqa: train.report_to {r}: the package is not installed, skipping it", flush=True)
            continue
        out.append(r)
    return out


def train(
    cfg: RunConfig,
    model: Any,
    tokenizer: Any,
    records: list[MCQRecord],
    hw: Hardware | None = None,
    progress: bool = True,
    eval_records: list[MCQRecord] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model` (already LoRA-wrapped) on `records`; write the run directory; return a summary.

    `eval_records`: held-out questions scored every `train.eval_steps` steps (best adapter kept)."""
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    from medqa.hub import library_versions

    hw = hw or detect(cfg.model.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    set_seed(cfg.train.seed)
    tc = cfg.train
    fmt = PromptFormat(tokenizer, resolve_protocol(cfg))
    feats, stats = build_features(fmt, records, tc.max_length, tc.completion_only_loss)
    batching = resolve_batching(tc.batching, model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    lengths = sorted(f["length"] for f in feats)
    target_positions = max(sum(1 for x in f["labels"] if x != -100) for f in feats)
    mem = estimate_memory(model, tc.batch_size, lengths[-1], target_positions if tc.target_only_logits else lengths[-1],
                          tc.gradient_checkpointing, 4 if dtype == "float32" else 2, tc.lean_activations)
    from medqa.hardware import sharded_engine

    if sharded_engine() is not None:  # FSDP / ZeRO-3: each GPU holds 1/world of the weights and optimizer state
        world = int(os.environ.get("WORLD_SIZE", "1"))
        for k in ("weights", "optimizer_and_grads"):
            mem[k] = -(-mem[k] // world)
        mem["total"] = mem["weights"] + mem["optimizer_and_grads"] + mem["activations"] + mem["logits"]
        mem["sharded_over"] = world
    mem["free"] = available_memory(hw)  # this rank's own device (cuda:LOCAL_RANK under a launcher)
    if tc.memory_check:
        check_memory(mem, mem["free"], hw.device)
    dataset = Dataset.from_list(feats)
    report_to = _report_to(tc.report_to)
    args = TrainingArguments(**_training_kwargs(tc, out, dtype, hw, batching, report_to, progress))
    metrics_path = out / "metrics.jsonl"
    shutil.rmtree(out / "checkpoints" / ".staging", ignore_errors=True)  # a save interrupted by a kill
    resume_from = last_complete_checkpoint(out / "checkpoints") if tc.resume else None
    identity = run_identity(cfg)
    if resume_from is not None:
        check_checkpoint_belongs(resume_from, identity)  # never another run's adapter and optimizer
    start_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"] if resume_from else 0
    if resume_from is None:
        metrics_path.unlink(missing_ok=True)
    else:  # keep the log of the steps already done, drop anything logged after that checkpoint
        kept = [x for x in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if x.strip() and json.loads(x).get("step", 0) <= start_step]
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))
        print(f"medqa: resuming from {resume_from} (step {start_step})", flush=True)
    collator: TokenCounter = FlatCollator() if batching == "padding_free" else PadCollator(tokenizer.pad_token_id)
    callbacks = [_metrics_callback(metrics_path)]
    held_out = None
    if eval_records:
        held_out = HeldOutEval(fmt, eval_records, cfg.eval.batch_size, tc.eval_steps, out, tc.early_stopping_patience,
                               resume_step=start_step if resume_from else None)
        callbacks.append(held_out.callback())
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.token_counter = collator
    trainer.run_identity = identity
    for cb in trainer.callback_handler.callbacks:  # TensorBoard events into the run directory
        if type(cb).__name__ == "TensorBoardCallback":
            cb.logging_dir = str(out / "tensorboard")
    trainer.target_only_logits = tc.target_only_logits
    trainer.work = {}
    # the prefix pass runs on the unwrapped model: proven under DDP (tests), not enabled under sharded engines
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    # gradient checkpointing turns the KV cache off in training, so there is no prefix cache to share
    trainer.share_prefix = (tc.shared_prefix and batching != "padding_free" and not sharded
                            and not tc.gradient_checkpointing)
    trainer.fused_head = tc.lean_activations and not tc.torch_compile
    if trainer.share_prefix:  # the system prompt and template every example starts with: once per optimizer step
        trainer.step_prefix = StepPrefix(common_prefix(feats))
    if held_out is not None:
        held_out.trainer = trainer
    lean = lean_training(model) if tc.lean_activations else contextlib.nullcontext({})
    t = time.perf_counter()
    with lean as lean_patched:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t
    best = None
    if held_out is not None:
        best = {k: held_out.state[k] for k in ("step", "accuracy")} | {"history": held_out.state["history"],
                                                                         "kept": False}
        if tc.keep_best:
            best["kept"] = held_out.load_best_into(model)
    adapter_dir = out / "adapter"
    if trainer.is_world_process_zero():
        save_adapter(model, tokenizer, adapter_dir,
                     meta={"base_model": resolve_base(cfg.model), "protocol": fmt.protocol})
    n_label_tokens = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
    n_tokens = sum(f["length"] for f in feats)
    epochs_done = trainer.state.epoch or 0.0
    # throughput of this process's share of the run (a resumed run timed only the steps it did)
    share = (trainer.state.global_step - start_step) / trainer.state.global_step if trainer.state.global_step else 0.0
    summary = {
        "model": resolve_base(cfg.model),
        "hardware": hw.as_dict(),
        "processes": trainer.accelerator.num_processes,
        "dtype": dtype,
        "protocol": fmt.name,
        "batching": batching,
        "target_only_logits": tc.target_only_logits,
        "shared_prefix": trainer.share_prefix and tc.target_only_logits,
        "step_prefix_tokens": len(trainer.step_prefix) if trainer.step_prefix is not None else 0,
        "completion_only_loss": tc.completion_only_loss,
        "gradient_checkpointing": tc.gradient_checkpointing,
        "lean_activations": dict(lean_patched) | {"fused_head": bool(trainer.fused_head and trainer.target_only_logits
                                                                   and plain_frozen_head(model) is not None)},
        "steps": trainer.state.global_step,
        "epochs": tc.epochs,
        "epochs_done": round(epochs_done, 4),
        "train_loss": result.training_loss,
        "seconds": round(seconds, 2),
        "resumed_from_step": start_step,
        "examples_per_second": round(stats["examples"] * epochs_done * share / seconds, 3) if seconds else None,
        "tokens_per_second": round(n_tokens * epochs_done * share / seconds, 1) if seconds else None,
        "non_padding_share": round(collator.non_padding_share, 4),
        "data": stats,
        "tokens": n_tokens,
        "label_tokens": n_label_tokens,
        "length_p50_p90_max": [lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.9)], lengths[-1]],
        "memory_estimate_bytes": mem,
        # positions run through the model (padding included, a shared prefix once per batch) and positions
        # given vocabulary logits, by this process; empty when the model's own loss was used
        "computed": dict(trainer.work),
        "best": best,
        "adapter": str(adapter_dir),
        "versions": library_versions(),
    }
    if trainer.is_world_process_zero():
        atomic_write_json(out / "train_summary.json", summary)
        write_train_report(out, summary)
    return summary


def _arguments_class() -> type:
    from transformers import TrainingArguments

    return TrainingArguments


def zero3_loading(cfg: RunConfig, hw: Hardware) -> Any:
    """Under `accelerate launch` with DeepSpeed ZeRO-3, `from_pretrained` builds the model already
    partitioned across the GPUs (deepspeed.zero.Init) when TrainingArguments exist first: creating them
    registers the DeepSpeed config that Transformers reads while loading. Returns those arguments (keep
    them alive until training), or None when ZeRO-3 is not in use."""
    from medqa.hardware import resolve_dtype, sharded_engine

    if sharded_engine() != "deepspeed-zero3":
        return None
    dtype = str(resolve_dtype(cfg.model.dtype, hw)).replace("torch.", "")
    return _arguments_class()(output_dir=str(Path(cfg.out) / "checkpoints"), bf16=dtype == "bfloat16",
                             fp16=dtype == "float16", report_to="none")


def _training_kwargs(tc: Any, out: Path, dtype: str, hw: Hardware, batching: str, report_to: list[str],
                     progress: bool) -> dict[str, Any]:
    kwargs = dict(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps,
        per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.grad_accum,
        learning_rate=tc.lr,
        lr_scheduler_type=tc.scheduler,
        warmup_steps=tc.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=tc.weight_decay,
        logging_steps=tc.logging_steps,
        save_strategy="steps",
        save_steps=tc.save_steps,
        save_total_limit=tc.save_total_limit,
        seed=tc.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",  # PEFT keeps the adapter weights in fp32; AMP scales the loss
        use_cpu=hw.backend == "cpu",
        activation_checkpointing=tc.gradient_checkpointing,
        train_sampling_strategy={"length_grouped": "group_by_length", "balanced": "batch_rebalance"}.get(batching, "random"),
        neftune_noise_alpha=tc.neftune_alpha,
        torch_compile=tc.torch_compile,
        report_to=report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    return kwargs


def write_train_report(out: Path, summary: dict[str, Any]) -> None:
    """train_curves.png (loss, held-out accuracy) and train_report.md beside it."""
    from medqa.plots import training_curves

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "metrics.jsonl").is_file() else []
    training_curves(rows, out / "train_curves.png")
    lines = [
        f"# Training report — {summary['model']}", "",
        f"- {summary['steps']} optimizer steps, {summary['epochs_done']} epochs of {summary['data']['examples']} examples "
        f"in {summary['seconds']:.0f} s on {summary['hardware']['name']} ({summary['dtype']}, {summary['processes']} process(es))",
        f"- throughput: {summary['examples_per_second']} examples/s, {summary['tokens_per_second']} tokens/s",
        f"- batching: {summary['batching']}; non-padding share of the token slots: {summary['non_padding_share']:.1%}",
        f"- truncated: {summary['data']['truncated']}, dropped (prompt longer than max_length): "
        f"{summary['data']['dropped_too_long']}; lengths p50/p90/max {summary['length_p50_p90_max']}",
        f"- final training loss {summary['train_loss']:.4f}",
    ]
    if summary.get("best"):
        b = summary["best"]
        lines.append(f"- best held-out accuracy {b['accuracy']:.1%} at step {b['step']}"
                     + (" (this is the saved adapter)" if b["kept"] else ""))
    lines += ["", "![loss and held-out accuracy](train_curves.png)", ""]
    atomic_write_text(out / "train_report.md", "\n".join(lines))
