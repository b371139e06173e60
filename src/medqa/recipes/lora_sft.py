"""LoRA supervised fine-tuning, as one recipe: setup -> train -> calibrate -> evaluate -> save.

    from medqa import build_config, run_train
    result = run_train(build_config("configs/qwen3-1.7b-medmcqa.yaml", {"out": "runs/qwen3"}))

`LoRASFTRecipe(cfg).run()` reads every data set before the model loads (a bad file fails fast), removes
the evaluation questions from training, holds out the calibration and `eval_size` questions by content
before mixing and augmenting, trains (medqa.training), fits the confidence temperature and abstention
threshold on the calibration split, evaluates on the evaluation sets and writes OUT/run_summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqa.calibrate import (
    abstain_threshold,
    apply_temperature,
    augment_options,
    fit_temperature,
    nll,
    save_calibration,
)
from medqa.config import RunConfig, apply_env
from medqa.datasets import hash_order, load_dataset_config
from medqa.errors import DataError
from medqa.format import PromptFormat
from medqa.hardware import detect, launch_rank
from medqa.hygiene import hold_out_by_content, mix, remove_leakage
from medqa.io import atomic_write_json
from medqa.modeling import apply_lora, describe, load_adapter, load_model, resolve_protocol
from medqa.recipes.distributed import init_distributed, rank
from medqa.recipes.evaluation import evaluate_sets, evaluation_sets, load_eval_sets
from medqa.training import prepare_run_dir


def run_train(cfg: RunConfig, eval_before: bool = False, progress: bool = True) -> dict[str, Any]:
    """LoRA fine-tune; with `eval_data` / `eval_sets`, evaluate after (and optionally before) training.
    `train.method: grpo` runs the GRPO recipe (medqa.recipes.grpo) instead of supervised fine-tuning."""
    if cfg.train.method == "grpo":
        from medqa.recipes.grpo import GRPORecipe

        return GRPORecipe(cfg, eval_before=eval_before or cfg.eval.before, progress=progress).run()
    return LoRASFTRecipe(cfg, eval_before=eval_before or cfg.eval.before, progress=progress).run()


class LoRASFTRecipe:
    """One LoRA SFT run into `cfg.out`; `result` (OUT/run_summary.json) gathers what each step reports.
    `eval_before`: the base model is evaluated too (OUT/eval_before), before its adapter is added."""

    def __init__(self, cfg: RunConfig, eval_before: bool = False, progress: bool = True):
        self.cfg, self.eval_before, self.progress = cfg, eval_before, progress
        self.out = Path(cfg.out)
        self.result: dict[str, Any] = {}
        self.hw: Any = None  # set by setup_data, with the data below
        self.eval_sets: dict[str, Any] = {}
        self.records: list[Any] = []  # training questions, augmented
        self.calibration_records: list[Any] = []  # held out to fit the temperature and abstention threshold
        self.held_out_records: list[Any] = []  # `eval_size`: scored during training, best adapter kept
        self.model: Any = None  # set by setup_model
        self.tokenizer: Any = None

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        self.calibrate()
        self.evaluate()
        self.save()
        return self.result

    def setup(self) -> None:
        """The run folder, then the data, then the model (the slow part, last)."""
        from transformers import set_seed

        apply_env(self.cfg)
        # before anything slow; rank 0 alone under a launcher (the others would see the folder it starts writing)
        if launch_rank() == 0:
            removed = prepare_run_dir(self.out, self.cfg.train.resume, self.cfg.train.overwrite)
            if removed:
                print(f"medqa: --overwrite: removed the earlier run's {', '.join(removed)} from {self.out}",
                      flush=True)
        set_seed(self.cfg.train.seed)  # the LoRA initialisation too: the same config gives the same adapter
        self.setup_data()
        self.setup_model()

    def setup_data(self) -> None:
        """Evaluation sets, training data without them, the held-out splits, option-order augmentation."""
        cfg = self.cfg
        self.hw = detect(cfg.model.device)  # under a launcher: the GPU of this process's LOCAL_RANK
        self.eval_sets = load_eval_sets(cfg, evaluation_sets(cfg, include_data=False))
        records, self.calibration_records, self.held_out_records, self.result = training_data(
            cfg, {name: es.records for name, es in self.eval_sets.items()})
        self.records, self.result["augmentation"] = augment_options(records, cfg.train.augment_copies, cfg.train.seed)

    def setup_model(self) -> None:
        """The base model (evaluated as it is with `eval_before`), then a new LoRA adapter or the given one."""
        from medqa.training.trainer import zero3_loading

        cfg = self.cfg
        self.hw = init_distributed(self.hw)  # under a launcher: the process group exists before loading (FSDP)
        zero3_args = zero3_loading(cfg, self.hw)  # ZeRO-3: registered before from_pretrained, which then partitions
        self.model, self.tokenizer = load_model(cfg.model, self.hw, with_adapter=False)
        del zero3_args
        if self.eval_before and self.eval_sets:
            no_calibration = {"temperature": 1.0, "abstain_threshold": None}
            self.result["before"] = evaluate_sets(self.model, self.tokenizer, cfg, self.eval_sets,
                                                  self.out / "eval_before", self.progress, no_calibration)
        if cfg.model.adapter:  # continue training an existing adapter
            self.model = load_adapter(self.model, cfg.model.adapter, cfg.model.allow_pickle, trainable=True)
        else:
            self.model = apply_lora(self.model, cfg.lora)
        self.result["model"] = describe(self.model)

    def train(self) -> None:
        """Fine-tune; the adapter, checkpoints, metrics and training report go into the run folder."""
        from medqa.training.loop import train

        self.result["train"] = train(self.cfg, self.model, self.tokenizer, self.records, self.hw,
                                     progress=self.progress, eval_records=self.held_out_records)

    def calibrate(self) -> None:
        """Temperature and abstention threshold from the calibration split, saved with the adapter."""
        self.result["calibration"] = fit_calibration(self.model, self.tokenizer, self.cfg, self.calibration_records,
                                                     Path(self.result["train"]["adapter"]), self.progress)

    def evaluate(self) -> None:
        """The trained model on every evaluation set, with the fitted calibration."""
        if self.eval_sets:
            self.result["after"] = evaluate_sets(self.model, self.tokenizer, self.cfg, self.eval_sets,
                                                 self.out / "eval_after", self.progress, self.result["calibration"])

    def save(self) -> None:
        atomic_write_json(self.out / "run_summary.json", self.result)


def training_parts(cfg: RunConfig) -> tuple[dict[str, tuple[list[Any], float]], dict[str, Any]]:
    """`cfg.data` as one part, or each dataset of `cfg.mixture`: {name: (records, weight)} and load reports."""
    if not cfg.mixture:
        records, report = load_dataset_config(cfg.data, default_split="train")
        return {"data": (records, 1.0)}, {"data_load": report.as_dict()}
    parts, loads = {}, {}
    for i, entry in enumerate(cfg.mixture):
        name = f"{i}:{entry.dataset}"
        records, report = load_dataset_config(entry, default_split="train")
        parts[name] = (records, entry.weight)
        loads[name] = report.as_dict()
    return parts, {"data_load": loads}


def training_data(cfg: RunConfig, held: dict[str, list[Any]] | None = None
                  ) -> tuple[list[Any], list[Any], list[Any], dict[str, Any]]:
    """(train, calibration, held-out, info): the training data with evaluation questions removed, the
    calibration and `eval_size` questions held out by content before mixing and up-sampling (so no copy
    or near-duplicate of a held-out question trains), then the seeded mixture. Not yet augmented."""
    parts, info = training_parts(cfg)
    if held:  # no evaluation question (same normalised question and options) may be trained on
        reports = {}
        for name, (records, weight) in parts.items():
            kept, reports[name] = remove_leakage(records, held)
            parts[name] = (kept, weight)
        info["leakage"] = {
            "input": sum(r["input"] for r in reports.values()), "kept": sum(r["kept"] for r in reports.values()),
            "removed": sum(r["removed"] for r in reports.values()),
            "by_eval": {k: sum(r["by_eval"][k] for r in reports.values()) for k in held},
            "removed_ids": [i for r in reports.values() for i in r["removed_ids"]][:20],
        }
        if not any(records for records, _ in parts.values()):
            raise DataError("data", None, None, "every training question also occurs in the evaluation data")
    n_rows = cfg.mixture_total or sum(len(records) for records, _ in parts.values())
    n_cal = cfg.train.calibration_size if cfg.train.calibration_size is not None else min(500, n_rows // 10)
    kept, splits = hold_out_by_content(
        {name: records for name, (records, _) in parts.items()},
        [("calibration_size", n_cal, cfg.train.seed + 1), ("eval_size", cfg.train.eval_size, cfg.train.seed + 2)],
        hash_order)
    if not cfg.mixture:
        records = kept["data"]
    else:
        records, info["mixture"] = mix({name: (kept[name], w) for name, (_, w) in parts.items()},
                                       seed=cfg.mixture_seed, total=cfg.mixture_total)
    info["held_out"] = {"calibration": len(splits["calibration_size"]), "eval_size": len(splits["eval_size"]),
                        "by": "normalised question and options (case, punctuation, whitespace, option order)"}
    return records, splits["calibration_size"], splits["eval_size"], info


def fit_calibration(model: Any, tokenizer: Any, cfg: RunConfig, records: list[Any], adapter_dir: Path,
                    progress: bool) -> dict[str, Any]:
    """Fit the temperature and the abstention threshold on the calibration split; save them with the adapter."""
    import numpy as np

    from medqa.evaluate import expected_calibration_error
    from medqa.inference import score_records

    if not records:
        # no calibration split: identity temperature, no fitted threshold (the default low-confidence flag applies)
        info: dict[str, Any] = {"temperature": 1.0, "abstain_threshold": None, "n": 0}
    else:
        fmt = PromptFormat(tokenizer, resolve_protocol(cfg))
        raw = score_records(model, fmt, records, cfg.eval.batch_size, progress, desc="calibration")
        answers = [r.answer for r in records]
        t = fit_temperature(raw, answers)
        scaled = apply_temperature(raw, t)
        correct = np.array([int(np.argmax(p)) == a for p, a in zip(raw, answers)], dtype=float)
        ece = lambda ps: expected_calibration_error(np.array([p.max() for p in ps]), correct)  # noqa: E731
        conf = np.array([p.max() for p in scaled])
        info = {
            "temperature": t,
            # at the search bound: the split says "no confidence at all" (T -> inf) or "sharpen without limit"
            "temperature_at_bound": not 0.051 < t < 19.9,
            # the lowest threshold whose kept answers reach the target with a stated confidence (or abstain_all)
            **abstain_threshold(conf, correct, cfg.eval.target_accuracy, cfg.eval.guarantee_level),
            "target_accuracy": cfg.eval.target_accuracy,
            "n": len(records),
            "ids": [r.id for r in records],
            "accuracy": float(correct.mean()),
            "nll_before": nll(raw, answers), "nll_after": nll(raw, answers, t),
            "ece_before": ece(raw), "ece_after": ece(scaled),
        }
    if rank() == 0:
        save_calibration(adapter_dir, info)
    return info
