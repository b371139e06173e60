"""`train`: LoRA supervised fine-tuning of an already adapted model, composed from the training blocks.

What makes it fast (see BENCHMARKS.md, `benchmarks/train_speed.py`):
  * no compute on padding: padding-free batches (examples concatenated, positions restarting per
    example) with flash attention, balanced or length-grouped batches otherwise; the share of
    non-padding tokens is measured and reported (medqa.training.collate);
  * target-only logits: the vocabulary projection runs only where a target token is predicted
    (the answer and its explanation), not on every prompt position (medqa.training.prefix);
  * no gradient checkpointing unless asked (it recomputes the forward pass to save memory);
  * kernels: Liger's Triton kernels on CUDA/ROCm where liger-kernel supports the model, else MedQA's
    lean autograd (medqa.kernels; `train.kernels`), recorded in train_summary.json.

The run directory gets:
  adapter/            the LoRA adapter (safetensors) and the tokenizer (the best one, with eval_size)
  best/               the best adapter so far by held-out accuracy, and best.json (with eval_size)
  config.yaml         the resolved config
  metrics.jsonl       one line per logging step (loss, lr, grad norm, tokens/s, non-padding share,
                      eval accuracy)
  tensorboard/        the same, for TensorBoard (`tensorboard --logdir OUT/tensorboard`)
  train_curves.png    loss and held-out accuracy against steps; train_report.md shows it
  train_summary.json  steps, wall time, examples/s, tokens/s, truncation, memory estimate
  checkpoints/        Trainer checkpoints (adapter, optimizer, scheduler, RNG, data position)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from medqa.config import RunConfig, dump_config
from medqa.datasets import MCQRecord
from medqa.format import PromptFormat
from medqa.hardware import Hardware, detect
from medqa.io import atomic_write_json, atomic_write_text
from medqa.kernels import training_kernels
from medqa.lean import lean_training
from medqa.modeling import resolve_base, resolve_protocol
from medqa.training.checkpoints import resume_point, run_identity, save_adapter
from medqa.training.collate import FlatCollator, PadCollator, build_features, resolve_batching
from medqa.training.held_out import HeldOutEval
from medqa.training.memory import training_memory
from medqa.training.prefix import StepPrefix, common_prefix
from medqa.training.report import train_summary, write_train_report
from medqa.training.trainer import MedQATrainer, MetricsLog, installed_trackers, training_kwargs


def train(cfg: RunConfig, model: Any, tokenizer: Any, records: list[MCQRecord], hw: Hardware | None = None,
          progress: bool = True, eval_records: list[MCQRecord] | None = None) -> dict[str, Any]:
    """Fine-tune `model` (already LoRA-wrapped) on `records`; write the run directory; return a summary.

    `eval_records`: held-out questions scored every `train.eval_steps` steps (best adapter kept)."""
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    hw, tc, out = hw or detect(cfg.model.device), cfg.train, Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    set_seed(tc.seed)
    fmt = PromptFormat(tokenizer, resolve_protocol(cfg))
    feats, stats = build_features(fmt, records, tc.max_length, tc.completion_only_loss)
    batching = resolve_batching(tc.batching, model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    # liger (Liger's Triton kernels), lean (medqa.lean) or plain, for the attention the model was loaded with
    config = getattr(model, "config", None)
    kernels = training_kernels(hw, getattr(config, "model_type", None), dtype, tc.kernels,
                               attn_implementation=getattr(config, "_attn_implementation", None) or None,
                               lean=tc.lean_activations)
    mem = training_memory(model, feats, tc, dtype, hw)
    dataset = Dataset.from_list(feats)
    args = TrainingArguments(**training_kwargs(tc, out, dtype, hw, batching, installed_trackers(tc.report_to),
                                               progress, kernels))
    identity = run_identity(cfg)
    resume_from, start_step = resume_point(out, tc.resume, identity)
    collator = FlatCollator() if batching == "padding_free" else PadCollator(tokenizer.pad_token_id)
    held_out = HeldOutEval(fmt, eval_records, cfg.eval.batch_size, tc.eval_steps, out, tc.early_stopping_patience,
                           resume_step=start_step if resume_from else None) if eval_records else None
    # gradient checkpointing turns the KV cache off in training, so there is no prefix cache to share
    share = tc.shared_prefix and batching != "padding_free" and not tc.gradient_checkpointing
    trainer = MedQATrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        callbacks=[MetricsLog(out / "metrics.jsonl")] + ([held_out.callback()] if held_out is not None else []),
        token_counter=collator, target_only_logits=tc.target_only_logits, share_prefix=share,
        # the system prompt and template every example starts with: once per optimizer step
        step_prefix=StepPrefix(common_prefix(feats)) if share else None,
        # the head and cross-entropy fused by the kernel path (Liger's kernel or medqa.lean's); none for plain
        fused_head=kernels.path if kernels.path != "plain" and not tc.torch_compile else False,
        run_identity=identity,
        tensorboard_dir=out / "tensorboard")
    if held_out is not None:
        held_out.trainer = trainer
    lean = lean_training(model) if kernels.path == "lean" else contextlib.nullcontext({})
    t = time.perf_counter()
    with lean as lean_patched:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t
    best = held_out.outcome(model, tc.keep_best) if held_out is not None else None
    adapter_dir = out / "adapter"
    if trainer.is_world_process_zero():
        save_adapter(model, tokenizer, adapter_dir,
                     meta={"base_model": resolve_base(cfg.model), "protocol": fmt.protocol})
    summary = train_summary(cfg, hw, model, trainer, fmt=fmt, batching=batching, dtype=dtype, feats=feats,
                            stats=stats, mem=mem, result=result, seconds=seconds, start_step=start_step,
                            lean_patched=lean_patched, best=best, adapter_dir=adapter_dir, kernels=kernels)
    if trainer.is_world_process_zero():
        atomic_write_json(out / "train_summary.json", summary)
        write_train_report(out, summary)
    return summary
