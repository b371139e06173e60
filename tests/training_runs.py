"""A tiny LoRA run on the random test model, shared by the tests of medqa.training."""

from medqa.config import build_config
from medqa.modeling import apply_lora, load_model


def tiny_run(qwen_dir, out, **over):
    ov = {"model.name": str(qwen_dir), "out": str(out), "train.max_steps": 4, "train.batch_size": 2,
          "train.grad_accum": 1, "train.logging_steps": 1, "train.save_steps": 2, "train.save_total_limit": 10,
          "train.report_to": []}
    ov.update(over)
    cfg = build_config(None, ov)
    model, tok = load_model(cfg.model)
    return cfg, apply_lora(model, cfg.lora), tok
