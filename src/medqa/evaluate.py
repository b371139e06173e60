"""Evaluation: one forward pass per question, reading the option letters' next-token probabilities.

This is the scoring lm-evaluation-harness uses for `medmcqa` (log-likelihood of each single-token
letter continuation), done in one pass: the prompts are sorted by length and left-padded into
batches (positions restart after the padding), and only the last position's logits are computed.
Every option gets a probability; no prediction is ever a fallback.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medqa.data import LETTERS, MCQRecord
from medqa.format import PromptFormat
from medqa.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

DISCLAIMER = "MedQA is a study aid, not a clinician: its answers are not medical advice."


@torch.inference_mode()
def score_records(
    model: Any,
    fmt: PromptFormat,
    records: list[MCQRecord],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "scoring",
) -> list[np.ndarray]:
    """Probabilities over each record's options (renormalised over the option letters)."""
    device = next(model.parameters()).device
    pad_id = fmt.tokenizer.pad_token_id if fmt.tokenizer.pad_token_id is not None else 0
    encoded = [fmt.encode_prompt(r) for r in records]
    order = sorted(range(len(records)), key=lambda i: -len(encoded[i]))
    out: list[np.ndarray | None] = [None] * len(records)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(records), desc=desc, unit="q", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded[i]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=pos.to(device),
            logits_to_keep=1,
            use_cache=False,
        ).logits[:, -1, :].float()
        for row, i in enumerate(idx):
            letter_ids = fmt.letter_ids(len(records[i].options))
            out[i] = torch.softmax(logits[row, letter_ids], dim=-1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- metrics


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(ece)


def summarize(records: list[MCQRecord], probs: list[np.ndarray], low_confidence: float = 0.5) -> dict[str, Any]:
    n = len(records)
    preds = [int(np.argmax(p)) for p in probs]
    correct = np.array([p == r.answer for p, r in zip(preds, records)], dtype=float)
    conf = np.array([float(np.max(p)) for p in probs])
    k = int(correct.sum())
    gold_letters = Counter(LETTERS[r.answer] for r in records)
    pred_letters = Counter(LETTERS[p] for p in preds)
    majority_letter, majority_count = gold_letters.most_common(1)[0] if n else ("A", 0)
    by_subject: dict[str, list[float]] = defaultdict(list)
    for r, c in zip(records, correct):
        if r.subject:
            by_subject[r.subject].append(c)
    per_subject = {
        s: {"n": len(v), "accuracy": float(np.mean(v)), "ci95": list(wilson_interval(int(sum(v)), len(v)))}
        for s, v in sorted(by_subject.items())
    }
    uniform = float(np.mean([1 / len(r.options) for r in records])) if n else 0.0
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "ci95": list(wilson_interval(k, n)),
        "majority_baseline": majority_count / n if n else 0.0,
        "majority_letter": majority_letter,
        "uniform_baseline": uniform,
        "gold_letter_distribution": {L: gold_letters.get(L, 0) for L in LETTERS[: max((len(r.options) for r in records), default=4)]},
        "pred_letter_distribution": {L: pred_letters.get(L, 0) for L in LETTERS[: max((len(r.options) for r in records), default=4)]},
        "mean_confidence": float(conf.mean()) if n else 0.0,
        "ece": expected_calibration_error(conf, correct),
        "low_confidence_threshold": low_confidence,
        "low_confidence_share": float((conf < low_confidence).mean()) if n else 0.0,
        "per_subject": per_subject,
    }


def prediction_rows(records: list[MCQRecord], probs: list[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for r, p in zip(records, probs):
        pred = int(np.argmax(p))
        rows.append({
            "id": r.id,
            "probs": [round(float(x), 6) for x in p],
            "pred": LETTERS[pred],
            "gold": r.answer_letter,
            "correct": pred == r.answer,
            "confidence": round(float(np.max(p)), 6),
            "subject": r.subject,
        })
    return rows


def markdown_report(summary: dict[str, Any]) -> str:
    lo, hi = summary["ci95"]
    lines = [
        f"# MedQA evaluation — {summary.get('model', '')}",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Protocol: `{summary.get('protocol')}` (next-token probability of each option letter, one forward pass per question)",
        f"- Data: {summary.get('data', '')}",
        f"- Questions: {summary['n']}",
        f"- **Accuracy: {summary['accuracy']:.1%}** (95 % Wilson interval {lo:.1%}–{hi:.1%})",
        f"- Majority-letter baseline ('{summary['majority_letter']}'): {summary['majority_baseline']:.1%}; uniform: {summary['uniform_baseline']:.1%}",
        f"- Mean confidence {summary['mean_confidence']:.1%}, ECE {summary['ece']:.3f}; "
        f"{summary['low_confidence_share']:.1%} of answers below the {summary['low_confidence_threshold']:.0%} confidence flag",
        "",
        "| letter | gold | predicted |",
        "|---|---|---|",
    ]
    for L, g in summary["gold_letter_distribution"].items():
        lines.append(f"| {L} | {g} | {summary['pred_letter_distribution'].get(L, 0)} |")
    if summary["per_subject"]:
        lines += ["", "| subject | n | accuracy | 95 % CI |", "|---|---|---|---|"]
        for s, v in summary["per_subject"].items():
            lines.append(f"| {s} | {v['n']} | {v['accuracy']:.1%} | {v['ci95'][0]:.1%}–{v['ci95'][1]:.1%} |")
    return "\n".join(lines) + "\n"


def evaluate(
    model: Any,
    fmt: PromptFormat,
    records: list[MCQRecord],
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    meta: dict[str, Any] | None = None,
    low_confidence: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """Score, summarise, and (with `out_dir`) write predictions.jsonl, summary.json and report.md."""
    t = time.perf_counter()
    probs = score_records(model, fmt, records, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t
    summary = {"protocol": fmt.name, **(meta or {}), **summarize(records, probs, low_confidence)}
    summary["seconds"] = round(seconds, 2)
    summary["questions_per_second"] = round(len(records) / seconds, 2) if seconds > 0 else None
    summary["disclaimer"] = DISCLAIMER
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_jsonl(out / "predictions.jsonl", prediction_rows(records, probs))
        atomic_write_json(out / "summary.json", summary)
        atomic_write_text(out / "report.md", markdown_report(summary))
    return summary
