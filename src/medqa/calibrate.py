"""Confidence that means something: option-order augmentation, temperature scaling, selective answering.

- `augment_options`: permute each training question's options so the gold letter is spread evenly
  over the positions (balanced, seeded; the gold index follows its option). Questions whose options
  refer to other options by letter or position ("Both A and B", "All of the above") keep their order.
- `fit_temperature`: one scalar T minimising the negative log-likelihood of the gold option on a
  calibration split (disjoint from training and from the final evaluation); `apply_temperature`
  rescales option probabilities p -> softmax(log p / T).
- `risk_coverage`: accuracy of the answers kept when the least confident are withheld, its area
  (AURC, lower is better) and accuracy at fixed coverages; `abstain_threshold` picks the lowest
  confidence threshold whose kept answers reach a target accuracy on the calibration split.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medqa.data import LETTERS, MCQRecord
from medqa.io import atomic_write_json

CALIBRATION_FILE = "calibration.json"
_REFERS = re.compile(
    r"\b(all|none|both|neither|either)\b.{0,12}\b(above|below|of these|of the|options?)\b"
    r"|\b(both|only)\s+\(?[a-e1-5]\)?\s*(,|and|&|or)\s*\(?[a-e1-5]\)?\b"
    r"|^\s*\(?[a-e]\)?\s*(,|and|&)\s*\(?[a-e]\)?\s*$",
    re.IGNORECASE,
)


def refers_to_positions(rec: MCQRecord) -> bool:
    return any(_REFERS.search(o) for o in rec.options)


def augment_options(records: list[MCQRecord], copies: int = 1, seed: int = 42) -> tuple[list[MCQRecord], dict[str, Any]]:
    """`copies` permuted versions of each question with balanced gold positions (copies=0: unchanged)."""
    before = Counter(r.answer_letter for r in records)
    if copies == 0:
        return list(records), {"copies": 0, "gold_before": dict(sorted(before.items())),
                               "gold_after": dict(sorted(before.items())), "kept_order": 0}
    rng = random.Random(seed)
    out: list[MCQRecord] = []
    kept = 0
    for c in range(copies):
        by_n: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_n.setdefault(len(r.options), []).append(i)
        target: dict[int, int] = {}
        for n, idx in by_n.items():  # balanced gold positions per option count, in a seeded order
            slots = [k % n for k in range(len(idx))]
            rng.shuffle(slots)
            target.update(zip(idx, slots))
        for i, r in enumerate(records):
            if refers_to_positions(r):
                kept += c == 0
                out.append(r if c == 0 else r.model_copy(update={"id": f"{r.id}#p{c}"}))
                continue
            others = [o for j, o in enumerate(r.options) if j != r.answer]
            rng.shuffle(others)
            pos = target[i]
            opts = others[:pos] + [r.options[r.answer]] + others[pos:]
            rid = r.id if copies == 1 else f"{r.id}#p{c}"
            out.append(r.model_copy(update={"options": opts, "answer": pos, "id": rid}))
    after = Counter(r.answer_letter for r in out)
    return out, {"copies": copies, "gold_before": dict(sorted(before.items())),
                 "gold_after": dict(sorted(after.items())), "kept_order": kept}


# ----------------------------------------------------------------------------- temperature


def apply_temperature(probs: list[np.ndarray], temperature: float) -> list[np.ndarray]:
    if temperature == 1.0:
        return [np.asarray(p, dtype=float) for p in probs]
    out = []
    for p in probs:
        z = np.log(np.clip(np.asarray(p, dtype=float), 1e-12, 1.0)) / temperature
        z -= z.max()
        e = np.exp(z)
        out.append(e / e.sum())
    return out


def nll(probs: list[np.ndarray], answers: list[int], temperature: float = 1.0) -> float:
    scaled = apply_temperature(probs, temperature)
    return float(-np.mean([math.log(max(p[a], 1e-12)) for p, a in zip(scaled, answers)]))


def fit_temperature(probs: list[np.ndarray], answers: list[int], lo: float = 0.05, hi: float = 20.0) -> float:
    """Golden-section search of log T for the minimum NLL (NLL is unimodal in T for one scalar)."""
    if not probs:
        return 1.0
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(probs, answers, math.exp(c)), nll(probs, answers, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(probs, answers, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(probs, answers, math.exp(d))
    return float(math.exp((a + b) / 2))


# ----------------------------------------------------------------------------- selective answering


def risk_coverage(conf: np.ndarray, correct: np.ndarray, coverages: tuple[float, ...] = (1.0, 0.8, 0.5)) -> dict[str, Any]:
    """Sort by confidence (most confident first); accuracy of the top-k answers for every k.

    AURC = mean over k = 1..n of the risk (error rate) of the k most confident answers.
    """
    n = len(conf)
    if n == 0:
        return {"aurc": 0.0, "accuracy_at_coverage": {}, "coverage": [], "accuracy": []}
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(correct[order])
    k = np.arange(1, n + 1)
    acc = hits / k
    at = {}
    for c in coverages:
        m = max(1, int(round(c * n)))
        at[f"{int(round(c * 100))}%"] = float(acc[m - 1])
    return {"aurc": float(np.mean(1 - acc)), "accuracy_at_coverage": at,
            "coverage": (k / n).tolist(), "accuracy": acc.tolist()}


def abstain_threshold(conf: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float | None:
    """Lowest confidence threshold whose kept answers (conf >= t) reach the target accuracy; None if none does."""
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order]
    acc = np.cumsum(ok) / np.arange(1, len(c) + 1)
    best = None
    for i in range(len(c)):
        if acc[i] >= target_accuracy and (i + 1 == len(c) or c[i + 1] < c[i]):
            best = float(c[i])
    return best


# ----------------------------------------------------------------------------- saved with the adapter


def save_calibration(adapter_dir: str | Path, info: dict[str, Any]) -> Path:
    return atomic_write_json(Path(adapter_dir) / CALIBRATION_FILE, info)


def load_calibration(adapter_dir: str | Path | None) -> dict[str, Any]:
    """The calibration saved beside an adapter, or identity (T = 1, no abstention threshold)."""
    if adapter_dir:
        p = Path(adapter_dir) / CALIBRATION_FILE
        if p.is_file():
            info = json.loads(p.read_text(encoding="utf-8"))
            if float(info.get("temperature", 1.0)) > 0:
                return info
    return {"temperature": 1.0, "abstain_threshold": None}


def letter_distribution(records: list[MCQRecord]) -> dict[str, int]:
    c = Counter(r.answer_letter for r in records)
    return {L: c.get(L, 0) for L in LETTERS[: max((len(r.options) for r in records), default=4)]}
