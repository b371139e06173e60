"""Recipes: whole runs built from the blocks (data, format, modeling, train, evaluate).

Each recipe takes a `RunConfig` and writes its run directory; the CLI is a thin layer over these.

    from medqa import build_config, run_eval
    summary = run_eval(build_config(overrides={"data.path": "validation.jsonl", "out": "runs/eval"}))
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from medqa.calibrate import (
    abstain_threshold,
    apply_temperature,
    augment_options,
    fit_temperature,
    load_calibration,
    nll,
    save_calibration,
)
from medqa.config import DataConfig, RunConfig, apply_env, build_config
from medqa.data import hash_order, load_dataset_config
from medqa.errors import DataError
from medqa.evaluate import DISCLAIMER, evaluate, wilson_interval
from medqa.format import PromptFormat
from medqa.hardware import detect
from medqa.hygiene import aggregate_accuracy, hold_out_by_content, mix, remove_leakage
from medqa.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from medqa.modeling import apply_lora, describe, load_adapter, load_model, resolve_base, resolve_protocol


def _describe_data(d: DataConfig) -> str:
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
        "data": _describe_data(data),
        "load_report": report.as_dict(),
    }
    if fmt.shots:
        meta["few_shot"] = {"k": len(fmt.shots), "ids": [r.id for r in fmt.shots], "seed": cfg.eval.few_shot_seed,
                            "data": _describe_data(cfg.eval.few_shot_data)}
    return evaluate(model, fmt, records, out, batch_size=cfg.eval.batch_size, meta=meta,
                    low_confidence=cfg.eval.low_confidence, progress=progress,
                    permutations=cfg.eval.permutations, generate=cfg.eval.generate,
                    max_new_tokens=cfg.eval.max_new_tokens,
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


def _eval_sets(model: Any, tokenizer: Any, cfg: RunConfig, sets: dict[str, EvalSet], out: Path,
               progress: bool, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """One set: its summary, written to `out`. Several: each in `out/NAME`, pooled summary in `out`."""
    if len(sets) == 1:
        return _eval_one(model, tokenizer, cfg, next(iter(sets.values())), out, progress, calibration)
    results = {name: _eval_one(model, tokenizer, cfg, d, out / name, progress, calibration) for name, d in sets.items()}
    if _rank() != 0:
        return results
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
    table = ["| dataset | n | accuracy | 95 % CI | majority baseline |", "|---|---|---|---|---|"]
    for name, r in summary["per_dataset"].items():
        table.append(f"| {name} | {r['n']} | {r['accuracy']:.1%} | {r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} | "
                     f"{r['majority_baseline']:.1%} |")
    table.append(f"| **size-weighted mean** | {n} | {summary['accuracy']:.1%} | "
                 f"{summary['ci95'][0]:.1%}–{summary['ci95'][1]:.1%} | {summary['majority_baseline']:.1%} |")
    table.append(f"| macro mean | | {summary['macro_accuracy']:.1%} | | |")
    atomic_write_text(out / "report.md", f"# MedQA evaluation — {resolve_base(cfg.model)}\n\n> {DISCLAIMER}\n\n"
                      + "\n".join(table) + "\n")
    return summary


def run_eval(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate `cfg.model` (+ adapter) on `cfg.data` (or every `cfg.eval_sets`); writes the reports to `cfg.out`."""
    apply_env(cfg)
    sets = load_eval_sets(cfg, evaluation_sets(cfg, include_data=True))  # bad data fails before the model loads
    hw = init_distributed(detect(cfg.model.device))
    model, tokenizer = load_model(cfg.model, hw)
    return _eval_sets(model, tokenizer, cfg, sets, Path(cfg.out), progress)


def _launch_rank() -> int:
    """The global RANK given by torchrun / accelerate launch (0 for a plain process), before any process group."""
    import os

    return int(os.environ.get("RANK", "0"))


def _rank() -> int:
    import torch

    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed(hw: Any) -> Any:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1): join the process group, one device per rank."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return hw
    backend = "nccl" if hw.backend in ("cuda", "rocm") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(hw.device))  # detect() chose cuda:LOCAL_RANK
    torch.distributed.init_process_group(backend=backend)
    return hw


