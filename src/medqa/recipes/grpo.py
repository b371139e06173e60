"""LoRA GRPO, as one recipe beside LoRA SFT: setup -> train -> calibrate -> evaluate -> save.

    medqa train --method grpo --dataset demo --data.subset train --data.train_size 150 --out runs/grpo
    medqa train --config configs/qwen3-1.7b-medmcqa-grpo.yaml      # SFT adapter -> GRPO (GPU)

`GRPORecipe(cfg).run()` is `LoRASFTRecipe` with another training step: the same data hygiene (evaluation
questions removed from training, calibration and `eval_size` questions held out by content before mixing),
the same option-order augmentation (so no reward is won by the data set's favourite letter; the prompts'
gold-letter balance before and after it is printed and reported), the same model setup (a new LoRA
adapter, or `model.adapter` / `--init-adapter` continued, e.g. an SFT run's adapter), then GRPO
(medqa.training.grpo: TRL's GRPOTrainer, rewards from medqa.rewards), the confidence calibration, the
letter-scoring evaluation and OUT/run_summary.json.
"""

from __future__ import annotations

from typing import Any

from medqa.config import RunConfig
from medqa.recipes.lora_sft import LoRASFTRecipe


def run_grpo(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """GRPO-train a LoRA adapter; with `eval_data` / `eval_sets`, evaluate after training (letter scoring)."""
    return GRPORecipe(cfg, progress=progress).run()


class GRPORecipe(LoRASFTRecipe):
    """One GRPO run into `cfg.out` (`train.method: grpo`); `result["letter_balance"]` holds the prompts'
    gold-letter counts before and after option-order augmentation."""

    def __init__(self, cfg: RunConfig, *args: Any, **kwargs: Any):
        if cfg.train.method != "grpo":  # the run folder's config.yaml and run identity say what was trained
            cfg = cfg.model_copy(deep=True)
            cfg.train.method = "grpo"
        super().__init__(cfg, *args, **kwargs)

    def setup_data(self) -> None:
        from medqa.training.grpo import check_group_size

        check_group_size(self.cfg)  # a batch that cannot hold whole groups fails before anything loads
        super().setup_data()
        aug = self.result["augmentation"]
        self.result["letter_balance"] = {"before augmentation": aug["gold_before"],
                                         "after augmentation": aug["gold_after"]}
        if self.progress:
            for name, counts in self.result["letter_balance"].items():
                shown = "  ".join(f"{k}: {v}" for k, v in counts.items())
                print(f"medqa: GRPO prompts' gold letters {name}: {shown}", flush=True)

    def train(self) -> None:
        """GRPO: completions sampled, rewarded and turned into a LoRA update (medqa.training.grpo)."""
        from medqa.training.grpo import train_grpo

        self.result["train"] = train_grpo(self.cfg, self.model, self.tokenizer, self.records, self.hw,
                                          progress=self.progress, eval_records=self.held_out_records,
                                          letters=self.result["letter_balance"])
