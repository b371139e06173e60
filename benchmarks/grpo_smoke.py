"""GRPO smoke run: the offline default model (SmolLM2-135M-Instruct) for a few GRPO steps on the bundled
demo questions, on whatever device this is (written for CPU). It shows that the plumbing works - prompts,
sampling, rewards from the strictly parsed final answer line, advantages, LoRA updates, checkpoints - and
what a step costs. Nobody expects a 135M model to learn medicine in a dozen steps.

    python benchmarks/grpo_smoke.py                       # 10 steps, 2 questions x 4 samples, 64 tokens
    python benchmarks/grpo_smoke.py --steps 20 --max-completion-length 128 --out runs/grpo-smoke

Runs the GRPO recipe (`medqa.recipes.grpo`, the same as `medqa train --method grpo`) without calibration or
evaluation, then prints the per-step reward curves (correct letter, format, weighted total), completion
length and seconds per step (and how much of it was generation) as a Markdown section for BENCHMARKS.md,
also written to OUT/grpo_smoke.md. Not a timed test: run it by hand and record the output.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from medqa.config import DEFAULT_MODEL, build_config
from medqa.recipes.grpo import GRPORecipe
from medqa.training.grpo import reward_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--questions-per-step", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--length-penalty", type=float, default=0.0, help="weight of the length penalty (0: off)")
    p.add_argument("--length-target", type=int, default=None, help="tokens free of the length penalty")
    p.add_argument("--out", default="runs/grpo-smoke")
    a = p.parse_args(argv)
    cfg = build_config(None, {
        "model.name": DEFAULT_MODEL, "out": a.out, "train.overwrite": True, "train.method": "grpo",
        "data.dataset": "demo", "data.subset": "train", "data.train_size": 150, "data.seed": 42,
        "train.max_steps": a.steps, "train.batch_size": a.questions_per_step * a.num_generations,
        "train.grad_accum": 1, "train.lr": a.lr, "train.warmup_ratio": 0.0, "train.scheduler": "constant",
        "train.logging_steps": 1, "train.save_steps": a.steps, "train.calibration_size": 0, "train.report_to": [],
        "grpo.num_generations": a.num_generations, "grpo.max_completion_length": a.max_completion_length,
        "grpo.temperature": a.temperature, "grpo.log_completions": 8, "grpo.length_penalty": a.length_penalty,
        "grpo.length_target": a.length_target,
    })
    t = time.perf_counter()
    result = GRPORecipe(cfg, progress=False).run()
    wall = time.perf_counter() - t
    s = result["train"]
    curve = s["reward_curve"]
    secs = [c["seconds"] for c in curve if "seconds" in c]
    gens = [c["generate_seconds"] for c in curve if "generate_seconds" in c]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    later, later_gen = secs[1:] or secs, gens[1:] or gens  # the first step also warms up
    examples = [json.loads(x) for x in (Path(a.out) / "completions.jsonl").read_text().splitlines()][-2:]
    command = "python benchmarks/grpo_smoke.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {s['hardware']['name']}, {s['dtype']}). Model {s['model']}, "
        f"{s['data']['questions']} demo training questions (gold letters after option-order augmentation: "
        + " ".join(f"{k}:{v}" for k, v in s["letter_balance"]["after augmentation"].items())
        + f"), {a.questions_per_step} questions x {a.num_generations} samples per step, up to "
        f"{a.max_completion_length} completion tokens, temperature {a.temperature}, LoRA lr {a.lr}, rewards "
        + ", ".join(f"{n} x {w}" for n, w in zip(s["rewards"]["functions"], s["rewards"]["weights"]))
        + (f" (length target {a.length_target or a.max_completion_length // 2} tokens)" if a.length_penalty else "")
        + ", "
        f"generation with {s['generation']['backend']}, thinking mode "
        f"{'on' if s['generation']['thinking'] else 'off (no template switch: plain-text rationale)'}.",
        "",
        reward_table(curve),
        "",
        f"{s['steps']} steps in {s['seconds']:.0f} s of training ({wall:.0f} s wall with loading and saving): "
        f"{mean(later):.1f} s per step after the first (first {secs[0] if secs else float('nan'):.1f} s), "
        f"{mean(later_gen):.1f} s of it generating.",
        "",
        "Two completions of the last step, as logged in OUT/completions.jsonl:",
        "",
        *[f"- gold {e['gold']}, parsed {e['parsed']}, rewards {e['rewards']}: `{_short(e['completion'])}`"
          for e in examples],
    ]
    text = "\n".join(lines) + "\n"
    (Path(a.out) / "grpo_smoke.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def _short(text: str, n: int = 160) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= n else flat[: n - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
