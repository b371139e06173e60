"""The Transformers Trainer as MedQA runs it (`MedQATrainer`), its arguments, and what it logs.

`MedQATrainer` adds to the Trainer: the loss with target-only logits and shared prefixes
(medqa.training.prefix), atomic checkpoints that carry the run's identity, a seeded length-grouped or
balanced order, and tokens/s and the non-padding share in the logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from medqa.config import RunConfig
from medqa.hardware import Hardware
from medqa.kernels import KernelPlan, liger_kernel_config
from medqa.training.checkpoints import RUN_FILE
from medqa.training.collate import TokenCounter, seeded_length_sampler
from medqa.training.prefix import StepPrefix, target_only_loss


class MedQATrainer(Trainer):
    """Trainer with target-only logits and shared prefixes, atomic checkpoints, seeded length-grouped
    order, and tokens/s and the non-padding share in the logs.

    `token_counter`: the collator, whose token counts are logged. `target_only_logits`: the loss of
    `target_only_loss`, else the model's own. `share_prefix`: the prefix rows share run once per batch
    (not under FSDP / DeepSpeed), and `step_prefix` once per optimizer step. `fused_head`: the head and
    cross-entropy fused, by medqa.lean (True or "lean") or by Liger's kernel ("liger", medqa.kernels).
    `run_identity`: written into every checkpoint. `tensorboard_dir`: where TensorBoard events go."""

    def __init__(self, *args: Any, token_counter: TokenCounter | None = None, target_only_logits: bool = True,
                 share_prefix: bool = False, step_prefix: StepPrefix | None = None, fused_head: bool | str = False,
                 run_identity: dict[str, Any] | None = None, tensorboard_dir: Path | None = None, **kwargs: Any):
        self.token_counter = token_counter
        self.target_only_logits = target_only_logits
        self.fused_head = "lean" if fused_head is True else fused_head
        self.run_identity = run_identity
        self.work: dict[str, int] = {}  # positions run through the model and given logits (target_only_loss)
        self._last_log: tuple[float, int] | None = None
        self._staging: str | None = None
        super().__init__(*args, **kwargs)
        # the prefix pass runs on the unwrapped model: proven under DDP (tests), not enabled under sharded engines
        sharded = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        self.share_prefix = share_prefix and not sharded
        self.step_prefix = step_prefix if self.share_prefix else None
        for cb in self.callback_handler.callbacks:  # TensorBoard events into the run directory
            if tensorboard_dir is not None and type(cb).__name__ == "TensorBoardCallback":
                cb.logging_dir = str(tensorboard_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if not self.target_only_logits or return_outputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = target_only_loss(model, inputs, num_items_in_batch, share_prefix=self.share_prefix,
                                prefix_model=self.accelerator.unwrap_model(model), work=self.work,
                                step_prefix=self.step_prefix if self.share_prefix else None,
                                last_in_step=self.accelerator.sync_gradients, step=self.state.global_step,
                                # as Trainer.compute_loss: DDP averages gradients
                                scale=self.accelerator.num_processes if num_items_in_batch is not None
                                and self.args.average_tokens_across_devices else 1.0,
                                fused_head=self.fused_head)
        return loss

    def _get_output_dir(self, trial):  # noqa: ANN001
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):  # noqa: ANN001
        """Atomic checkpoints: written into OUT/checkpoints/.staging, then renamed into place, so a
        `checkpoint-N` folder is either complete or absent (a kill or a full disk mid-save)."""
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, ".staging")
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)  # e.g. a full disk: no debris
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's files (e.g. its RNG state) are written
        if self.args.should_save:
            if self.run_identity is not None:  # which run this checkpoint belongs to (checked on resume)
                with open(os.path.join(staging, name, RUN_FILE), "w", encoding="utf-8") as f:
                    json.dump(self.run_identity, f)
            final = os.path.join(run_dir, name)
            if os.path.exists(final):  # a leftover of an earlier, interrupted run
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            with contextlib.suppress(OSError):
                os.rmdir(staging)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
        sampler = super()._get_train_sampler(train_dataset)
        if self.args.train_sampling_strategy == "batch_rebalance" and sampler is not None:
            sampler.seed = self.args.seed  # Transformers leaves it at 42 whatever the run's seed
            # balance the positions each micro-batch runs: a prefix run once per step does not count
            p = len(self.step_prefix) if self.step_prefix is not None else 0
            sampler.lengths = [max(1, n - p) for n in sampler.lengths]
        if self.args.train_sampling_strategy != "group_by_length" or sampler is None:
            return sampler
        ds = train_dataset if train_dataset is not None else self.train_dataset
        return seeded_length_sampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                     ds["length"], self.args.seed)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.token_counter is not None:
            now = time.perf_counter()
            counts = torch.tensor([self.token_counter.tokens, self.token_counter.slots], dtype=torch.float64,
                                  device=self.args.device)
            if self.accelerator.num_processes > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            tokens, slots = (int(x) for x in counts.tolist())
            if self._last_log is not None:
                t0, tok0 = self._last_log
                logs["tokens_per_second"] = round((tokens - tok0) / max(now - t0, 1e-9), 1)
            logs["non_padding_share"] = round(tokens / slots, 4) if slots else 1.0
            self._last_log = (now, tokens)
        super().log(logs, start_time)


class MetricsLog(TrainerCallback):
    """One JSON line per log call in OUT/metrics.jsonl (rank 0)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def installed_trackers(requested: list[str]) -> list[str]:
    """Trackers that are installed; a missing one is named, not a crash deep in the Trainer. "auto":
    TensorBoard when it is installed (the `tracking` extra), silently nothing otherwise."""
    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "trackio": ("trackio",),
                "wandb": ("wandb",)}
    out = []
    for r in requested:
        if r == "none":
            continue
        if r == "auto":
            if any(importlib.util.find_spec(m) for m in packages["tensorboard"]) and "tensorboard" not in out:
                out.append("tensorboard")
            continue
        if not any(importlib.util.find_spec(m) for m in packages.get(r, (r,))):
            print(f"medqa: train.report_to {r}: the package is not installed, skipping it", flush=True)
            continue
        out.append(r)
    return out


