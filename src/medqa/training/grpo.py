"""`train_grpo`: LoRA GRPO on reasoning prompts, with TRL's GRPOTrainer and MedQA's run folder.

The model reads each question through `medqa.reasoning.reasoning_prompt` (Qwen3 thinking mode on or off;
a plain-text rationale for other models), samples `grpo.num_generations` completions per question, and
TRL's GRPOTrainer turns the rewards of `medqa.rewards` (correct letter, format, optional length penalty,
each logged on its own) into group-relative advantages. No RL loop is written here: this module builds
the prompts, TRL's arguments and a trainer that keeps MedQA's run-folder contract:

  checkpoints/        atomic checkpoints carrying the run identity (MedQATrainer's), resumable
  metrics.jsonl       one line per logging step: loss, rewards/<function>/mean, reward, kl, completion
                      lengths, seconds_per_step, held-out eval_accuracy
  completions.jsonl   grpo.log_completions sampled completions per logging step: question id, gold letter,
                      parsed letter, each reward
  adapter/            the LoRA adapter with medqa_adapter.json (base model, protocol, method)
  train_summary.json, train_report.md, train_curves.png   reward curves and what a step costs

Generation runs through vLLM when `grpo.use_vllm` says so (auto: vllm importable and a CUDA/ROCm GPU),
else through Transformers' `generate`: TRL's own switch.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from trl import GRPOConfig, GRPOTrainer
from transformers import Trainer

from medqa.config import RunConfig, dump_config
from medqa.datasets import LETTERS, MCQRecord
from medqa.format import PromptFormat
from medqa.hardware import Hardware, detect, launch_position
from medqa.io import atomic_write_json, atomic_write_text
from medqa.modeling import resolve_base, resolve_protocol
from medqa.inference_stream import decode_generated, skipped_ids
from medqa.reasoning import REASONING_TAGS, parse_final_answer, reasoning_prompt, supports_thinking
from medqa.rewards import reward_functions
from medqa.training.checkpoints import resume_point, run_identity, save_adapter
from medqa.training.held_out import HeldOutEval
from medqa.training.memory import available_memory, check_memory, estimate_memory
from medqa.training.trainer import MedQATrainer, MetricsLog, installed_trackers, training_kwargs
from medqa.versions import library_versions

COMPLETIONS_LOG = "completions.jsonl"


def letter_balance(records: list[MCQRecord]) -> dict[str, int]:
    """Questions per gold letter."""
    return dict(sorted(Counter(LETTERS[r.answer] for r in records).items()))


def prompt_rows(tokenizer: Any, records: list[MCQRecord], thinking: bool, max_length: int
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """TRL's dataset rows: the reasoning prompt as text (the chat template applied here, so the thinking switch
    is MedQA's one rule), and the columns the rewards read (`answer_index`, `n_options`). Prompts longer than
    `max_length` tokens are dropped and counted."""
    rows, lengths, dropped = [], [], 0
    bos = getattr(tokenizer, "bos_token", None)
    for r in records:
        text = reasoning_prompt(tokenizer, r, thinking)
        ids = tokenizer(text)["input_ids"]
        if bos and text.startswith(bos) and len(ids) > 1 and ids[0] == ids[1] == tokenizer.bos_token_id:
            text = text[len(bos):]  # the template wrote the BOS the tokenizer adds again: keep one
            ids = ids[1:]
        if len(ids) > max_length:
            dropped += 1
            continue
        lengths.append(len(ids))
        rows.append({"prompt": text, "answer_index": r.answer, "n_options": len(r.options), "id": r.id})
    if not rows:
        from medqa.errors import DataError

        raise DataError("data", None, None, f"every prompt is longer than train.max_length ({max_length} tokens)")
    lengths.sort()
    return rows, {"questions": len(rows), "dropped_too_long": dropped,
                  "prompt_tokens_p50_max": [lengths[len(lengths) // 2], lengths[-1]]}


def use_vllm(setting: bool | str, hw: Hardware) -> bool:
    """`grpo.use_vllm`: auto is on when vllm is importable and training runs on a CUDA/ROCm GPU."""
    if setting == "auto":
        return hw.backend in ("cuda", "rocm") and importlib.util.find_spec("vllm") is not None
    return bool(setting)


def check_group_size(cfg: RunConfig) -> None:
    """The generation batch (batch_size x grad_accum x processes completions) must hold whole groups."""
    from medqa.errors import ConfigError

    tc, g = cfg.train, cfg.grpo
    batch = tc.batch_size * tc.grad_accum * launch_position()[1]
    if batch % g.num_generations:
        raise ConfigError(f"GRPO: train.batch_size x train.grad_accum x processes = {batch} completions per step is "
                          f"not a multiple of grpo.num_generations ({g.num_generations}); e.g. --train.batch_size "
                          f"{g.num_generations} or --grpo.num_generations {max(2, _largest_divisor(batch))}")


def _largest_divisor(n: int) -> int:
    return next((d for d in range(min(n, 8), 1, -1) if n % d == 0), 2)


def grpo_arguments(cfg: RunConfig, out: Path, dtype: str, hw: Hardware, report_to: list[str], progress: bool,
                   weights: list[float], vllm: bool) -> GRPOConfig:
    """GRPOConfig: MedQA's TrainingArguments (checkpoints, schedule, precision, trackers) plus the GRPO settings."""
    g = cfg.grpo
    kwargs = training_kwargs(cfg.train, out, dtype, hw, "padded", report_to, progress)
    kwargs.update(
        neftune_noise_alpha=None, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, beta=g.beta, loss_type=g.loss_type, scale_rewards=g.scale_rewards,
        num_iterations=g.num_iterations, epsilon=g.epsilon, mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=weights, use_vllm=vllm, vllm_mode=g.vllm_mode,
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization, log_completions=False, shuffle_dataset=True,
        remove_unused_columns=False,
        disable_dropout=True,  # the policy that samples is the one whose log-probabilities are trained
    )
    return GRPOConfig(**kwargs)


