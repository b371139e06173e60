"""Training blocks, composed by `train` (medqa.training.loop) and the LoRA SFT recipe (medqa.recipes):

    collate      token ids and labels per example, padded or padding-free batches, batching mode, seeded order
    prefix       the loss: target-only logits, the shared prompt prefix run once per batch or optimizer step
    checkpoints  complete checkpoints, run identity, one run per folder, atomic adapter save, resume point
    memory       free memory, the training memory estimate and its check
    held_out     held-out accuracy during training: best adapter, early stopping
    trainer      MedQATrainer (the Transformers Trainer with the above), its arguments, metrics log
    report       train_summary.json, train_report.md, train_curves.png
    loop         `train`: one fine-tuning run from the blocks
    grpo         `train_grpo`: one GRPO run (TRL's GRPOTrainer) with the same run folder and reports

`trainer`, `loop` and `grpo` import the Transformers Trainer (and TRL) (seconds); their names load on first use.
"""

from medqa.training.checkpoints import (
    CHECKPOINT_FILES,
    RUN_FILE,
    RUN_OUTPUTS,
    check_checkpoint_belongs,
    last_complete_checkpoint,
    prepare_run_dir,
    resume_point,
    run_identity,
    save_adapter,
)
from medqa.training.collate import (
    FlatCollator,
    PadCollator,
    TokenCounter,
    build_features,
    resolve_batching,
    seeded_length_sampler,
)
from medqa.training.held_out import HeldOutEval
from medqa.training.memory import available_memory, check_memory, estimate_memory, training_memory
from medqa.training.prefix import StepPrefix, common_prefix, shared_prefix_length, target_only_loss
from medqa.training.report import train_summary, write_train_report

_LAZY = {
    "MedQATrainer": "trainer", "MetricsLog": "trainer", "installed_trackers": "trainer",
    "training_kwargs": "trainer", "zero3_loading": "trainer", "train": "loop", "train_grpo": "grpo",
}


def __getattr__(name: str):  # the Trainer-based names: importing medqa.training stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"medqa.training.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "CHECKPOINT_FILES", "RUN_FILE", "RUN_OUTPUTS", "check_checkpoint_belongs", "last_complete_checkpoint",
    "prepare_run_dir", "resume_point", "run_identity", "save_adapter",
    "FlatCollator", "PadCollator", "TokenCounter", "build_features", "resolve_batching", "seeded_length_sampler",
    "HeldOutEval", "available_memory", "check_memory", "estimate_memory", "training_memory",
    "StepPrefix", "common_prefix", "shared_prefix_length", "target_only_loss",
    "train_summary", "write_train_report", *_LAZY,
]
