"""Evaluation: metrics and reports over the letter scores of `medqa.inference`.

The scores are lm-evaluation-harness's for `medmcqa` (log-likelihood of each single-token letter
continuation, one forward pass per question: `medqa.inference.score_records`); every option gets a
probability, no prediction is ever a fallback. This module adds the accuracy with its Wilson interval,
baselines, ECE, Brier, selective answering, option-order robustness, the generative mode's strict parsing,
thinking mode (reason, then a final "Answer: X" line, read by `medqa.reasoning.parse_final_answer`, beside
the one-pass letter score), and writes predictions.jsonl, summary.json, report.md and the plots.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medqa.calibrate import abstains, apply_temperature, guarantee_text, keeps_option_order, risk_coverage
from medqa.datasets import LETTERS, MCQRecord
from medqa.format import PromptFormat
from medqa.inference import DISCLAIMER, generate_answers, generate_reasoning, score_records
from medqa.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from medqa.reasoning import parse_final_answer, supports_thinking
from medqa.report import ci_text, letter_table, pct, subject_table, thinking_section, with_ci

__all__ = ["DISCLAIMER", "evaluate", "summarize", "wilson_interval", "expected_calibration_error", "brier_score",
           "prediction_rows", "markdown_report", "rotate", "permutation_analysis", "parse_answer", "parse_letter",
           "thinking_fields", "thinking_summary"]


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
    """ECE over equal-width confidence bins: sum of |accuracy - confidence| weighted by bin size."""
    from medqa.plots import reliability_bins

    n = len(conf)
    if n == 0:
        return 0.0
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(conf, correct, bins)))


def brier_score(records: list[MCQRecord], probs: list[np.ndarray]) -> float:
    """Multi-class Brier score: mean over questions of sum_k (p_k - 1[k = gold])^2 (0 is perfect)."""
    if not records:
        return 0.0
    total = 0.0
    for r, p in zip(records, probs):
        y = np.zeros(len(p))
        y[r.answer] = 1.0
        total += float(((np.asarray(p) - y) ** 2).sum())
    return total / len(records)


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
        "brier": brier_score(records, probs),
        "macro_subject_accuracy": float(np.mean([v["accuracy"] for v in per_subject.values()])) if per_subject else None,
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
    lines = [
        f"# MedQA evaluation — {summary.get('model', '')}",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Protocol: `{summary.get('protocol')}` (next-token probability of each option letter, one forward pass per question)",
        f"- Data: {summary.get('data', '')}",
        f"- Questions: {summary['n']}",
        f"- **Accuracy: {pct(summary['accuracy'])}** (95 % Wilson interval {ci_text(summary['ci95'])})",
        f"- Majority-letter baseline ('{summary['majority_letter']}'): {summary['majority_baseline']:.1%}; uniform: {summary['uniform_baseline']:.1%}",
        f"- Mean confidence {summary['mean_confidence']:.1%}, ECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}; "
        f"{summary['low_confidence_share']:.1%} of answers below the {summary['low_confidence_threshold']:.0%} confidence flag",
    ]
    if "robustness" in summary:
        rb = summary["robustness"]
        lines.append(f"- Option-order robustness ({rb['permutations']} cyclic permutations): the chosen answer stays the "
                     f"same for {rb['consistency']:.1%} of the {rb.get('permuted', summary['n'])} permuted questions "
                     f"({rb.get('held_fixed', 0)} held in their original order: options that point at other options, "
                     f"fixed label sets); permutation-debiased accuracy "
                     f"{with_ci(rb['debiased_accuracy'], rb['debiased_ci95'])}")
    if "generative" in summary:
        g = summary["generative"]
        lines.append(f"- Generative mode (answer + explanation, strict letter parsing): accuracy {g['accuracy']:.1%}, "
                     f"{g['unparseable']} unparseable (counted wrong), agreement with letter scoring "
                     f"{g['agreement_with_letter_scoring']:.1%}")
    cal, sel = summary.get("calibration"), summary.get("selective")
    if cal:
        lines.append(f"- Calibration: temperature {cal['temperature']:.3f} (ECE {cal['ece_uncalibrated']:.3f} before scaling, "
                     f"{cal['ece']:.3f} after)")
        if cal["abstain_threshold"] is not None or cal.get("abstain_all"):
            rule = ("abstains on every answer" if cal.get("abstain_all")
                    else f"abstains below confidence {cal['abstain_threshold']:.2f}")
            answering = cal.get("accuracy_when_answering")
            lines.append(f"- Abstention (chosen on the calibration split): {rule}: {cal['abstained_share']:.1%} withheld"
                         + (f", {answering:.1%} accuracy when answering" if answering is not None else ""))
            text = guarantee_text(cal)
            if text:
                lines.append(f"  - Guarantee: {text}")
    if sel:
        cov = ", ".join(f"{k}: {v:.1%}" for k, v in sel["accuracy_at_coverage"].items())
        lines.append(f"- Selective answering: AURC {sel['aurc']:.3f}; accuracy at coverage {cov}")
    if "thinking" in summary:  # beside the letter score above, on the same questions
        lines += ["", *thinking_section(summary).splitlines()]
    lines += ["", "![reliability](reliability.png) ![letters](letters.png) ![risk-coverage](risk_coverage.png)", "",
              *letter_table(summary).splitlines()]
    if summary["per_subject"]:
        lines += ["", *subject_table(summary).splitlines()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- robustness


def rotate(rec: MCQRecord, shift: int) -> MCQRecord:
    """Cyclic permutation of the options: option i moves to position (i + shift) mod n.

    A question that must keep its order (an option points at other options, "Both" / "None of the above", or
    PubMedQA's yes / no / maybe: `keeps_option_order`) is returned as it is, under every shift."""
    if keeps_option_order(rec):
        return rec
    n = len(rec.options)
    opts = [rec.options[(j - shift) % n] for j in range(n)]
    return rec.model_copy(update={"options": opts, "answer": (rec.answer + shift) % n})


def permutation_analysis(
    model: Any, fmt: PromptFormat, records: list[MCQRecord], base_probs: list[np.ndarray], k: int,
    batch_size: int = 16, progress: bool = True, temperature: float = 1.0,
) -> dict[str, Any]:
    """Score each question under k cyclic permutations (shift 0 = `base_probs`).

    `base_probs` are the unpermuted probabilities *before* temperature scaling: every permutation's
    probabilities, the unpermuted included, are scaled with the same `temperature` before they are compared
    or averaged. Questions that keep their option order (`keeps_option_order`) are not permuted: their
    probabilities are the unpermuted ones under every "permutation" (`held_fixed` counts them).

    consistency: share of the permuted questions whose chosen option *content* is the same under every permutation.
    debiased: accuracy, over every question, of the per-content probabilities averaged over the permutations.
    """
    shifts = list(range(1, k))
    held = [keeps_option_order(r) for r in records]
    rotated = [rotate(r, sh) for sh in shifts for r, h in zip(records, held) if not h and sh < len(r.options)]
    scored = iter(apply_temperature(
        _sharded(lambda rs: score_records(model, fmt, rs, batch_size, progress, desc="permutations"), rotated),
        temperature))
    per_content = [[p] for p in apply_temperature(base_probs, temperature)]  # in original option order
    for sh in shifts:
        for i, r in enumerate(records):
            if not held[i] and sh < len(r.options):
                p = next(scored)
                n = len(r.options)
                per_content[i].append(np.array([p[(j + sh) % n] for j in range(n)]))
    consistent = [len({int(np.argmax(p)) for p in ps}) == 1 for ps, h in zip(per_content, held) if not h]
    debiased = [np.mean(ps, axis=0) for ps in per_content]
    k_correct = sum(int(np.argmax(p)) == r.answer for p, r in zip(debiased, records))
    n = len(records)
    return {
        "permutations": k,
        "permuted": len(consistent),
        "held_fixed": sum(held),
        "consistency": float(np.mean(consistent)) if consistent else 0.0,
        "debiased_accuracy": k_correct / n if n else 0.0,
        "debiased_ci95": list(wilson_interval(k_correct, n)),
        "debiased_probs": debiased,
    }


# ----------------------------------------------------------------------------- generation


LETTER_RE = re.compile(r"^\s*\(?([A-E])(?:[.):]|\s|$)")


def parse_answer(text: str, rec: MCQRecord, fmt: PromptFormat) -> int | None:
    """Strict parse of a generated answer in the form training taught: a letter, or under lm-eval's
    PubMedQA prompt the word (yes / no / maybe) it opens with; else None (counted wrong)."""
    if fmt.scores_words(rec):
        m = re.match(r"\s*([A-Za-z]+)\b", text)
        words = [o.strip().lower() for o in rec.options]
        return words.index(m.group(1).lower()) if m and m.group(1).lower() in words else None
    return parse_letter(text, len(rec.options))


def parse_letter(text: str, n_options: int) -> int | None:
    """Strict: the answer must open with a letter (A., B), (C) ...) among the options; else None."""
    m = LETTER_RE.match(text)
    if not m:
        return None
    i = LETTERS.index(m.group(1))
    return i if i < n_options else None


# ----------------------------------------------------------------------------- distributed


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sharded(fn, records: list[MCQRecord]) -> list[Any]:
    """Run `fn` on this rank's shard (every world_size-th record) and gather all results in order."""
    rank, world = _dist()
    if world == 1:
        return fn(records)
    mine = fn(records[rank::world])
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    out: list[Any] = [None] * len(records)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


def _calibration_summary(records: list[MCQRecord], raw_probs: list[np.ndarray], summary: dict[str, Any],
                         calibration: dict[str, Any], low_confidence: float, conf: np.ndarray,
                         correct: np.ndarray) -> dict[str, Any]:
    """Temperature, ECE before / after scaling, and what the abstention rule (`calibrate.abstains`) withholds
    (`conf`, `correct`: of the scaled probabilities)."""
    temperature = float(calibration.get("temperature", 1.0))
    threshold = calibration.get("abstain_threshold")
    fitted = threshold is not None or bool(calibration.get("abstain_all"))
    answered = np.array([not abstains(float(c), calibration) for c in conf], dtype=bool) if fitted else None
    return {
        "temperature": temperature,
        "ece_uncalibrated": summarize(records, raw_probs, low_confidence)["ece"] if temperature != 1.0 else summary["ece"],
        "ece": summary["ece"],
        "abstain_threshold": threshold,
        "abstain_all": bool(calibration.get("abstain_all", False)),
        "guarantee": calibration.get("guarantee"),
        "abstained_share": float(1 - answered.mean()) if answered is not None and len(conf) else None,
        "accuracy_when_answering": float(correct[answered].mean()) if answered is not None and answered.any() else None,
    }


def _confidence_and_correct(records: list[MCQRecord], probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    conf = np.array([float(np.max(p)) for p in probs])
    correct = np.array([int(np.argmax(p)) == r.answer for p, r in zip(probs, records)], dtype=float)
    return conf, correct


def _generative(model: Any, fmt: PromptFormat, records: list[MCQRecord], probs: list[np.ndarray],
                rows: list[dict[str, Any]], batch_size: int, max_new_tokens: int, progress: bool) -> dict[str, Any]:
    """Generate answer + explanation, parse the letter strictly; adds `generated` to the rows."""
    texts = _sharded(lambda rs: generate_answers(model, fmt, rs, batch_size, max_new_tokens, progress), records)
    parsed = [parse_answer(t, r, fmt) for t, r in zip(texts, records)]
    n = len(records)
    k = sum(p == r.answer for p, r in zip(parsed, records))
    for row, text, p in zip(rows, texts, parsed):
        row["generated"] = text
        row["generated_pred"] = LETTERS[p] if p is not None else None
    return {
        "accuracy": k / n if n else 0.0,
        "ci95": list(wilson_interval(k, n)),
        "unparseable": sum(p is None for p in parsed),
        "agreement_with_letter_scoring": float(np.mean([p == int(np.argmax(q)) for p, q in zip(parsed, probs)])) if n else 0.0,
        "max_new_tokens": max_new_tokens,
    }


def thinking_fields(text: str, rec: MCQRecord, tokens: int, cut_off: bool) -> dict[str, Any]:
    """One question's thinking-mode result, as predictions.jsonl stores it: the generated text, its reasoning and
    final line, the letter `parse_final_answer` reads (None: unparseable, counted wrong), whether it is correct,
    the tokens generated and whether generation was cut off at max_new_tokens."""
    parsed = parse_final_answer(text, len(rec.options))
    return {"generated": text, "reasoning": parsed.reasoning, "final_line": parsed.final_line,
            "generated_pred": parsed.letter, "generated_correct": parsed.index == rec.answer,
            "well_formed": parsed.well_formed, "generated_tokens": int(tokens), "cut_off": bool(cut_off)}


def thinking_summary(rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Thinking-mode accuracy (Wilson 95 % interval) beside the one-pass letter score of the same questions, their
    agreement (share of questions whose parsed letter is letter scoring's argmax), paired correctness, unparseable
    answers (counted wrong), tokens generated per question and the share cut off at `max_new_tokens`.

    `rows`: prediction rows with letter scoring's `pred` / `correct` and `thinking_fields`'s keys."""
    n = len(rows)
    k = sum(bool(r["generated_correct"]) for r in rows)
    k_scored = sum(bool(r["correct"]) for r in rows)
    tokens = np.array([r["generated_tokens"] for r in rows], dtype=float)
    unparseable = sum(r["generated_pred"] is None for r in rows)
    cut = sum(bool(r["cut_off"]) for r in rows)
    both = sum(bool(r["generated_correct"]) and bool(r["correct"]) for r in rows)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "ci95": list(wilson_interval(k, n)),
        "letter_scoring": {"correct": k_scored, "accuracy": k_scored / n if n else 0.0,
                           "ci95": list(wilson_interval(k_scored, n))},
        "agreement_with_letter_scoring": sum(r["generated_pred"] == r["pred"] for r in rows) / n if n else 0.0,
        "paired": {"both_correct": both, "thinking_only": k - both, "scoring_only": k_scored - both,
                   "neither": n - k - k_scored + both},
        "unparseable": unparseable,
        "unparseable_share": unparseable / n if n else 0.0,
        "tokens": {"mean": float(tokens.mean()) if n else 0.0, "median": float(np.median(tokens)) if n else 0.0,
                   "max": int(tokens.max()) if n else 0, "total": int(tokens.sum())},
        "cut_off": cut,
        "cut_off_share": cut / n if n else 0.0,
        "max_new_tokens": max_new_tokens,
    }


def _thinking(model: Any, fmt: PromptFormat, records: list[MCQRecord], rows: list[dict[str, Any]], batch_size: int,
              max_new_tokens: int, progress: bool) -> dict[str, Any]:
    """Thinking mode: generate the reasoning and the final answer line (`generate_reasoning`, the one generation
    path), parse it strictly; adds `thinking_fields` to the rows and returns `thinking_summary`."""
    t = time.perf_counter()
    gens = _sharded(lambda rs: generate_reasoning(model, fmt, rs, batch_size, max_new_tokens, progress), records)
    seconds = time.perf_counter() - t
    for row, g, r in zip(rows, gens, records, strict=True):
        row.update(thinking_fields(g.text, r, g.tokens, g.cut_off))
    out = {"mode": "thinking", "template_thinking": bool(fmt.uses_template and supports_thinking(fmt.tokenizer)),
           **thinking_summary(rows, max_new_tokens)}
    out["seconds"] = round(seconds, 2)
    out["tokens_per_second"] = round(out["tokens"]["total"] / seconds, 1) if seconds > 0 else None
    return out


def write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], conf: np.ndarray,
                  correct: np.ndarray) -> None:
    """predictions.jsonl, the plots, summary.json and report.md."""
    from medqa.plots import curve, letter_bias, reliability_diagram

    rc = risk_coverage(conf, correct)
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    temperature = summary["calibration"]["temperature"]
    reliability_diagram(conf, correct, out / "reliability.png", f"Reliability (ECE {summary['ece']:.3f}, T={temperature:.2f})")
    curve(rc["coverage"], rc["accuracy"], out / "risk_coverage.png", "coverage (most confident answers kept)",
          "accuracy of kept answers", f"Selective answering (AURC {rc['aurc']:.3f})",
          hline=summary["majority_baseline"], hline_label="majority-letter baseline")
    letter_bias(summary["gold_letter_distribution"], summary["pred_letter_distribution"], out / "letters.png")
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", markdown_report(summary))


def evaluate(
    model: Any,
    fmt: PromptFormat,
    records: list[MCQRecord],
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    meta: dict[str, Any] | None = None,
    low_confidence: float = 0.5,
    progress: bool = True,
    permutations: int = 0,
    generate: bool = False,
    max_new_tokens: int = 96,
    calibration: dict[str, Any] | None = None,
    thinking: bool = False,
) -> dict[str, Any]:
    """Score, summarise, and (with `out_dir`) write predictions.jsonl, summary.json, report.md and plots.

    `generate`: also generate answer + explanation (`summary["generative"]`), or with `thinking` the reasoning
    and a final "Answer: X" line (`summary["thinking"]`, `thinking_summary`).

    Under torchrun / accelerate launch each process scores a shard; rank 0 gathers and writes the
    same report a single process would.
    """
    rank, world = _dist()
    progress = progress and rank == 0
    t = time.perf_counter()
    raw_probs = _sharded(lambda rs: score_records(model, fmt, rs, batch_size=batch_size, progress=progress), records)
    seconds = time.perf_counter() - t
    calibration = calibration or {"temperature": 1.0, "abstain_threshold": None}
    temperature = float(calibration.get("temperature", 1.0))
    probs = apply_temperature(raw_probs, temperature)
    summary = {"protocol": fmt.name, **(meta or {}), **summarize(records, probs, low_confidence)}
    conf, correct = _confidence_and_correct(records, probs)
    rc = risk_coverage(conf, correct)
    summary["calibration"] = _calibration_summary(records, raw_probs, summary, calibration, low_confidence, conf,
                                                  correct)
    summary["selective"] = {"aurc": rc["aurc"], "accuracy_at_coverage": rc["accuracy_at_coverage"]}
    summary["seconds"] = round(seconds, 2)
    summary["questions_per_second"] = round(len(records) / seconds, 2) if seconds > 0 else None
    summary["processes"] = world
    rows = prediction_rows(records, probs)
    if permutations > 1:
        perm = permutation_analysis(model, fmt, records, raw_probs, permutations, batch_size, progress,
                                    temperature=temperature)  # every permutation scaled alike
        for row, p in zip(rows, perm.pop("debiased_probs")):
            row["debiased_probs"] = [round(float(x), 6) for x in p]
        summary["robustness"] = perm
    if generate and thinking:
        summary["thinking"] = _thinking(model, fmt, records, rows, batch_size, max_new_tokens, progress)
    elif generate:
        summary["generative"] = _generative(model, fmt, records, probs, rows, batch_size, max_new_tokens, progress)
    summary["disclaimer"] = DISCLAIMER
    if out_dir is not None and rank == 0:
        write_outputs(Path(out_dir), summary, rows, conf, correct)
    return summary