def grpo_memory(model: Any, cfg: RunConfig, longest_prompt: int, dtype: str, hw: Hardware, vllm: bool
                ) -> dict[str, int]:
    """Peak memory: MedQA's training estimate for batch_size rows of prompt + completion (logits on the
    completion only), plus the generation's KV cache for the whole generation batch (batch_size x grad_accum
    rows; with colocated vLLM, the share of the GPU it reserves instead). Refused early when it cannot fit."""
    tc, g = cfg.train, cfg.grpo
    act = 4 if dtype == "float32" else 2
    seq = longest_prompt + g.max_completion_length
    mem = estimate_memory(model, tc.batch_size, seq, g.max_completion_length, tc.gradient_checkpointing, act)
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 1))
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    mem["generation"] = tc.batch_size * tc.grad_accum * seq * text.num_hidden_layers * 2 * heads * head_dim * act
    mem["free"] = available_memory(hw)
    if vllm and g.vllm_mode == "colocate" and hw.backend in ("cuda", "rocm"):
        import torch

        total = torch.cuda.get_device_properties(hw.device).total_memory
        mem["generation"] = int(g.vllm_gpu_memory_utilization * total)
    mem["total"] = mem["weights"] + mem["optimizer_and_grads"] + mem["activations"] + mem["logits"] + mem["generation"]
    if tc.memory_check:
        check_memory(mem, mem["free"], hw.device)
    return mem


def decode_completion(tokenizer: Any, ids: list[int], skip: set[int] | None = None) -> str:
    """A completion decoded without special tokens, except the reasoning tags (a tokenizer that declares
    <think> special would otherwise lose them, and an unclosed block would read as closed): the decoding
    thinking-mode evaluation uses (`inference_stream.skipped_ids` / `decode_generated`)."""
    return decode_generated(tokenizer, ids, skipped_ids(tokenizer, REASONING_TAGS) if skip is None else skip)