def training_parts(cfg: RunConfig) -> tuple[dict[str, tuple[list[Any], float]], dict[str, Any]]:
    """`cfg.data` as one part, or each dataset of `cfg.mixture`: {name: (records, weight)} and load reports."""
    if not cfg.mixture:
        records, report = load_dataset_config(cfg.data, default_split="train")
        return {"data": (records, 1.0)}, {"data_load": report.as_dict()}
    parts, loads = {}, {}
    for i, entry in enumerate(cfg.mixture):
        name = f"{i}:{entry.dataset}"
        records, report = load_dataset_config(entry, default_split="train")
        parts[name] = (records, entry.weight)
        loads[name] = report.as_dict()
    return parts, {"data_load": loads}


def training_data(cfg: RunConfig, held: dict[str, list[Any]] | None = None
                  ) -> tuple[list[Any], list[Any], list[Any], dict[str, Any]]:
    """(train, calibration, held-out, info): the training data with evaluation questions removed, the
    calibration and `eval_size` questions held out by content before mixing and up-sampling (so no copy
    or near-duplicate of a held-out question trains), then the seeded mixture. Not yet augmented."""
    parts, info = training_parts(cfg)
    if held:  # no evaluation question (same normalised question and options) may be trained on
        reports = {}
        for name, (records, weight) in parts.items():
            kept, reports[name] = remove_leakage(records, held)
            parts[name] = (kept, weight)
        info["leakage"] = {
            "input": sum(r["input"] for r in reports.values()), "kept": sum(r["kept"] for r in reports.values()),
            "removed": sum(r["removed"] for r in reports.values()),
            "by_eval": {k: sum(r["by_eval"][k] for r in reports.values()) for k in held},
            "removed_ids": [i for r in reports.values() for i in r["removed_ids"]][:20],
        }
        if not any(records for records, _ in parts.values()):
            raise DataError("data", None, None, "every training question also occurs in the evaluation data")
    n_rows = cfg.mixture_total or sum(len(records) for records, _ in parts.values())
    n_cal = cfg.train.calibration_size if cfg.train.calibration_size is not None else min(500, n_rows // 10)
    kept, splits = hold_out_by_content(
        {name: records for name, (records, _) in parts.items()},
        [("calibration_size", n_cal, cfg.train.seed + 1), ("eval_size", cfg.train.eval_size, cfg.train.seed + 2)],
        hash_order)
    if not cfg.mixture:
        records = kept["data"]
    else:
        records, info["mixture"] = mix({name: (kept[name], w) for name, (_, w) in parts.items()},
                                       seed=cfg.mixture_seed, total=cfg.mixture_total)
    info["held_out"] = {"calibration": len(splits["calibration_size"]), "eval_size": len(splits["eval_size"]),
                        "by": "normalised question and options (case, punctuation, whitespace, option order)"}
    return records, splits["calibration_size"], splits["eval_size"], info


def run_train(cfg: RunConfig, eval_before: bool = False, progress: bool = True) -> dict[str, Any]:
    """LoRA fine-tune; with `eval_data` / `eval_sets`, evaluate after (and optionally before) training."""
    from transformers import set_seed

    from medqa.train import prepare_run_dir, train, zero3_loading

    apply_env(cfg)

    # before anything slow; rank 0 alone under a launcher (the others would see the folder it starts writing)
    removed = prepare_run_dir(Path(cfg.out), cfg.train.resume, cfg.train.overwrite) if _launch_rank() == 0 else []
    if removed:
        print(f"medqa: --overwrite: removed the earlier run's {', '.join(removed)} from {cfg.out}", flush=True)
    set_seed(cfg.train.seed)  # the LoRA initialisation too: the same config gives the same adapter
    hw = detect(cfg.model.device)  # under a launcher: the GPU of this process's LOCAL_RANK
    sets = load_eval_sets(cfg, evaluation_sets(cfg, include_data=False))  # all data read before the model loads
    records, calib_records, train_eval_records, result = training_data(
        cfg, {name: es.records for name, es in sets.items()})
    records, result["augmentation"] = augment_options(records, cfg.train.augment_copies, cfg.train.seed)
    hw = init_distributed(hw)  # under a launcher: the process group exists before loading (FSDP loads on rank 0)
    zero3_args = zero3_loading(cfg, hw)  # ZeRO-3: registered before from_pretrained, which then partitions
    model, tokenizer = load_model(cfg.model, hw, with_adapter=False)
    del zero3_args
    out = Path(cfg.out)
    if eval_before and sets:
        result["before"] = _eval_sets(model, tokenizer, cfg, sets, out / "eval_before", progress,
                                      calibration={"temperature": 1.0, "abstain_threshold": None})
    if cfg.model.adapter:  # continue training an existing adapter
        model = load_adapter(model, cfg.model.adapter, cfg.model.allow_pickle, trainable=True)
    else:
        model = apply_lora(model, cfg.lora)
    result["model"] = describe(model)
    result["train"] = train(cfg, model, tokenizer, records, hw, progress=progress, eval_records=train_eval_records)
    result["calibration"] = fit_calibration(model, tokenizer, cfg, calib_records, Path(result["train"]["adapter"]), progress)
    if sets:
        result["after"] = _eval_sets(model, tokenizer, cfg, sets, out / "eval_after", progress, result["calibration"])
    atomic_write_json(out / "run_summary.json", result)
    return result


def fit_calibration(model: Any, tokenizer: Any, cfg: RunConfig, records: list[Any], adapter_dir: Path,
                    progress: bool) -> dict[str, Any]:
    """Fit the temperature and the abstention threshold on the calibration split; save them with the adapter."""
    import numpy as np

    from medqa.evaluate import expected_calibration_error, score_records

    if not records:
        # no calibration split: identity temperature, no fitted threshold (the default low-confidence flag applies)
        info: dict[str, Any] = {"temperature": 1.0, "abstain_threshold": None, "n": 0}
    else:
        fmt = PromptFormat(tokenizer, resolve_protocol(cfg))
        raw = score_records(model, fmt, records, cfg.eval.batch_size, progress, desc="calibration")
        answers = [r.answer for r in records]
        t = fit_temperature(raw, answers)
        scaled = apply_temperature(raw, t)
        correct = np.array([int(np.argmax(p)) == a for p, a in zip(raw, answers)], dtype=float)
        ece = lambda ps: expected_calibration_error(np.array([p.max() for p in ps]), correct)  # noqa: E731
        conf = np.array([p.max() for p in scaled])
        info = {
            "temperature": t,
            # at the search bound: the split says "no confidence at all" (T -> inf) or "sharpen without limit"
            "temperature_at_bound": not 0.051 < t < 19.9,
            # the lowest threshold whose kept answers reach the target with a stated confidence (or abstain_all)
            **abstain_threshold(conf, correct, cfg.eval.target_accuracy, cfg.eval.guarantee_level),
            "target_accuracy": cfg.eval.target_accuracy,
            "n": len(records),
            "ids": [r.id for r in records],
            "accuracy": float(correct.mean()),
            "nll_before": nll(raw, answers), "nll_after": nll(raw, answers, t),
            "ece_before": ece(raw), "ece_after": ece(scaled),
        }
    if _rank() == 0:
        save_calibration(adapter_dir, info)
    return info


def quickstart_config_path() -> Path:
    return Path(str(resources.files("medqa") / "resources" / "quickstart.yaml"))


def quickstart(out: str | None = None, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Offline demo: zero-shot eval, LoRA fine-tune, eval again, before/after table."""
    ov = dict(overrides or {})
    if out:
        ov["out"] = out
    # each quickstart gets a new folder unless told where: an earlier one is never replaced
    ov.setdefault("out", time.strftime("runs/quickstart-%Y%m%d-%H%M%S"))
    cfg = build_config(quickstart_config_path(), ov)
    t = time.perf_counter()
    result = run_train(cfg, eval_before=True, progress=progress)
    result["wall_seconds"] = round(time.perf_counter() - t, 1)
    table = before_after_table(result["before"], result["after"])
    text = (
        "# MedQA quickstart\n\n"
        f"> {DISCLAIMER}\n\n"
        f"Model `{resolve_base(cfg.model)}`, LoRA r={cfg.lora.r} on {result['train']['data']['examples']} questions "
        f"({_describe_data(cfg.data)}), evaluated on {result['after']['n']} held-out questions "
        f"({_describe_data(cfg.eval_data)}). Wall time {result['wall_seconds']:.0f} s on {result['train']['hardware']['name']}.\n\n"
        "The demo set is small: read the intervals before reading the difference.\n\n"
        + table
        + f"\nGold letters seen in training: {result['augmentation']['gold_after']} after option-order augmentation "
          f"(before: {result['augmentation']['gold_before']}). Confidence temperature "
          f"{result['calibration']['temperature']:.2f} fitted on {result['calibration']['n']} held-out training questions.\n"
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
