"""results.json in lm-evaluation-harness's shape: lm-eval's own table printer and metric code read it."""

import json
import math

import pytest

from medqa.config import build_config
from medqa.lm_eval_results import acc_stderr, lm_eval_results, task_results

lm_eval_utils = pytest.importorskip("lm_eval.utils")


def test_medqa_eval_writes_results_lm_eval_reads(qwen_dir, small_jsonl, tmp_path):
    from medqa.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(qwen_dir), "--dataset", "medmcqa", "--data", str(small_jsonl),
                 "--out", str(out), "--protocol", "lm-eval"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    entry = results["results"]["medmcqa"]
    assert entry["acc,none"] == pytest.approx(summary["accuracy"])
    assert results["n-samples"]["medmcqa"] == {"original": 12, "effective": 12}
    assert results["config"]["model_args"] == f"pretrained={qwen_dir}"
    assert results["versions"] == {"medmcqa": None} and results["transformers_version"]
    # lm-eval's own standard error of a mean, over the per-question 0/1 outcomes
    from lm_eval.api.metrics import mean_stderr

    outcomes = [float(json.loads(x)["correct"]) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert entry["acc_stderr,none"] == pytest.approx(mean_stderr(outcomes), abs=1e-12)
    table = lm_eval_utils.make_table(results)
    row = next(line for line in table.splitlines() if line.startswith("|medmcqa"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[6]) == pytest.approx(entry["acc,none"]) and cells[7] == "±"
    assert float(cells[8]) == pytest.approx(entry["acc_stderr,none"], abs=1e-4)


def test_the_chat_prompt_is_named_in_the_alias(qwen_dir, small_jsonl, tmp_path):
    from medqa.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(qwen_dir), "--dataset", "medmcqa", "--data", str(small_jsonl),
                 "--limit", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["medmcqa"]["alias"] == "medmcqa (MedQA chat-template prompt)"


def _summary(acc, n, per_subject=None, letters="ABCD"):
    return {"accuracy": acc, "n": n, "protocol": "lm-eval", "per_subject": per_subject or {},
            "gold_letter_distribution": {L: 1 for L in letters}, "ci95": [0, 1], "majority_baseline": 0.3}


def test_mmlu_subjects_are_lm_eval_tasks_under_one_group():
    cfg = build_config(overrides={"data.dataset": "mmlu", "data.path": "x", "data.subjects": "medical"})
    per = {"anatomy": {"n": 10, "accuracy": 0.5}, "virology": {"n": 30, "accuracy": 0.3}}
    doc = lm_eval_results({"eval": (cfg.data, _summary(0.35, 40, per))}, cfg)
    assert list(doc["results"]) == ["mmlu_medical", "mmlu_anatomy", "mmlu_virology"]
    assert doc["group_subtasks"] == {"mmlu_medical": ["mmlu_anatomy", "mmlu_virology"]}
    assert doc["results"]["mmlu_virology"]["acc,none"] == 0.3 and doc["versions"]["mmlu_anatomy"] == 1.0
    table = lm_eval_utils.make_table(doc)
    assert " - mmlu_anatomy" in table


@pytest.mark.parametrize("dataset, path, letters, task", [
    ("medqa_4options", "US/test.jsonl", "ABCD", "medqa_4options"),
    ("medqa-usmle", "US/test.jsonl", "ABCDE", "medqa_usmle_5options"),  # not lm-eval's four-option task
    ("pubmedqa", "ori_pqal.json", "ABC", "pubmedqa"),
    ("mmlu_anatomy", "mmlu", "ABCD", "mmlu_anatomy"),
    ("jsonl", "data/mine.jsonl", "ABCD", "mine"),
    ("demo", None, "ABCD", "medqa_demo"),
])
def test_task_names(dataset, path, letters, task):
    cfg = build_config(overrides={"data.dataset": dataset, **({"data.path": path} if path else {})})
    per = {"anatomy": {"n": 5, "accuracy": 0.4}} if dataset.startswith("mmlu") else None
    assert list(task_results("eval", cfg.data, _summary(0.4, 5, per, letters))) == [task]


def test_acc_stderr_is_lm_evals():
    assert acc_stderr(0.5, 5) == pytest.approx(math.sqrt(0.25 / 4))
    assert math.isnan(acc_stderr(1.0, 1))
