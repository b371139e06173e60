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
