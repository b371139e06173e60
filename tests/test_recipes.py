"""Slow end-to-end tests with the real offline default model (SmolLM2-135M-Instruct from GGUF)."""

import json

import pytest
from conftest import MEDMCQA_VALIDATION

from medqa.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_reduced_budget(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["quickstart", "--out", str(out), "--train.max_steps", "2", "--eval_data.limit", "16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "base (zero-shot)" in printed and "base + LoRA" in printed and "study aid" in printed
    result = json.loads((out / "run_summary.json").read_text())
    assert result["before"]["n"] == result["after"]["n"] == 16
    # 150 training questions, 15 of them held out to fit the temperature
    assert result["train"]["steps"] == 2 and result["train"]["data"]["examples"] == 135
    assert result["calibration"]["n"] == 15 and (out / "adapter" / "calibration.json").is_file()
    report = (out / "quickstart.md").read_text()
    assert "| base (zero-shot) |" in report and "| base + LoRA |" in report and "not a clinician" in report
    assert "Gold letters seen in training" in report and "temperature" in report
    for sub in ("eval_before", "eval_after"):
        assert (out / sub / "summary.json").is_file() and (out / sub / "predictions.jsonl").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # held-out questions never appear in training
    train_ids = set()
    from medqa.config import build_config
    from medqa.datasets import load_dataset_config
    from medqa.recipes import quickstart_config_path

    cfg = build_config(quickstart_config_path())
    train_ids = {r.id for r in load_dataset_config(cfg.data, "train")[0]}
    held_ids = {json.loads(x)["id"] for x in (out / "eval_after" / "predictions.jsonl").read_text().splitlines()}
    assert not train_ids & held_ids


@pytest.mark.skipif(not MEDMCQA_VALIDATION.is_file(), reason="../shared/data not present")
def test_default_model_on_real_medmcqa(tmp_path):
    rc = main(["eval", "--dataset", "medmcqa", "--data", str(MEDMCQA_VALIDATION), "--limit", "48",
               "--out", str(tmp_path / "ev")])
    assert rc == 0
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["n"] == 48 and s["model"] == "smollm2-135m-instruct"
    assert 0.0 < s["accuracy"] < 0.8  # a 135M model: near chance, never perfect
