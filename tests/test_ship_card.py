"""medqa.ship.card: the model card rendered from resources/model_card.md, and check_card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from ship_runs import copy_run as _copy_run
from ship_runs import trained_run
from test_predict import ABSTAIN_ALL_CAL, THRESHOLD_CAL

from medqa.inference import DISCLAIMER
from medqa.ship.card import build_model_card, check_card


@pytest.fixture(scope="module")
def run_dir(qwen_dir, tmp_path_factory) -> Path:
    return trained_run(qwen_dir, tmp_path_factory)


def test_model_card_metadata_and_content(run_dir):
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    summary = json.loads((run_dir / "eval_after" / "summary.json").read_text())
    card = build_model_card(run_dir, "someone/tiny-medqa")
    results = check_card(card, expected=[("medmcqa", summary["accuracy"])])
    assert len(results) == 1 and results[0].task_type == "multiple-choice" and results[0].metric_type == "accuracy"

    text = str(card)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "peft" and "base_model" not in meta  # a local base has no Hub id
    name, again = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-medqa" and again[0].metric_value == pytest.approx(summary["accuracy"], abs=1e-4)
    assert ModelCard(text).data.to_dict() == card.data.to_dict()

    body = text.split("---\n", 2)[2]
    assert body.index(DISCLAIMER) < body.index("## Evaluation")  # prominent: before any result
    lo, hi = summary["ci95"]
    assert f"{lo:.1%}–{hi:.1%}" in body and f"{summary['majority_baseline']:.1%}" in body
    assert "letter scoring" in body and "95 % Wilson" in body
    assert "r=8, alpha=16" in body and "Hardware: CPU" in body and "transformers " in body and "peft " in body
    assert "## Intended use" in body and "## Limitations" in body

    readme = run_dir.parent / "README_card.md"
    readme.write_text(text, encoding="utf-8")
    assert metadata_load(readme)["model-index"] == meta["model-index"]


def test_model_card_for_the_offline_default_base(tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = "smollm2-135m-instruct"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    card = build_model_card(run, "someone/x")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "Q4_1 GGUF" in str(card)


def test_model_card_names_the_hub_base_never_a_local_path(run_dir, qwen_dir, tmp_path):
    """Issue 11: the usage snippet printed the training machine's base-model path."""
    text = str(build_model_card(run_dir, "someone/x"))
    assert str(qwen_dir) not in text and "BASE_MODEL" in text
    # a run on the offline default (model.name left to the adapter, which recorded the cache path)
    run = _copy_run(run_dir, tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    conf = json.loads((run / "adapter" / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = "/home/someone/.cache/medqa/models/smollm2-135m-instruct"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(conf))
    (run / "adapter" / "medqa_adapter.json").unlink()
    card = build_model_card(run, "someone/x")
    text = str(card)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model == hub_id and f"[`{hub_id}`](https://huggingface.co/{hub_id})" in text
    assert f'from_pretrained("{hub_id}")' in text and f"--model {hub_id}" in text
    assert ".cache" not in text and "/home/someone" not in text and "Q4_1 GGUF" in text


def test_model_card_states_the_objective_that_was_used(run_dir, tmp_path):
    """Issue 11: the card said prompt tokens were masked even with train.completion_only_loss false."""
    text = str(build_model_card(run_dir, "someone/x"))
    objective = next(line for line in text.splitlines() if line.startswith("- Objective"))
    assert "completion-only" in objective and "prompt tokens are masked" in objective and "`chat`" in objective
    run = _copy_run(run_dir, tmp_path / "run")
    for name, key in (("config.yaml", None), ("train_summary.json", "completion_only_loss")):
        if key is None:
            cfg = yaml.safe_load((run / name).read_text())
            cfg["train"]["completion_only_loss"] = False
            (run / name).write_text(yaml.safe_dump(cfg))
        else:
            ts = json.loads((run / name).read_text())
            ts[key] = False
            (run / name).write_text(json.dumps(ts))
    text = str(build_model_card(run, "someone/x"))
    objective = next(line for line in text.splitlines() if line.startswith("- Objective"))
    assert "every token" in objective and "prompt" in objective and "masked" not in objective


def test_model_card_states_the_abstention_guarantee(run_dir, tmp_path):
    """Issue 12: the card says what the abstention rule guarantees (level, n, bound), or that all is flagged."""
    from medqa.calibrate import guarantee_text

    run = _copy_run(run_dir, tmp_path / "run", THRESHOLD_CAL)
    assert guarantee_text(THRESHOLD_CAL) in str(build_model_card(run, "someone/x"))
    run2 = _copy_run(run_dir, tmp_path / "run2", ABSTAIN_ALL_CAL)
    text = str(build_model_card(run2, "someone/x"))
    assert guarantee_text(ABSTAIN_ALL_CAL) in text


def test_card_template_has_every_placeholder_filled(run_dir):
    """The template's `$name` parts are all filled, and no part leaves a gap of blank lines."""
    text = str(build_model_card(run_dir, "someone/x", merged=True))
    assert "$" not in text and "\n\n\n" not in text
    assert text.endswith(f"> {DISCLAIMER}\n") and text.index("## Evaluation") < text.index("## Confidence and abstention")
