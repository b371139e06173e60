"""medqa.training.loop.train: a complete run directory, a lower loss; clear errors before training."""

import json

import pytest
import torch
import yaml

from medqa.config import build_config
from medqa.datasets import load_demo
from medqa.format import PromptFormat
from medqa.modeling import apply_lora, load_model
from medqa.training import PadCollator, build_features, train


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


def test_qlora_on_cpu_is_a_clear_error(qwen_dir):
    from medqa.errors import ModelError

    cfg = build_config(None, {"model.name": str(qwen_dir), "model.load_in_4bit": True})
    with pytest.raises(ModelError, match="load_in_4bit needs a CUDA, ROCm or XPU GPU"):
        load_model(cfg.model)


def test_hardware_env_is_set_before_torch_starts(tmp_path):
    """`hardware.env` reaches torch: the thread count and a ROCm variable, seen by `medqa doctor`."""
    import subprocess
    import sys

    cfg = tmp_path / "hw.yaml"
    cfg.write_text("hardware:\n  env: {OMP_NUM_THREADS: 1, HIP_VISIBLE_DEVICES: '0'}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "HIP_VISIBLE_DEVICES")}
    p = subprocess.run([sys.executable, "-m", "medqa.cli", "doctor", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["env"]["HIP_VISIBLE_DEVICES"] == "0"
    assert report["devices"][0]["threads"] == 1  # OMP_NUM_THREADS was in place when torch started
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware:\n  envs: {}\n")
    p = subprocess.run([sys.executable, "-m", "medqa.cli", "doctor", "--config", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "unknown key 'hardware.envs'" in p.stderr
