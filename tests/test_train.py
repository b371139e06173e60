import json

import pytest
import torch
import yaml

from medqa.config import build_config
from medqa.data import load_demo
from medqa.errors import DataError
from medqa.format import PromptFormat
from medqa.modeling import apply_lora, load_model
from medqa.train import PadCollator, build_features, train


def test_pad_collator_masks_padding():
    batch = PadCollator(pad_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [5], "labels": [5]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_build_features_counts_what_it_cuts(qwen_tokenizer):
    fmt = PromptFormat(qwen_tokenizer)
    feats, stats = build_features(fmt, load_demo()[:5], max_length=130)
    assert stats["examples"] + stats["dropped_too_long"] == 5
    assert stats["truncated"] >= 1
    assert all(len(f["input_ids"]) <= 130 for f in feats)
    with pytest.raises(DataError, match="max_length"):
        build_features(fmt, load_demo()[:2], max_length=16)


def test_train_writes_a_complete_run_directory(qwen_dir, tmp_path):
    cfg = build_config(None, {
        "model.name": str(qwen_dir), "out": str(tmp_path / "run"),
        "train.max_steps": 4, "train.batch_size": 2, "train.grad_accum": 2, "train.lr": 1e-2,
        "train.logging_steps": 1, "train.save_steps": 2,
    })
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    summary = train(cfg, model, tok, load_demo()[:16], progress=False)
    run = tmp_path / "run"
    assert summary["steps"] == 4
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "tokenizer_config.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs if "loss" in entry] == [1, 2, 3, 4]
    assert all("learning_rate" in entry and "grad_norm" in entry for entry in logs if "loss" in entry)
    assert json.loads((run / "train_summary.json").read_text())["data"]["examples"] == 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed  # the adapter learned something


def test_training_lowers_the_loss_on_what_it_sees(qwen_dir, tmp_path):
    cfg = build_config(None, {
        "model.name": str(qwen_dir), "out": str(tmp_path / "run"),
        "train.max_steps": 12, "train.batch_size": 4, "train.grad_accum": 1, "train.lr": 3e-2,
        "train.logging_steps": 1, "train.warmup_ratio": 0.0, "lora.r": 16, "lora.alpha": 512,
        "lora.target_modules": "all-linear", "lora.dropout": 0.0,
    })
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    records = load_demo()[:4]
    feats, _ = build_features(PromptFormat(tok), records, cfg.train.max_length)
    batch = PadCollator(tok.pad_token_id)(feats)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**batch).loss)

    before = loss()
    train(cfg, model, tok, records, progress=False)
    # a random tiny model sits near log(vocab) = 11.9; the adapter must move it down measurably
    assert loss() < before - 0.05


def test_last_complete_checkpoint_skips_a_torn_one(tmp_path, capsys):
    from medqa.train import CHECKPOINT_FILES, last_complete_checkpoint

    for step, files in ((2, CHECKPOINT_FILES), (4, CHECKPOINT_FILES[1:])):  # checkpoint-4 lost its state file
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        for f in files:
            (d / f).write_text('{"global_step": %d}' % step if f.endswith(".json") else "x")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert "skipping incomplete checkpoint" in capsys.readouterr().out
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{not json")
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_adapter(qwen_dir, tmp_path):
    """A real training process is killed (SIGKILL) after a checkpoint; --resume finishes the run and
    the adapter equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    def cmd(out):
        return [sys.executable, "-m", "medqa.cli", "train", "--model", str(qwen_dir), "--dataset", "demo",
                "--data.train_size", "48", "--out", str(out), "--train.max_steps", "24", "--train.save_steps", "4",
                "--train.batch_size", "4", "--train.grad_accum", "1", "--train.calibration_size", "0",
                "--train.save_total_limit", "50", "--train.logging_steps", "1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(cmd(tmp_path / "ref"), capture_output=True, text=True, timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists()  # it really died before finishing
    resumed = subprocess.run(cmd(run) + ["--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 25))  # every step logged once, none lost, none twice
