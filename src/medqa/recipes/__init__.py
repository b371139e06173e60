"""Recipes: whole runs composed from the blocks (data, prompt format, model, training, calibration,
evaluation). Each takes a `RunConfig` and writes its run folder; the CLI is a thin layer over them.

    evaluation   run_eval: score a model (+ adapter) on one or several evaluation sets
    lora_sft     run_train / LoRASFTRecipe: setup -> train -> calibrate -> evaluate -> save
    grpo         run_grpo / GRPORecipe: the same, trained with GRPO on reasoning (train.method grpo)
    quickstart   quickstart: the offline demo (the LoRA SFT recipe with a before/after table)

    from medqa import build_config, run_eval
    summary = run_eval(build_config(overrides={"data.path": "validation.jsonl", "out": "runs/eval"}))
"""

from medqa.recipes.distributed import init_distributed
from medqa.recipes.evaluation import (
    EvalSet,
    describe_data,
    evaluate_sets,
    evaluation_sets,
    few_shot_examples,
    load_eval_sets,
    run_eval,
)
from medqa.recipes.grpo import GRPORecipe, run_grpo
from medqa.recipes.lora_sft import LoRASFTRecipe, fit_calibration, run_train, training_data, training_parts
from medqa.recipes.quickstart import quickstart, quickstart_config_path
from medqa.report import before_after_table

__all__ = [
    "run_eval", "run_train", "run_grpo", "GRPORecipe", "quickstart", "quickstart_config_path", "LoRASFTRecipe",
    "EvalSet",
    "load_eval_sets", "evaluation_sets", "evaluate_sets", "few_shot_examples", "describe_data",
    "training_data", "training_parts", "fit_calibration", "before_after_table", "init_distributed",
]