class MedQAGRPOTrainer(MedQATrainer, GRPOTrainer):
    """TRL's GRPOTrainer with MedQATrainer's atomic, identity-carrying checkpoints and TensorBoard folder;
    completions decoded with their reasoning tags; seconds per optimizer step and sampled completions logged.
    `questions`: prompt text -> (id, gold index, option count), for OUT/completions.jsonl."""

    def __init__(self, *args: Any, questions: dict[str, tuple[str, int, int]] | None = None,
                 completions_log: tuple[Path, int] | None = None, **kwargs: Any):
        self.questions = questions or {}
        self.completions_log = completions_log
        self._clock: tuple[float, int] | None = None
        super().__init__(*args, target_only_logits=False, share_prefix=False, fused_head=False, **kwargs)

    def _generate(self, prompts: list):
        t = time.perf_counter()
        out = list(super()._generate(prompts))
        skip = skipped_ids(self._tokenizer, REASONING_TAGS)
        out[3] = [decode_completion(self._tokenizer, ids, skip) for ids in out[1]]  # out[1]: completion ids
        self._metrics["train" if self.model.training else "eval"]["generate_seconds"].append(time.perf_counter() - t)
        return tuple(out)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
        if self._clock is None:  # the first step of this process (a resumed run starts at its checkpoint)
            self._clock = (time.perf_counter(), self.state.global_step)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """No README.md in the checkpoints folder: `medqa push` writes the model card."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_accuracy" in logs and "loss" not in logs:  # held-out letter score: not a GRPO metrics line
            Trainer.log(self, logs, start_time)
            return
        step_line = "loss" in logs or "train_runtime" in logs  # the end of training logs the steps since the last line
        if step_line and self._clock is not None and self.state.global_step > self._clock[1]:
            now = time.perf_counter()
            logs["seconds_per_step"] = round((now - self._clock[0]) / (self.state.global_step - self._clock[1]), 3)
            self._clock = (now, self.state.global_step)
        super().log(logs, start_time)
        if step_line and self.completions_log is not None and self.is_world_process_zero():
            self._write_completions()

    _completions_step = -1  # the step whose completions were written last (the end of training may log it again)

    def _write_completions(self) -> None:
        if self.state.global_step == self._completions_step or not self._logs["completion"]:
            return
        self._completions_step = self.state.global_step
        path, k = self.completions_log
        rows = []
        for i, (prompt, completion) in enumerate(zip(self._logs["prompt"], self._logs["completion"])):
            if i >= k:
                break
            qid, gold, n = self.questions.get(prompt, (None, None, 4))
            text = completion if isinstance(completion, str) else str(completion)
            parsed = parse_final_answer(text, n)
            rows.append({"step": self.state.global_step, "id": qid, "gold": LETTERS[gold] if gold is not None else None,
                         "parsed": parsed.letter, "well_formed": parsed.well_formed, "completion": text,
                         "rewards": {name: vals[i] for name, vals in self._logs["rewards"].items()}})
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _keep_completions_until(path: Path, step: int | None) -> None:
    """A fresh run (None) starts a new completions log; a resumed one drops what was logged after its checkpoint."""
    if step is None or not path.is_file():
        path.unlink(missing_ok=True)
        return
    kept = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
    atomic_write_text(path, "".join(x + "\n" for x in kept))


def train_grpo(cfg: RunConfig, model: Any, tokenizer: Any, records: list[MCQRecord], hw: Hardware | None = None,
               progress: bool = True, eval_records: list[MCQRecord] | None = None,
               letters: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """GRPO-train `model` (already LoRA-wrapped: a new adapter or the one it starts from) on `records`' prompts;
    write the run directory; return the summary (train_summary.json). `letters`: the prompts' gold-letter counts
    before and after option-order augmentation, reported beside the rewards."""
    from datasets import Dataset
    from transformers import set_seed

    hw, tc, g, out = hw or detect(cfg.model.device), cfg.train, cfg.grpo, Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    set_seed(tc.seed)
    check_group_size(cfg)
    thinking = g.thinking and supports_thinking(tokenizer)
    rows, stats = prompt_rows(tokenizer, records, g.thinking, tc.max_length)
    funcs, weights = reward_functions(g)
    vllm = use_vllm(g.use_vllm, hw)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    mem = grpo_memory(model, cfg, stats["prompt_tokens_p50_max"][1], dtype, hw, vllm)
    args = grpo_arguments(cfg, out, dtype, hw, installed_trackers(tc.report_to), progress, weights, vllm)
    identity = run_identity(cfg)
    resume_from, start_step = resume_point(out, tc.resume, identity)
    _keep_completions_until(out / COMPLETIONS_LOG, start_step if resume_from else None)
    fmt = PromptFormat(tokenizer, resolve_protocol(cfg))
    held_out = HeldOutEval(fmt, eval_records, cfg.eval.batch_size, tc.eval_steps, out, tc.early_stopping_patience,
                           resume_step=start_step if resume_from else None) if eval_records else None
    trainer = MedQAGRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        callbacks=[MetricsLog(out / "metrics.jsonl")] + ([held_out.callback()] if held_out is not None else []),
        run_identity=identity, tensorboard_dir=out / "tensorboard",
        questions={r["prompt"]: (r["id"], r["answer_index"], r["n_options"]) for r in rows},
        completions_log=(out / COMPLETIONS_LOG, g.log_completions) if g.log_completions else None)
    if held_out is not None:
        held_out.trainer = trainer
    t = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t
    best = held_out.outcome(model, tc.keep_best) if held_out is not None else None
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen copy of the starting adapter (beta > 0)
        model.delete_adapter("ref")
    adapter_dir = out / "adapter"
    if trainer.is_world_process_zero():
        save_adapter(model, tokenizer, adapter_dir, meta={
            "base_model": resolve_base(cfg.model), "protocol": fmt.protocol, "method": "grpo",
            "reasoning": {"thinking": thinking}, "init_adapter": cfg.model.adapter})
    summary = grpo_summary(cfg, hw, trainer, result, seconds=seconds, start_step=start_step, dtype=dtype, fmt=fmt,
                           stats=stats, letters=letters or {"prompts": letter_balance(records)}, vllm=vllm,
                           thinking=thinking, funcs=funcs, weights=weights, mem=mem, best=best, adapter_dir=adapter_dir)
    if trainer.is_world_process_zero():
        atomic_write_json(out / "train_summary.json", summary)
        write_grpo_report(out, summary)
    return summary


def grpo_summary(cfg: RunConfig, hw: Hardware, trainer: Any, result: Any, *, seconds: float, start_step: int,
                 dtype: str, fmt: PromptFormat, stats: dict[str, Any], letters: dict[str, dict[str, int]], vllm: bool,
                 thinking: bool, funcs: list[Any], weights: list[float], mem: dict[str, int],
                 best: dict[str, Any] | None, adapter_dir: Path) -> dict[str, Any]:
    """train_summary.json of a GRPO run: what was trained from what, the rewards per logging step, what a step cost."""
    tc, g, processes = cfg.train, cfg.grpo, trainer.accelerator.num_processes
    steps_done = trainer.state.global_step - start_step
    return {
        "method": "grpo", "model": resolve_base(cfg.model), "init_adapter": cfg.model.adapter,
        "hardware": hw.as_dict(), "processes": processes, "dtype": dtype, "protocol": fmt.name,
        "steps": trainer.state.global_step, "epochs_done": round(trainer.state.epoch or 0.0, 4),
        "train_loss": result.training_loss, "seconds": round(seconds, 2), "resumed_from_step": start_step,
        "seconds_per_step": round(seconds / steps_done, 3) if steps_done else None,
        "data": stats, "letter_balance": letters,
        "generation": {"backend": "vllm" if vllm else "transformers", "num_generations": g.num_generations,
                       "max_completion_length": g.max_completion_length, "temperature": g.temperature,
                       "thinking": thinking, "completions_per_step": tc.batch_size * tc.grad_accum * processes},
        "rewards": {"functions": [f.__name__ for f in funcs], "weights": weights, "beta": g.beta},
        "reward_curve": reward_curve(Path(cfg.out) / "metrics.jsonl"),
        "memory_estimate_bytes": mem, "best": best, "adapter": str(adapter_dir), "versions": library_versions(),
    }


CURVE_KEYS = {"correct": "rewards/correct_reward/mean", "format": "rewards/format_reward/mean",
              "length": "rewards/length_penalty/mean", "reward": "reward", "kl": "kl",
              "completion_tokens": "completions/mean_length", "seconds": "seconds_per_step",
              "generate_seconds": "generate_seconds", "loss": "loss"}


def reward_curve(metrics: Path) -> list[dict[str, Any]]:
    """Per logging step: the mean of each reward, the weighted total, KL, completion length, seconds per step."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    return [{"step": r["step"], **{k: r[m] for k, m in CURVE_KEYS.items() if r.get(m) is not None}}
            for r in rows if "reward" in r]


