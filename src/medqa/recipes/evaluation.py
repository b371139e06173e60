"""Evaluation recipe: score a model (+ adapter) on one or several evaluation sets and write the reports.

    from medqa import build_config, run_eval
    summary = run_eval(build_config(overrides={"data.path": "validation.jsonl", "out": "runs/eval"}))

The evaluation sets are read and validated first (`load_eval_sets`), before any model loads; the LoRA
SFT recipe uses the same blocks for its before/after evaluations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medqa.calibrate import load_calibration
from medqa.config import DataConfig, RunConfig, apply_env
from medqa.datasets import hash_order, load_dataset_config
from medqa.errors import DataError
from medqa.evaluate import DISCLAIMER, evaluate, wilson_interval
from medqa.format import PromptFormat
from medqa.hardware import detect
from medqa.hygiene import aggregate_accuracy, remove_leakage
from medqa.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from medqa.lm_eval_results import write_lm_eval_results
from medqa.modeling import load_model, resolve_base, resolve_protocol
from medqa.recipes.distributed import init_distributed, rank
from medqa.report import multi_set_table


def run_eval(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate `cfg.model` (+ adapter) on `cfg.data` (or every `cfg.eval_sets`); writes the reports to `cfg.out`."""
    apply_env(cfg)
    sets = load_eval_sets(cfg, evaluation_sets(cfg, include_data=True))  # bad data fails before the model loads
    hw = init_distributed(detect(cfg.model.device))
    model, tokenizer = load_model(cfg.model, hw)
    return evaluate_sets(model, tokenizer, cfg, sets, Path(cfg.out), progress)


def describe_data(d: DataConfig) -> str:
    what = "bundled demo set (not a benchmark)" if d.dataset == "demo" else f"{d.dataset}: {d.path}"
    if d.subset != "all":
        what += f", {d.subset} part of the seeded hash split (train_size={d.train_size}, seed={d.seed})"
    elif d.train_size:
        what += f", {d.train_size} rows drawn with seed {d.seed}"
    if d.limit:
        what += f", first {d.limit}"
    return what


@dataclasses.dataclass
class EvalSet:
    """One evaluation set, read and validated before any model loads: its records, load report, few-shot examples."""

    data: DataConfig
    records: list[Any]
    report: Any
    shots: list[Any]


def load_eval_sets(cfg: RunConfig, sets: dict[str, DataConfig]) -> dict[str, EvalSet]:
    """Read every evaluation set (and its few-shot pool): a bad file fails here, before the slow model load."""
    out = {}
    for name, d in sets.items():
        records, report = load_dataset_config(d, default_split="validation")
        out[name] = EvalSet(d, records, report, few_shot_examples(cfg, records))
    return out


def _eval_one(model: Any, tokenizer: Any, cfg: RunConfig, es: EvalSet, out: Path, progress: bool,
              calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    data, records, report = es.data, es.records, es.report
    fmt = PromptFormat(tokenizer, resolve_protocol(cfg), shots=es.shots)
    meta = {
        "model": resolve_base(cfg.model),
        "adapter": cfg.model.adapter,
        "data": describe_data(data),
        "load_report": report.as_dict(),
    }
    if fmt.shots:
        meta["few_shot"] = {"k": len(fmt.shots), "ids": [r.id for r in fmt.shots], "seed": cfg.eval.few_shot_seed,
                            "data": describe_data(cfg.eval.few_shot_data)}
    return evaluate(model, fmt, records, out, batch_size=cfg.eval.batch_size, meta=meta,
                    low_confidence=cfg.eval.low_confidence, progress=progress,
                    permutations=cfg.eval.permutations, generate=cfg.eval.generate,
                    max_new_tokens=cfg.eval.max_new_tokens, thinking=cfg.eval.thinking,
                    calibration=calibration if calibration is not None
                    else getattr(model, "medqa_calibration", None) or load_calibration(cfg.model.adapter))


def few_shot_examples(cfg: RunConfig, eval_records: list[Any]) -> list[Any]:
    """k seeded examples from `eval.few_shot_data`, never one of the evaluated questions."""
    k = cfg.eval.few_shot
    if k == 0:
        return []
    if cfg.eval.few_shot_data is None:
        raise DataError("eval", None, "few_shot_data", "few-shot prompting needs eval.few_shot_data (a training split)")
    pool, _ = load_dataset_config(cfg.eval.few_shot_data, default_split="train")
    pool, _ = remove_leakage(pool, eval_records)
    if len(pool) < k:
        raise DataError("eval", None, "few_shot", f"asked for {k} examples, the few-shot pool has {len(pool)}")
    return hash_order(pool, cfg.eval.few_shot_seed)[:k]


def evaluation_sets(cfg: RunConfig, include_data: bool) -> dict[str, DataConfig]:
    """Named evaluation sets: `eval_sets`, plus `eval_data` (as "eval"), or `data` for a plain eval."""
    sets = dict(cfg.eval_sets)
    if cfg.eval_data is not None:
        sets.setdefault("eval", cfg.eval_data)
    if include_data and not sets:
        sets["eval"] = cfg.data
    return sets



def evaluate_sets(model: Any, tokenizer: Any, cfg: RunConfig, sets: dict[str, EvalSet], out: Path,
               progress: bool, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """One set: its summary, written to `out`. Several: each in `out/NAME`, pooled summary in `out`."""
    if len(sets) == 1:
        (name, es), = sets.items()
        summary = _eval_one(model, tokenizer, cfg, es, out, progress, calibration)
        if rank() == 0:
            write_lm_eval_results(out, {name: (es.data, summary)}, cfg)
        return summary
    results = {name: _eval_one(model, tokenizer, cfg, d, out / name, progress, calibration) for name, d in sets.items()}
    if rank() != 0:
        return results
    write_lm_eval_results(out, {name: (sets[name].data, r) for name, r in results.items()}, cfg)
    agg = aggregate_accuracy(results)
    k, n = sum(r["correct"] for r in results.values()), agg["n"]
    summary = {
        "protocol": next(iter(results.values()))["protocol"],
        "model": resolve_base(cfg.model),
        "adapter": cfg.model.adapter,
        "n": n,
        "correct": k,
        "accuracy": agg["weighted_mean"],
        "ci95": list(wilson_interval(k, n)),
        "macro_accuracy": agg["macro_mean"],
        "majority_baseline": sum(r["majority_baseline"] * r["n"] for r in results.values()) / n,
        "per_dataset": {name: {key: r[key] for key in ("n", "accuracy", "ci95", "majority_baseline", "ece", "data")}
                        for name, r in results.items()},
        "disclaimer": DISCLAIMER,
    }
    rows = []
    for name in sets:
        for line in (out / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
            rows.append({"dataset": name, **json.loads(line)})
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", f"# MedQA evaluation — {resolve_base(cfg.model)}\n\n> {DISCLAIMER}\n\n"
                      + multi_set_table(summary))
    return summary