def _arguments_class() -> type:
    from transformers import TrainingArguments

    return TrainingArguments


def zero3_loading(cfg: RunConfig, hw: Hardware) -> Any:
    """Under `accelerate launch` with DeepSpeed ZeRO-3, `from_pretrained` builds the model already
    partitioned across the GPUs (deepspeed.zero.Init) when TrainingArguments exist first: creating them
    registers the DeepSpeed config that Transformers reads while loading. Returns those arguments (keep
    them alive until training), or None when ZeRO-3 is not in use."""
    from medqa.hardware import resolve_dtype, sharded_engine

    if sharded_engine() != "deepspeed-zero3":
        return None
    dtype = str(resolve_dtype(cfg.model.dtype, hw)).replace("torch.", "")
    return _arguments_class()(output_dir=str(Path(cfg.out) / "checkpoints"), bf16=dtype == "bfloat16",
                             fp16=dtype == "float16", report_to="none")


def training_kwargs(tc: Any, out: Path, dtype: str, hw: Hardware, batching: str, report_to: list[str],
                    progress: bool, kernels: KernelPlan | None = None) -> dict[str, Any]:
    """TrainingArguments for `train` settings `tc` (checkpoints in OUT/checkpoints); `kernels`: the run's
    kernel path (medqa.kernels.training_kernels), whose liger path sets the Trainer's `use_liger_kernel`."""
    kwargs = dict(
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
        train_sampling_strategy={"length_grouped": "group_by_length", "balanced": "batch_rebalance"}.get(batching, "random"),
        neftune_noise_alpha=tc.neftune_alpha,
        torch_compile=tc.torch_compile,
        report_to=report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    if kernels is not None and kernels.use_liger_kernel:
        kwargs["use_liger_kernel"] = True
        kwargs["liger_kernel_config"] = liger_kernel_config(tc.target_only_logits)
    return kwargs
