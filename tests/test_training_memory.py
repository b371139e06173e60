"""medqa.training.memory: the memory estimate and the early check."""

import pytest
from training_runs import tiny_run as _tiny_run

from medqa.datasets import load_demo
from medqa.training import train


def test_memory_check_fails_early_with_advice(qwen_dir, tmp_path, monkeypatch):
    from medqa.training import memory as train_mod
    from medqa.errors import ModelError

    monkeypatch.setattr(train_mod, "available_memory", lambda hw: 2**20)
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run")
    with pytest.raises(ModelError, match="gradient_checkpointing true.*load_in_4bit"):
        train(cfg, model, tok, load_demo()[:8], progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training started


def test_memory_estimate_grows_with_what_costs_memory(qwen_dir):
    from medqa.training import estimate_memory

    _, model, _ = _tiny_run(qwen_dir, "unused")
    base = estimate_memory(model, 4, 256, 256, False, 4)
    assert estimate_memory(model, 8, 256, 256, False, 4)["activations"] == 2 * base["activations"]
    assert estimate_memory(model, 4, 256, 256, True, 4)["activations"] < base["activations"]
    assert estimate_memory(model, 4, 256, 256, False, 4, lean=True)["activations"] < 0.7 * base["activations"]
    assert estimate_memory(model, 4, 256, 32, False, 4)["logits"] == base["logits"] // 8
    assert base["weights"] == sum(p.numel() * 4 for p in model.parameters())