def write_grpo_report(out: Path, summary: dict[str, Any]) -> None:
    """train_curves.png (rewards, held-out accuracy) and train_report.md with the per-step reward table."""
    from medqa.plots import grpo_curves

    curve = summary["reward_curve"]
    grpo_curves(curve, [(h["step"], h["eval_accuracy"]) for h in (summary["best"] or {}).get("history", [])],
                out / "train_curves.png")
    gen, bal = summary["generation"], summary["letter_balance"]
    lines = [
        f"# GRPO training report — {summary['model']}", "",
        f"- {summary['steps']} optimizer steps in {summary['seconds']:.0f} s on {summary['hardware']['name']} "
        f"({summary['dtype']}): {summary['seconds_per_step']} s per step"
        + (f", resumed from step {summary['resumed_from_step']}" if summary["resumed_from_step"] else ""),
        f"- started from {summary['init_adapter'] or 'a new LoRA adapter'}; generation: {gen['backend']}, "
        f"{gen['num_generations']} completions per question, up to {gen['max_completion_length']} tokens, "
        f"temperature {gen['temperature']}, thinking mode {'on' if gen['thinking'] else 'off'}",
        "- rewards: " + ", ".join(f"{n} x {w}" for n, w in zip(summary["rewards"]["functions"],
                                                               summary["rewards"]["weights"]))
        + f"; KL beta {summary['rewards']['beta']}",
        f"- prompts: {summary['data']['questions']} questions ({summary['data']['dropped_too_long']} longer than "
        f"train.max_length dropped); gold letters " + "; ".join(f"{k}: {_letters(v)}" for k, v in bal.items()),
        "", reward_table(curve),
    ]
    lines += ["", "![rewards and held-out accuracy](train_curves.png)", ""]
    atomic_write_text(out / "train_report.md", "\n".join(lines))


def reward_table(curve: list[dict[str, Any]]) -> str:
    """The per-step reward curve as a Markdown table (train_report.md, BENCHMARKS.md)."""
    length = any("length" in c for c in curve)
    lines = ["| step | correct | format |" + (" length penalty |" if length else "")
             + " total reward | completion tokens | s/step | of which generating |",
             "|---|---|---|" + ("---|" if length else "") + "---|---|---|---|"]
    lines += [f"| {c['step']} | {_num(c.get('correct'))} | {_num(c.get('format'))} | "
              + (f"{_num(c.get('length'))} | " if length else "")
              + f"{_num(c.get('reward'))} | {_num(c.get('completion_tokens'), 0)} | {_num(c.get('seconds'), 1)} | "
              f"{_num(c.get('generate_seconds'), 1)} |" for c in curve]
    return "\n".join(lines)


def _letters(counts: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items())


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"
