"""Parity with lm-evaluation-harness (pinned in the dev extras): its own task configs, run on a tiny
model against local data files, must give the same per-question predictions as `--protocol lm-eval`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from medqa.inference import score_records
from medqa.format import PromptFormat
from medqa.datasets import load_named

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow
TASKS = Path(lm_eval.__file__).parent / "tasks"


def _medmcqa(tmp):
    rows = [{"id": f"m{i}", "question": f"Which nerve supplies muscle {i}?", "opa": f"Radial {i}", "opb": "Ulnar",
             "opc": f"Median {i * 3}", "opd": "Axillary", "cop": i % 4, "choice_type": "single", "exp": None,
             "subject_name": None, "topic_name": None} for i in range(8)]
    f = write_jsonl(tmp / "medmcqa.jsonl", rows)
    return "medmcqa", f, f, f"include: {TASKS}/medmcqa/medmcqa.yaml\ntest_split: validation\n", "validation", {}


def _medqa(tmp):
    rows = [{"id": f"u{i}", "sent1": f"A {30 + i}-year-old presents with fever {i}. Next step?", "sent2": "",
             "ending0": "Observe", "ending1": f"Antibiotics {i}", "ending2": "Surgery", "ending3": "Imaging",
             "label": (i * 3) % 4} for i in range(8)]
    f = write_jsonl(tmp / "medqa.jsonl", rows)
    return "medqa-usmle", f, f, f"include: {TASKS}/medqa/medqa.yaml\n", "test", {}


def _pubmedqa(tmp):
    data = {str(1000 + i): {"QUESTION": f"Does drug {i} lower pressure?", "CONTEXTS": [f"Trial {i}.", "Results."],
                            "LABELS": ["BACKGROUND", "RESULTS"], "final_decision": ["yes", "no", "maybe"][i % 3],
                            "LONG_ANSWER": "Yes."} for i in range(6)}
    ours = tmp / "ori_pqal.json"
    ours.write_text(json.dumps(data))
    theirs = write_jsonl(tmp / "pubmedqa.jsonl", list(data.values()))
    return "pubmedqa", ours, theirs, f"include: {TASKS}/pubmedqa/pubmedqa.yaml\n", "test", {}


def _mmlu(tmp):
    rows = [{"question": f"  Which bone is number {i}?", "subject": "anatomy",
             "choices": ["Femur", f"Tibia {i}", "Ulna", "Radius"], "answer": i % 4} for i in range(8)]
    f = write_jsonl(tmp / "mmlu.jsonl", rows)
    return "mmlu", f, f, (f"include: {TASKS}/mmlu/default/mmlu_anatomy.yaml\ndataset_name: null\n"
                          "fewshot_split: null\n"), "test", {"subset": "anatomy"}


@pytest.mark.parametrize("make", [_medmcqa, _medqa, _pubmedqa, _mmlu], ids=lambda f: f.__name__[1:])
def test_same_predictions_as_lm_eval(make, qwen_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    name, ours_file, their_file, include, split, opts = make(tmp_path)
    (tmp_path / "tasks").mkdir()
    task = f"parity_{name.replace('-', '_')}"
    (tmp_path / "tasks" / f"{task}.yaml").write_text(
        f"{include}task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    {split}: {their_file}\n"
        f"test_split: {split}\nvalidation_split: null\ntraining_split: null\n")
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    res = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu"),
                                  tasks=[task], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                                  log_samples=True)
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    their_ll = [np.array([r[0] for r in s["filtered_resps"]]) for s in samples]

    records, _ = load_named(name, str(ours_file), **opts)
    fmt = PromptFormat(tok, "lm-eval")
    assert [fmt.prompt(r) for r in records] == [s["arguments"][0][0] for s in samples]  # identical prompts
    assert [fmt.choice_strings(r) for r in records] == [[a[1] for a in s["arguments"]] for s in samples]
    ours = score_records(model, fmt, records, batch_size=3, progress=False)
    for p, ll in zip(ours, their_ll):
        ref = np.exp(ll - ll.max())
        np.testing.assert_allclose(p, ref / ref.sum(), atol=1e-4)
        assert int(np.argmax(p)) == int(np.argmax(ll))
