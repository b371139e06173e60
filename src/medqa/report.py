"""Accuracy tables in Markdown: one way to print an accuracy, its 95 % interval and the majority baseline.

A *summary* is what evaluation writes to `summary.json`: at least `accuracy`, `ci95` (a [low, high] Wilson
interval) and `majority_baseline`, plus `n`; a pooled multi-dataset summary adds `per_dataset` and
`macro_accuracy`. Every table here is built by `markdown_table`, so the evaluation report, the multi-dataset
report, the quickstart's before/after table and the model card's results read alike.

    pct(0.4567)                       -> '45.7%'
    ci_text([0.31, 0.6])              -> '31.0%–60.0%'
    with_ci(0.45, [0.31, 0.6])        -> '45.0% (31.0%–60.0%)'
    markdown_table([["a", 1]], ("name", "n"))

No torch, no numpy: the CLI and the ship package import this module freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ACCURACY_COLUMNS = ("accuracy", "95 % CI", "majority baseline")


def pct(x: float) -> str:
    """A share as a percentage with one decimal: 0.4567 -> '45.7%'."""
    return f"{x:.1%}"


def ci_text(ci95: Sequence[float], sep: str = "–") -> str:
    """A 95 % interval [low, high] as 'low–high' in percent."""
    lo, hi = ci95
    return f"{pct(lo)}{sep}{pct(hi)}"


def with_ci(accuracy: float, ci95: Sequence[float], sep: str = "–") -> str:
    """'45.0% (31.0%–60.0%)': an accuracy with its interval in brackets."""
    return f"{pct(accuracy)} ({ci_text(ci95, sep)})"


def accuracy_cells(s: Mapping[str, Any], bold: bool = False) -> list[str]:
    """The cells under `ACCURACY_COLUMNS` for one summary: accuracy (bold if asked), 95 % CI, majority baseline."""
    acc = pct(s["accuracy"])
    return [f"**{acc}**" if bold else acc, ci_text(s["ci95"]), pct(s["majority_baseline"])]


def _cell(value: Any) -> str:
    text = str(value)
    return f" {text} " if text else " "


def markdown_table(rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> str:
    """A Markdown table (ending in a newline): a header of `columns`, then one line per row of cells
    (an empty cell is written `| |`)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["|" + "|".join(_cell(c) for c in row) + "|" for row in rows]
    return "\n".join(lines) + "\n"


def before_after_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The quickstart's table: the base model zero-shot, then base + LoRA (with ECE and predicted letters)."""
    def row(name: str, s: Mapping[str, Any]) -> list[Any]:
        dist = " ".join(f"{k}:{v}" for k, v in s["pred_letter_distribution"].items())
        return [name, *accuracy_cells(s), f"{s['ece']:.3f}", dist]

    return markdown_table([row("base (zero-shot)", before), row("base + LoRA", after)],
                          ("model", *ACCURACY_COLUMNS, "ECE", "predicted letters"))


def multi_set_table(summary: Mapping[str, Any]) -> str:
    """A pooled multi-dataset summary: one row per dataset, the size-weighted mean and the macro mean."""
    rows: list[list[Any]] = [[name, r["n"], *accuracy_cells(r)] for name, r in summary["per_dataset"].items()]
    rows.append(["**size-weighted mean**", summary["n"], *accuracy_cells(summary)])
    rows.append(["macro mean", "", pct(summary["macro_accuracy"]), "", ""])
    return markdown_table(rows, ("dataset", "n", *ACCURACY_COLUMNS))


def subject_table(summary: Mapping[str, Any]) -> str:
    """Accuracy per subject with its interval, then the macro mean over subjects."""
    per = summary["per_subject"]
    rows: list[list[Any]] = [[s, v["n"], pct(v["accuracy"]), ci_text(v["ci95"])] for s, v in per.items()]
    rows.append(["macro mean", f"{len(per)} subjects", pct(summary["macro_subject_accuracy"]), ""])
    return markdown_table(rows, ("subject", "n", "accuracy", "95 % CI"))


def letter_table(summary: Mapping[str, Any]) -> str:
    """How often each letter is the gold answer and how often the model picked it."""
    pred = summary["pred_letter_distribution"]
    rows = [[letter, gold, pred.get(letter, 0)] for letter, gold in summary["gold_letter_distribution"].items()]
    return markdown_table(rows, ("letter", "gold", "predicted"))


def thinking_section(summary: Mapping[str, Any]) -> str:
    """Thinking mode beside the one-pass letter score of the same questions (`summary["thinking"]`, from
    `evaluate.thinking_summary`): both accuracies with their intervals, then agreement, paired correctness,
    unparseable answers, tokens generated per question and the share cut off at the token limit."""
    t = summary["thinking"]
    n, ls, paired, tok = t["n"], t["letter_scoring"], t["paired"], t["tokens"]
    how = ("the chat template's thinking mode" if t.get("template_thinking")
           else "a plain-text rationale; the model has no thinking switch")
    table = markdown_table([["one-pass letter scoring", n, pct(ls["accuracy"]), ci_text(ls["ci95"])],
                            ["thinking: reasoning, then 'Answer: X'", n, f"**{pct(t['accuracy'])}**",
                             ci_text(t["ci95"])]], ("mode", "n", "accuracy", "95 % CI"))
    lines = [
        "## Thinking mode",
        "",
        f"The model reasons first ({how}), then the letter is read strictly from its final 'Answer: X' line; "
        "an answer without one is unparseable and counted wrong.",
        "",
        *table.splitlines(),
        "",
        f"- Agreement with letter scoring (parsed letter = letter scoring's choice): "
        f"{pct(t['agreement_with_letter_scoring'])}",
        f"- Paired: both correct {paired['both_correct']}, only thinking {paired['thinking_only']}, only letter "
        f"scoring {paired['scoring_only']}, neither {paired['neither']}",
        f"- Unparseable (counted wrong): {t['unparseable']} of {n} ({pct(t['unparseable_share'])})",
        f"- Tokens generated per question: mean {tok['mean']:.1f}, median {tok['median']:.0f}, max {tok['max']}",
        f"- Cut off at max_new_tokens = {t['max_new_tokens']}: {t['cut_off']} of {n} ({pct(t['cut_off_share'])})",
    ]
    return "\n".join(lines) + "\n"
