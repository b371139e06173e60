"""Batches: token ids and labels per example, the collators that pad or flatten them (counting the
padding they add), the batching mode, and the seeded length-grouped order."""

from __future__ import annotations

from typing import Any

import torch

from medqa.datasets import MCQRecord
from medqa.errors import DataError
from medqa.format import PromptFormat


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


def seeded_length_sampler(batch_size: int, lengths: list[int], seed: int):
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
