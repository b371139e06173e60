"""`results.json` in lm-evaluation-harness's shape, beside MedQA's own `summary.json`.

Scripts and leaderboards that read lm-eval result files (`results[task]["acc,none"]`, `acc_stderr,none`,
`n-samples`, `config`, `versions`; `lm_eval.utils.make_table`) read a MedQA evaluation unchanged:

    {"results": {"medmcqa": {"alias": "medmcqa", "acc,none": 0.41, "acc_stderr,none": 0.0076}}, "n-samples": ...,
     "configs": ..., "versions": ..., "n-shot": ..., "higher_is_better": ..., "group_subtasks": ..., "config": ...,
     "date": ..., "transformers_version": ..., "medqa": {MedQA's extras: Wilson CI, majority baseline, ECE, ...}}

Task names are lm-eval's (`medmcqa`, `medqa_4options`, `pubmedqa`, `mmlu_<subject>`, MMLU's medical subjects
grouped under `mmlu_medical`); a local file is named by its evaluation set (or the file's name), the demo set
`medqa_demo`. `acc_stderr` is
lm-eval's: the sample standard deviation over questions / sqrt(n) = sqrt(p (1 - p) / (n - 1)). When MedQA's
prompt is not lm-eval's (protocol "chat"), the alias says so: the same questions, another prompt.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from medqa.datasets import get_family, lm_eval_task_name
from medqa.io import atomic_write_json
from medqa.modeling import resolve_base
from medqa.versions import __version__, library_versions

# lm-eval 0.4's task versions (metadata.version in its YAML; medmcqa and medqa_4options declare none)
LM_EVAL_VERSIONS = {"pubmedqa": 1.0, "mmlu": 1.0}
LM_EVAL_DATASETS = {"medmcqa": "openlifescienceai/medmcqa", "medqa_4options": "GBaker/MedQA-USMLE-4-options-hf",
                    "pubmedqa": "bigbio/pubmed_qa", "mmlu": "cais/mmlu"}


def _base_task(task: str) -> str:
    """`mmlu_<subject>` belongs to lm-eval's mmlu (its dataset, its version); other tasks are their own."""
    return "mmlu" if task.startswith("mmlu_") else task


def acc_stderr(accuracy: float, n: int) -> float:
    """lm-eval's `mean_stderr` of 0/1 outcomes: sample standard deviation (n - 1) / sqrt(n)."""
    return math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else float("nan")


def _entry(task: str, accuracy: float, n: int, protocol: str) -> dict[str, Any]:
    alias = task if protocol == "lm-eval" else f"{task} (MedQA {protocol} prompt)"
    return {"alias": alias, "acc,none": accuracy, "acc_stderr,none": acc_stderr(accuracy, n)}


def task_results(set_name: str, data: Any, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {"acc": .., "n": .., "subtasks": [...] | None}} for one evaluated set."""
    family = get_family(data.dataset).name
    if family == "mmlu" and summary.get("per_subject"):
        per = {f"mmlu_{s}": {"acc": v["accuracy"], "n": v["n"], "subtasks": None}
               for s, v in summary["per_subject"].items()}
        if len(per) == 1:
            return per
        group = lm_eval_task_name("mmlu", data.subjects) or "mmlu_medical"
        return {group: {"acc": summary["accuracy"], "n": summary["n"], "subtasks": list(per)}, **per}
    task = lm_eval_task_name(family, data.subjects)
    if family == "medqa-usmle" and "E" in summary.get("gold_letter_distribution", {}):
        task = "medqa_usmle_5options"  # lm-eval's medqa_4options has four options: this is another task
    if task is None:  # a local file or the demo set: its evaluation-set name, else the file's name
        task = ("medqa_demo" if family == "demo" else set_name if set_name != "eval" or not data.path
                else Path(data.path).stem)
    return {task: {"acc": summary["accuracy"], "n": summary["n"], "subtasks": None}}


def lm_eval_results(evaluated: dict[str, tuple[Any, dict[str, Any]]], cfg: Any) -> dict[str, Any]:
    """The lm-eval-shaped document for `{set name: (DataConfig, summary)}` evaluated under `cfg`."""
    results: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    configs: dict[str, Any] = {}
    n_samples: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    protocol = None
    for set_name, (data, summary) in evaluated.items():
        protocol = summary.get("protocol", "chat")
        shots = len(summary.get("few_shot", {}).get("ids", [])) if summary.get("few_shot") else 0
        for task, t in task_results(set_name, data, summary).items():
            if task in results:  # two sets of one task (e.g. two MedMCQA files): told apart by set name
                task = f"{task}_{set_name}"
            results[task] = _entry(task, t["acc"], t["n"], protocol)
            groups[task] = t["subtasks"] or []
            n_samples[task] = {"original": t["n"], "effective": t["n"]}
            configs[task] = {"task": task, "dataset_path": data.path or LM_EVAL_DATASETS.get(_base_task(task)),
                             "output_type": "multiple_choice", "num_fewshot": shots,
                             "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                             "metadata": {"medqa_set": set_name, "medqa_protocol": protocol,
                                          "medqa_data": summary.get("data")}}
            extras[task] = {"set": set_name, "n": t["n"], "correct": round(t["acc"] * t["n"])}
        extras[set_name] = {key: summary.get(key) for key in ("accuracy", "ci95", "majority_baseline", "ece",
                                                              "brier", "n")}
    # groups first, then their subtasks, as lm-eval orders them
    subtasks = {s for subs in groups.values() for s in subs}
    group_subtasks = {t: groups[t] for t in results if t not in subtasks}
    adapter = cfg.model.adapter
    versions = library_versions()
    return {
        "results": results,
        "group_subtasks": group_subtasks,
        "configs": configs,
        "versions": {t: LM_EVAL_VERSIONS.get(_base_task(t)) for t in results},
        "n-shot": {t: configs[t]["num_fewshot"] for t in results},
        "higher_is_better": {t: {"acc": True} for t in results},
        "n-samples": n_samples,
        "config": {"model": "medqa", "model_args": f"pretrained={resolve_base(cfg.model)}"
                   + (f",peft={adapter}" if adapter else ""), "batch_size": cfg.eval.batch_size,
                   "device": cfg.model.device, "limit": None, "bootstrap_iters": 0, "protocol": protocol},
        "date": time.time(),
        "model_name": resolve_base(cfg.model),
        "transformers_version": versions.get("transformers"),
        "medqa_version": __version__,
        "library_versions": versions,
        "medqa": {"summary": "summary.json", "sets": extras,
                  "note": "acc is letter-scoring accuracy (argmax over the options, abstentions counted as "
                          "answered); Wilson intervals and the majority-letter baseline are in summary.json"},
    }


def write_lm_eval_results(out: Path, evaluated: dict[str, tuple[Any, dict[str, Any]]], cfg: Any) -> Path:
    path = Path(out) / "results.json"
    atomic_write_json(path, lm_eval_results(evaluated, cfg))
    return path
