"""Training: LoRA supervised fine-tuning with the Transformers Trainer.

The run directory gets:
  adapter/            the LoRA adapter (safetensors) and the tokenizer
  config.yaml         the resolved config
  metrics.jsonl       one line per logging step (loss, learning rate, grad norm, epoch)
  train_summary.json  steps, wall time, examples/s, truncation and label statistics
  checkpoints/        Trainer checkpoints (adapter, optimizer, scheduler, RNG) for resuming
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from medqa.config import RunConfig, dump_config
from medqa.data import MCQRecord
from medqa.errors import DataError
from medqa.format import PromptFormat
from medqa.hardware import Hardware, detect
from medqa.io import atomic_write_json, atomic_write_text


def build_features(fmt: PromptFormat, records: list[MCQRecord], max_length: int) -> tuple[list[dict], dict[str, int]]:
    feats, stats = [], {"examples": 0, "truncated": 0, "dropped_too_long": 0}
    for r in records:
        ex = fmt.encode_example(r, max_length)
        if ex is None:
            stats["dropped_too_long"] += 1
            continue
        stats["truncated"] += int(ex.pop("truncated"))
        feats.append(ex)
    stats["examples"] = len(feats)
    if not feats:
        raise DataError("train", None, None, f"no example fits max_length={max_length}")
    return feats, stats


class PadCollator:
    """Right-pads input_ids with the pad token and labels with -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` whose files are all there and readable; an incomplete or corrupt
    newer one (a kill during saving) is reported and skipped."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ck in found:
        missing = [f for f in CHECKPOINT_FILES if not (ck / f).is_file() or (ck / f).stat().st_size == 0]
        if not missing:
            try:
                json.loads((ck / "trainer_state.json").read_text())
                return ck
            except (OSError, ValueError):
                missing = ["trainer_state.json (unreadable)"]
        print(f"medqa: skipping incomplete checkpoint {ck} (missing: {', '.join(missing)})", flush=True)
    return None


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and state.is_world_process_zero:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsLog()


def train(
    cfg: RunConfig,
    model: Any,
    tokenizer: Any,
    records: list[MCQRecord],
    hw: Hardware | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune `model` (already LoRA-wrapped) on `records`; write the run directory; return a summary."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    from medqa.hub import library_versions

    hw = hw or detect(cfg.model.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    set_seed(cfg.train.seed)
    fmt = PromptFormat(tokenizer, cfg.eval.protocol)
    feats, stats = build_features(fmt, records, cfg.train.max_length)
    dataset = Dataset.from_list(feats)
    tc = cfg.train
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps,
        per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.grad_accum,
        learning_rate=tc.lr,
        lr_scheduler_type=tc.scheduler,
        warmup_steps=tc.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=tc.weight_decay,
        logging_steps=tc.logging_steps,
        save_strategy="steps",
        save_steps=tc.save_steps,
        save_total_limit=tc.save_total_limit,
        seed=tc.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",  # PEFT keeps the adapter weights in fp32; AMP scales the loss
        use_cpu=hw.backend == "cpu",
        activation_checkpointing=tc.gradient_checkpointing,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    metrics_path = out / "metrics.jsonl"
    resume_from = last_complete_checkpoint(out / "checkpoints") if tc.resume else None
    if resume_from is None:
        metrics_path.unlink(missing_ok=True)
    else:  # keep the log of the steps already done, drop anything logged after that checkpoint
        done = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
        kept = [x for x in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if x.strip() and json.loads(x).get("step", 0) <= done]
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))
        print(f"medqa: resuming from {resume_from} (step {done})", flush=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[_metrics_callback(metrics_path)],
    )
    t = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t
    adapter_dir = out / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    n_label_tokens = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
    n_tokens = sum(len(f["input_ids"]) for f in feats)
    summary = {
        "model": cfg.model.name,
        "hardware": hw.as_dict(),
        "dtype": dtype,
        "protocol": fmt.name,
        "steps": trainer.state.global_step,
        "epochs": tc.epochs,
        "train_loss": result.training_loss,
        "seconds": round(seconds, 2),
        "examples_per_second": round(stats["examples"] * tc.epochs / seconds, 3) if tc.max_steps < 0 else None,
        "data": stats,
        "tokens": n_tokens,
        "label_tokens": n_label_tokens,
        "adapter": str(adapter_dir),
        "versions": library_versions(),
    }
    atomic_write_json(out / "train_summary.json", summary)
    return summary
