"""medqa.training.held_out: held-out evaluation during training, best adapter, early stopping."""

import json

import torch
from training_runs import tiny_run as _tiny_run

from medqa.datasets import load_demo
from medqa.training import train


def test_eval_during_training_keeps_the_best_adapter_and_stops_early(qwen_dir, tmp_path):
    from safetensors.torch import load_file

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run", **{
        "train.max_steps": 30, "train.eval_steps": 1, "train.early_stopping_patience": 2, "train.lr": 5e-2,
        "lora.alpha": 256, "train.report_to": ["tensorboard"]})
    demo = load_demo()
    summary = train(cfg, model, tok, demo[:16], progress=False, eval_records=demo[100:112])
    run = tmp_path / "run"
    best = summary["best"]
    hist = best["history"]
    accs = [h["eval_accuracy"] for h in hist]
    assert best["accuracy"] == max(accs) and best["kept"]
    assert best["step"] == next(h["step"] for h in hist if h["eval_accuracy"] == max(accs))
    # stopped after two evaluations without improvement, before max_steps
    assert summary["steps"] < 30 and len(hist) == summary["steps"]
    assert all(a <= best["accuracy"] for a in accs[-2:]) and hist[-1]["step"] - best["step"] == 2
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    kept = load_file(run / "best" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], kept[k]) for k in saved)  # the saved adapter is the best one
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs if "eval_accuracy" in e] == [h["step"] for h in hist]
    # logging the held-out score does not swallow the step's own log line (loss at every logging step)
    assert [e["step"] for e in logs if "loss" in e] == list(range(1, summary["steps"] + 1))
    assert (run / "train_curves.png").stat().st_size > 5000
    assert "best held-out accuracy" in (run / "train_report.md").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_early_stopping_state_is_trimmed_to_the_resume_step(tmp_path, capsys):
    from medqa.training import HeldOutEval

    hist = [{"step": 5, "eval_accuracy": 0.4}, {"step": 10, "eval_accuracy": 0.5}, {"step": 15, "eval_accuracy": 0.45},
            {"step": 20, "eval_accuracy": 0.6}, {"step": 25, "eval_accuracy": 0.55}, {"step": 30, "eval_accuracy": 0.5}]
    best = tmp_path / "best"
    (best / "adapter").mkdir(parents=True)
    (best / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    saved = {"step": 20, "accuracy": 0.6, "evals_since_best": 2, "history": hist}
    (best / "best.json").write_text(json.dumps(saved))
    # resumed at step 25: best stays step 20, one evaluation since (not two), history cut after 25
    h = HeldOutEval(None, [], 1, 5, tmp_path, patience=2, resume_step=25)
    assert h.state == {"step": 20, "accuracy": 0.6, "evals_since_best": 1, "history": hist[:5]}
    assert (best / "adapter").is_dir()
    # resumed at step 15: the saved best (step 20) lies in the redone future: its state and adapter go
    h = HeldOutEval(None, [], 1, 5, tmp_path, patience=2, resume_step=15)
    assert h.state == {"step": 10, "accuracy": 0.5, "evals_since_best": 1, "history": hist[:3]}
    assert not (best / "adapter").exists() and "discarded" in capsys.readouterr().out
