"""The training report: train_summary.json's content, train_curves.png and train_report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medqa.config import RunConfig
from medqa.format import PromptFormat
from medqa.hardware import Hardware
from medqa.io import atomic_write_text
from medqa.kernels import KernelPlan
from medqa.lean import plain_frozen_head
from medqa.modeling import resolve_base
from medqa.versions import library_versions


def train_summary(cfg: RunConfig, hw: Hardware, model: Any, trainer: Any, *, fmt: PromptFormat, batching: str,
                  dtype: str, feats: list[dict[str, Any]], stats: dict[str, int], mem: dict[str, int], result: Any,
                  seconds: float, start_step: int, lean_patched: dict[str, Any], best: dict[str, Any] | None,
                  adapter_dir: Path, kernels: KernelPlan | None = None) -> dict[str, Any]:
    """train_summary.json: what was trained, how fast, how much was padding, what it computed, with which
    kernels (`kernels`: medqa.kernels.training_kernels's plan; `fused_loss`: whose fused head and
    cross-entropy computed the loss, null when the logits were computed)."""
    tc = cfg.train
    lengths = sorted(f["length"] for f in feats)
    n_tokens = sum(f["length"] for f in feats)
    epochs_done = trainer.state.epoch or 0.0
    # throughput of this process's share of the run (a resumed run timed only the steps it did)
    share = (trainer.state.global_step - start_step) / trainer.state.global_step if trainer.state.global_step else 0.0
    fused = bool(trainer.fused_head and trainer.target_only_logits and plain_frozen_head(model) is not None)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return {
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
        "lean_activations": dict(lean_patched) | {"fused_head": fused and trainer.fused_head == "lean"},
        "kernels": (kernels.as_dict() if kernels is not None else {})
        | {"attention": attention, "fused_loss": trainer.fused_head if fused else None},
        "steps": trainer.state.global_step,
        "epochs": tc.epochs,
        "epochs_done": round(epochs_done, 4),
        "train_loss": result.training_loss,
        "seconds": round(seconds, 2),
        "resumed_from_step": start_step,
        "examples_per_second": round(stats["examples"] * epochs_done * share / seconds, 3) if seconds else None,
        "tokens_per_second": round(n_tokens * epochs_done * share / seconds, 1) if seconds else None,
        "non_padding_share": round(trainer.token_counter.non_padding_share, 4),
        "data": stats,
        "tokens": n_tokens,
        "label_tokens": sum(sum(1 for x in f["labels"] if x != -100) for f in feats),
        "length_p50_p90_max": [lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.9)], lengths[-1]],
        "memory_estimate_bytes": mem,
        # positions run through the model (padding included, a shared prefix once per batch) and positions
        # given vocabulary logits, by this process; empty when the model's own loss was used
        "computed": dict(trainer.work),
        "best": best,
        "adapter": str(adapter_dir),
        "versions": library_versions(),
    }


def write_train_report(out: Path, summary: dict[str, Any]) -> None:
    """train_curves.png (loss, held-out accuracy) and train_report.md beside it."""
    from medqa.plots import training_curves

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "metrics.jsonl").is_file() else []
    training_curves(rows, out / "train_curves.png")
    k = summary.get("kernels") or {}
    lines = [
        f"# Training report — {summary['model']}", "",
        f"- {summary['steps']} optimizer steps, {summary['epochs_done']} epochs of {summary['data']['examples']} examples "
        f"in {summary['seconds']:.0f} s on {summary['hardware']['name']} ({summary['dtype']}, {summary['processes']} process(es))",
        f"- throughput: {summary['examples_per_second']} examples/s, {summary['tokens_per_second']} tokens/s",
        f"- batching: {summary['batching']}; non-padding share of the token slots: {summary['non_padding_share']:.1%}",
        f"- kernels: {k.get('path', '?')}, attention {k.get('attention')}, fused head and loss: "
        f"{k.get('fused_loss') or 'no'}",
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
