"""Paired comparison of two evaluation runs on the same questions: exact McNemar test.

    medqa compare runs/base-eval runs/lora-eval [--json]
    medqa compare runs/sft-thinking runs/grpo-thinking --thinking   # thinking-mode answers (`generated_correct`)

Questions are matched by id (and dataset, for pooled multi-dataset runs). Only the discordant pairs
carry information: `fixed` (wrong in A, right in B) and `broken` (right in A, wrong in B). Under the
null hypothesis of equal accuracy each discordant pair is a fair coin, so the two-sided exact p-value
is min(1, 2 * P[Binomial(fixed + broken, 1/2) <= min(fixed, broken)]).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from medqa.datasets.readers import iter_raw_rows
from medqa.errors import DataError
from medqa.report import with_ci


def mcnemar_exact(fixed: int, broken: int) -> float:
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


THINKING_COLUMN = "generated_correct"  # written by `medqa eval --eval.generate true [--eval.thinking true]`


def _predictions(run: str | Path, column: str = "correct") -> dict[tuple[str, str], dict[str, Any]]:
    path = Path(run)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise DataError(str(path), None, None, "no predictions.jsonl (pass a `medqa eval` output directory)")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for lineno, row in iter_raw_rows(str(path)):  # the datasets' JSON-lines reader: errors name file and line
        for key in ("id", column):
            if key not in row:
                hint = (" (evaluate with --eval.generate true --eval.thinking true to compare thinking-mode answers)"
                        if key == THINKING_COLUMN else "")
                raise DataError(str(path), lineno, key, "missing" + hint)
        row = {**row, "correct": row[column]}
        k = (str(row.get("dataset", "")), str(row["id"]))
        if k in out:
            raise DataError(str(path), lineno, "id", f"duplicate question id {row['id']!r}")
        out[k] = row
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, thinking: bool = False) -> dict[str, Any]:
    """The paired comparison of letter scoring (`correct`), or with `thinking` of the generated answers read
    strictly from their final line (`generated_correct`; unparseable counts wrong)."""
    from medqa.evaluate import wilson_interval  # imports torch: not at `medqa` start-up (hardware.env comes first)

    column = THINKING_COLUMN if thinking else "correct"
    a, b = _predictions(run_a, column), _predictions(run_b, column)
    if set(a) != set(b):
        only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
        raise DataError(str(run_b), None, "id",
                        f"the runs did not score the same questions ({only_a} only in A, {only_b} only in B)")
    keys = sorted(a)
    fixed = sum(1 for k in keys if not a[k]["correct"] and b[k]["correct"])
    broken = sum(1 for k in keys if a[k]["correct"] and not b[k]["correct"])
    n = len(keys)
    ka, kb = sum(bool(a[k]["correct"]) for k in keys), sum(bool(b[k]["correct"]) for k in keys)
    return {
        "compared": "generated answers (thinking mode)" if thinking else "letter scoring",
        "n": n,
        "accuracy_a": ka / n if n else 0.0,
        "accuracy_b": kb / n if n else 0.0,
        "ci95_a": list(wilson_interval(ka, n)),
        "ci95_b": list(wilson_interval(kb, n)),
        "difference": (kb - ka) / n if n else 0.0,
        "fixed": fixed,
        "broken": broken,
        "both_right": sum(1 for k in keys if a[k]["correct"] and b[k]["correct"]),
        "both_wrong": sum(1 for k in keys if not a[k]["correct"] and not b[k]["correct"]),
        "mcnemar_exact_p": mcnemar_exact(fixed, broken),
        "fixed_ids": [k[1] for k in keys if not a[k]["correct"] and b[k]["correct"]][:50],
        "broken_ids": [k[1] for k in keys if a[k]["correct"] and not b[k]["correct"]][:50],
    }


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="paired comparison of two eval runs (exact McNemar)")
    p.add_argument("run_a", help="eval output directory (or predictions.jsonl) of run A")
    p.add_argument("run_b", help="eval output directory (or predictions.jsonl) of run B")
    p.add_argument("--thinking", action="store_true", help="compare the generated answers (eval.generate / "
                   "eval.thinking: the letter read strictly from the final line) instead of letter scoring")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def compare_main(ns: argparse.Namespace) -> int:
    r = compare_runs(ns.run_a, ns.run_b, thinking=ns.thinking)
    if ns.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['n']} questions in both runs ({r['compared']})")
    print(f"A: {with_ci(r['accuracy_a'], r['ci95_a'], sep='-')}   B: {with_ci(r['accuracy_b'], r['ci95_b'], sep='-')}   "
          f"B-A: {r['difference']:+.1%}")
    print(f"fixed by B: {r['fixed']}   broken by B: {r['broken']}   "
          f"exact McNemar p = {r['mcnemar_exact_p']:.4g}")
    return 0
