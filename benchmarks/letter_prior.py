"""Does fine-tuning learn medicine or the letter prior? Train the offline default model on 2,000 real
MedMCQA questions with and without option-order augmentation and evaluate both on the disjoint rest.

The MedMCQA validation file (../shared/data) is split by a hash of `id` (seed 42): 2,000 training
questions (of which a seeded 10 % are held out of training to fit the temperature) and 2,183
evaluation questions. Both variants use the same seeds, steps and learning rate.

    # the two variants run side by side (1 thread each), then the report:
    OMP_NUM_THREADS=1 python benchmarks/letter_prior.py --variant augmented &
    OMP_NUM_THREADS=1 python benchmarks/letter_prior.py --variant plain &
    wait; python benchmarks/letter_prior.py --report

Reports per variant: accuracy with its 95 % interval, the majority-letter baseline, a one-sided exact
binomial test of accuracy > baseline, the predicted-letter distribution, ECE and AURC.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmcqa" / "validation.jsonl"
OUT = Path("runs/letter-prior")


def binom_sf(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), exactly (log-space terms)."""
    if k <= 0:
        return 1.0
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * math.log(p) + (n - i) * math.log1p(-p))
    return min(1.0, total)


def run(variant: str, data: Path, epochs: float) -> None:
    from medqa.config import build_config
    from medqa.recipes import run_train

    cfg = build_config(None, {
        "model.name": "smollm2-135m-instruct",
        "data.dataset": "medmcqa", "data.path": str(data), "data.subset": "train", "data.train_size": 2000,
        "eval_data.dataset": "medmcqa", "eval_data.path": str(data), "eval_data.subset": "heldout",
        "eval_data.train_size": 2000,
        "train.epochs": epochs, "train.batch_size": 4, "train.grad_accum": 4, "train.lr": 2e-4,
        "train.max_length": 320, "train.logging_steps": 10, "train.save_steps": 10000,
        "train.augment_copies": 1 if variant == "augmented" else 0,
        "eval.batch_size": 16,
        "out": str(OUT / variant),
    })
    run_train(cfg, eval_before=variant == "plain", progress=False)


def report() -> None:
    rows = []
    plain = json.loads((OUT / "plain" / "run_summary.json").read_text())
    entries = [("base model, zero-shot", plain["before"])]
    for v in ("plain", "augmented"):
        r = json.loads((OUT / v / "run_summary.json").read_text())
        entries.append((f"LoRA, {'with' if v == 'augmented' else 'without'} option-order augmentation", r["after"]))
        rows.append((v, r))
    print("| model | accuracy (95 % CI) | majority baseline | p (acc > baseline) | predicted letters | ECE | AURC |")
    print("|---|---|---|---|---|---|---|")
    for name, s in entries:
        n, k = s["n"], s["correct"]
        p = binom_sf(k, n, s["majority_baseline"])
        dist = " ".join(f"{L} {c / n:.0%}" for L, c in s["pred_letter_distribution"].items())
        print(f"| {name} | {s['accuracy']:.1%} ({s['ci95'][0]:.1%}–{s['ci95'][1]:.1%}) | {s['majority_baseline']:.1%} "
              f"('{s['majority_letter']}') | {p:.3g} | {dist} | {s['ece']:.3f} | {s['selective']['aurc']:.3f} |")
    for v, r in rows:
        a, c, t = r["augmentation"], r["calibration"], r["train"]
        print(f"\n{v}: gold letters seen in training {a['gold_after']} (before augmentation {a['gold_before']}); "
              f"{t['steps']} steps in {t['seconds']:.0f} s, train loss {t['train_loss']:.3f}; "
              f"temperature {c['temperature']:.2f} fitted on {c['n']} calibration questions "
              f"(ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}); ECE on the evaluation set before scaling "
              f"{r['after']['calibration']['ece_uncalibrated']:.3f}, after {r['after']['ece']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["plain", "augmented"])
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    if args.report:
        report()
    elif args.variant:
        if not args.data.is_file():
            raise SystemExit(f"{args.data} not found: this benchmark needs the shared MedMCQA validation file")
        run(args.variant, args.data, args.epochs)
    else:
        ap.error("give --variant or --report")


if __name__ == "__main__":
    main()
