"""A tiny trained run (random Qwen3 model, one step, a strengthened adapter) shared by the tests of medqa.ship,
and their helpers."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from conftest import mcq_row, write_jsonl

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789abcdef"
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "calibration.json", "chat_template.jinja",
                 "medqa_adapter.json", "tokenizer.json", "tokenizer_config.json"]
_RUNS: dict[str, Path] = {}  # one training per session: the run folder is only read (tests copy it to change it)


def strengthen(adapter_dir: Path, scale: float = 0.5) -> None:
    """One training step leaves LoRA's B ~ 0; make the adapter change the model measurably."""
    import torch
    from safetensors.torch import load_file, save_file

    f = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(f))
    g = torch.Generator().manual_seed(0)
    for k, v in tensors.items():
        if "lora_B" in k:
            tensors[k] = torch.randn(v.shape, generator=g) * scale
    save_file(tensors, str(f), metadata={"format": "pt"})


def trained_run(qwen_dir: Path, tmp_path_factory) -> Path:
    from medqa.cli import main as cli_main

    if str(qwen_dir) in _RUNS:
        return _RUNS[str(qwen_dir)]
    root = tmp_path_factory.mktemp("hub-run")
    data = write_jsonl(root / "small.jsonl", [mcq_row(i, cop=i % 4) for i in range(6)])
    run = root / "run"
    rc = cli_main(["train", "--model", str(qwen_dir), "--data", str(data), "--out", str(run),
                   "--train.max_steps", "1", "--train.batch_size", "2", "--train.grad_accum", "1",
                   "--eval-data", str(data), "--eval_data.limit", "3"])
    assert rc == 0
    strengthen(run / "adapter")
    meta = run / "adapter" / "medqa_adapter.json"
    if not meta.exists():  # what train() writes through save_adapter(meta=...)
        meta.write_text(json.dumps({"base_model": str(qwen_dir), "protocol": "chat", "medqa_version": "0.1.0"}))
    _RUNS[str(qwen_dir)] = run
    return run


def probs(model_dir_or_cfg, tokenizer, n=4):
    from medqa.datasets import load_demo
    from medqa.inference import score_records
    from medqa.format import PromptFormat

    return score_records(model_dir_or_cfg, PromptFormat(tokenizer), load_demo()[:n], progress=False)


def copy_run(run_dir: Path, dest: Path, calibration: dict | None = None) -> Path:
    shutil.copytree(run_dir, dest)
    if calibration is not None:
        (dest / "adapter" / "calibration.json").write_text(json.dumps(calibration))
    return dest


def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def assert_no_token(root: Path, text: str) -> None:
    assert FAKE_TOKEN not in text
    for f in root.rglob("*"):
        if f.is_file():
            assert FAKE_TOKEN.encode() not in f.read_bytes(), f
