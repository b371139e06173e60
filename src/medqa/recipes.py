"""Recipes: whole runs built from the blocks (data, format, modeling, train, evaluate).

Each recipe takes a `RunConfig` and writes its run directory; the CLI is a thin layer over these.

    from medqa import build_config, run_eval
    summary = run_eval(build_config(overrides={"data.path": "validation.jsonl", "out": "runs/eval"}))
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from medqa.config import DataConfig, RunConfig, build_config
from medqa.data import load_dataset_config
from medqa.errors import DataError
from medqa.evaluate import DISCLAIMER, evaluate
from medqa.format import PromptFormat
from medqa.hardware import detect
from medqa.io import atomic_write_json, atomic_write_text
from medqa.modeling import apply_lora, describe, load_adapter, load_model


def _describe_data(d: DataConfig) -> str:
    what = "bundled demo set (not a benchmark)" if d.dataset == "demo" else f"{d.dataset}: {d.path}"
    if d.subset != "all":
        what += f", {d.subset} part of the seeded hash split (train_size={d.train_size}, seed={d.seed})"
    elif d.train_size:
        what += f", {d.train_size} rows drawn with seed {d.seed}"
    if d.limit:
        what += f", first {d.limit}"
    return what


def _eval_one(model: Any, tokenizer: Any, cfg: RunConfig, data: DataConfig, out: Path, progress: bool) -> dict[str, Any]:
    records, report = load_dataset_config(data, default_split="validation")
    fmt = PromptFormat(tokenizer, cfg.eval.protocol)
    meta = {
        "model": cfg.model.name,
        "adapter": cfg.model.adapter,
        "data": _describe_data(data),
        "load_report": report.as_dict(),
    }
    return evaluate(model, fmt, records, out, batch_size=cfg.eval.batch_size, meta=meta,
                    low_confidence=cfg.eval.low_confidence, progress=progress)


def run_eval(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate `cfg.model` (+ adapter) on `cfg.data`; writes summary.json, predictions.jsonl, report.md."""
    hw = detect(cfg.model.device)
    model, tokenizer = load_model(cfg.model, hw)
    out = Path(cfg.out)
    return _eval_one(model, tokenizer, cfg, cfg.data, out, progress)


def run_train(cfg: RunConfig, eval_before: bool = False, progress: bool = True) -> dict[str, Any]:
    """LoRA fine-tune; with `cfg.eval_data`, evaluate after (and optionally before) training."""
    from medqa.train import train

    hw = detect(cfg.model.device)
    records, report = load_dataset_config(cfg.data, default_split="train")
    if cfg.eval_data is not None:
        held, _ = load_dataset_config(cfg.eval_data, default_split="validation")
        overlap = {r.id for r in records} & {r.id for r in held}
        if overlap and cfg.eval_data.path == cfg.data.path and cfg.eval_data.dataset == cfg.data.dataset:
            raise DataError("eval_data", None, "id", f"{len(overlap)} evaluation questions are also in the training data")
    model, tokenizer = load_model(cfg.model, hw, with_adapter=False)
    out = Path(cfg.out)
    result: dict[str, Any] = {"data_load": report.as_dict()}
    if eval_before and cfg.eval_data is not None:
        result["before"] = _eval_one(model, tokenizer, cfg, cfg.eval_data, out / "eval_before", progress)
    if cfg.model.adapter:  # continue training an existing adapter
        model = load_adapter(model, cfg.model.adapter, cfg.model.allow_pickle, trainable=True)
    else:
        model = apply_lora(model, cfg.lora)
    result["model"] = describe(model)
    result["train"] = train(cfg, model, tokenizer, records, hw, progress=progress)
    if cfg.eval_data is not None:
        result["after"] = _eval_one(model, tokenizer, cfg, cfg.eval_data, out / "eval_after", progress)
    atomic_write_json(out / "run_summary.json", result)
    return result


def quickstart_config_path() -> Path:
    return Path(str(resources.files("medqa") / "resources" / "quickstart.yaml"))


def quickstart(out: str | None = None, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Offline demo: zero-shot eval, LoRA fine-tune, eval again, before/after table."""
    ov = dict(overrides or {})
    if out:
        ov["out"] = out
    cfg = build_config(quickstart_config_path(), ov)
    t = time.perf_counter()
    result = run_train(cfg, eval_before=True, progress=progress)
    result["wall_seconds"] = round(time.perf_counter() - t, 1)
    table = before_after_table(result["before"], result["after"])
    text = (
        "# MedQA quickstart\n\n"
        f"> {DISCLAIMER}\n\n"
        f"Model `{cfg.model.name}`, LoRA r={cfg.lora.r} on {result['train']['data']['examples']} questions "
        f"({_describe_data(cfg.data)}), evaluated on {result['after']['n']} held-out questions "
        f"({_describe_data(cfg.eval_data)}). Wall time {result['wall_seconds']:.0f} s on {result['train']['hardware']['name']}.\n\n"
        "The demo set is small: read the intervals before reading the difference.\n\n"
        + table
    )
    out_dir = Path(cfg.out)
    atomic_write_text(out_dir / "quickstart.md", text)
    atomic_write_json(out_dir / "run_summary.json", result)
    result["table"] = table
    return result


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> str:
        lo, hi = s["ci95"]
        dist = " ".join(f"{k}:{v}" for k, v in s["pred_letter_distribution"].items())
        return (f"| {name} | {s['accuracy']:.1%} | {lo:.1%}–{hi:.1%} | {s['majority_baseline']:.1%} | "
                f"{s['ece']:.3f} | {dist} |")

    return "\n".join([
        "| model | accuracy | 95 % CI | majority baseline | ECE | predicted letters |",
        "|---|---|---|---|---|---|",
        row("base (zero-shot)", before),
        row("base + LoRA", after),
    ]) + "\n"
