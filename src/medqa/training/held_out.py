"""Held-out evaluation during training: score, keep the best adapter, stop early."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medqa.datasets import MCQRecord
from medqa.format import PromptFormat
from medqa.io import atomic_write_json
from medqa.training.checkpoints import save_adapter



class HeldOutEval:
    """Scores held-out questions with the fast letter scorer every `every` steps; keeps the best
    adapter in OUT/best (atomically); asks the Trainer to stop after `patience` evaluations
    without improvement. Its state lives in OUT/best/best.json, so a resumed run continues it."""

    def __init__(self, fmt: PromptFormat, records: list[MCQRecord], batch_size: int, every: int, out: Path,
                 patience: int | None, resume_step: int | None):
        self.fmt, self.records, self.batch_size, self.every = fmt, records, batch_size, every
        self.dir = out / "best"
        self.patience = patience
        self.trainer: Any = None
        self.state = {"step": None, "accuracy": -1.0, "evals_since_best": 0, "history": []}
        if resume_step is not None and (self.dir / "best.json").is_file():
            saved = json.loads((self.dir / "best.json").read_text())
            # forget evaluations logged after the checkpoint the run restarts from: the best step, its accuracy
            # and the evaluations since it are recomputed from what is left, as if the run had stopped there
            self.state = self.state_at(saved["history"], resume_step)
            if saved.get("step") is not None and saved["step"] > resume_step:
                # the saved best adapter comes from a step the resumed run will redo; the best one before the
                # checkpoint was overwritten by it, so none is kept until the run improves again
                print(f"medqa: the best adapter in {self.dir} is from step {saved['step']}, after the checkpoint "
                      f"(step {resume_step}); it is discarded", flush=True)
                shutil.rmtree(self.dir / "adapter", ignore_errors=True)
        elif resume_step is None and self.dir.exists():
            shutil.rmtree(self.dir)

    @staticmethod
    def state_at(history: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """The early-stopping state after the evaluations up to `step`, replayed as the callback keeps it."""
        state: dict[str, Any] = {"step": None, "accuracy": -1.0, "evals_since_best": 0, "history": []}
        for h in history:
            if h["step"] > step:
                continue
            state["history"].append(h)
            if h["eval_accuracy"] > state["accuracy"]:
                state.update(step=h["step"], accuracy=h["eval_accuracy"], evals_since_best=0)
            else:
                state["evals_since_best"] += 1
        return state

    def score(self, model: Any) -> dict[str, float]:
        import numpy as np

        from medqa.inference import score_records

        was_training = model.training
        model.eval()
        probs = score_records(model, self.fmt, self.records, self.batch_size, progress=False, desc="held-out")
        model.train(was_training)
        answers = np.array([r.answer for r in self.records])
        pred = np.array([int(np.argmax(p)) for p in probs])
        gold_p = np.array([max(float(p[a]), 1e-12) for p, a in zip(probs, answers)])
        return {"eval_accuracy": float((pred == answers).mean()), "eval_nll": float(-np.log(gold_p).mean())}

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Cb(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                last = state.global_step >= state.max_steps
                if state.global_step % outer.every and not last:
                    return control
                if any(h["step"] == state.global_step for h in outer.state["history"]):
                    return control  # already scored before a resume
                metrics = outer.score(model)
                should_log = control.should_log  # Trainer.log resets it: the step's own log line must still come
                outer.trainer.log(dict(metrics))
                control.should_log = should_log
                acc = metrics["eval_accuracy"]
                outer.state["history"].append({"step": state.global_step, **metrics})
                if acc > outer.state["accuracy"]:
                    outer.state.update(step=state.global_step, accuracy=acc, evals_since_best=0)
                    if state.is_world_process_zero:
                        outer.save_best(model)
                else:
                    outer.state["evals_since_best"] += 1
                    if outer.patience and outer.state["evals_since_best"] >= outer.patience:
                        print(f"medqa: early stopping at step {state.global_step}: no improvement in "
                              f"{outer.patience} evaluations (best {outer.state['accuracy']:.1%} at step "
                              f"{outer.state['step']})", flush=True)
                        control.should_training_stop = True
                if state.is_world_process_zero:
                    outer.dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(outer.dir / "best.json", outer.state)
                return control

        return Cb()

    def save_best(self, model: Any) -> None:
        save_adapter(model, None, self.dir / "adapter")

    def load_best_into(self, model: Any) -> bool:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        f = self.dir / "adapter" / "adapter_model.safetensors"
        if self.state["step"] is None or not f.is_file():
            return False
        set_peft_model_state_dict(model, load_file(str(f), device=str(next(model.parameters()).device)))
        return True

    def outcome(self, model: Any, keep_best: bool) -> dict[str, Any]:
        """The best step, its accuracy and the evaluation history; with `keep_best` the best adapter is
        loaded back into `model` (`kept`: whether there was one to load)."""
        best = {k: self.state[k] for k in ("step", "accuracy")} | {"history": self.state["history"], "kept": False}
        if keep_best:
            best["kept"] = self.load_best_into(model)
        return best
