"""`medqa data inspect`: what a dataset holds before anything is trained or scored on it.

`inspect_records` reports counts per split and subject, options per question, the gold-letter
distribution with the majority baseline (always answering the most frequent letter), explanation
coverage, choice types, duplicate / answer-conflict counts, leakage between splits (and against
an optional evaluation set), questions filed under several subjects, text lengths in characters
and, with a tokenizer, in tokens (p50/p90/p99/max, and how many exceed common `max_length`s).
Token lengths are of the user message (`format.user_message`: question and lettered options) and
of the full training text (that + answer + explanation), without the chat template's few tokens.
An optional PNG histogram of those lengths is written atomically (matplotlib, Agg backend).
"""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from medqa.datasets import LETTERS, MCQRecord
from medqa.format import user_message
from medqa.hygiene import count_duplicates, cross_subject_duplicates, find_leakage
from medqa.io import atomic_write_bytes

MAX_LENGTHS = (256, 512, 1024, 2048)


def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "mean": round(float(a.mean()), 1), "p50": round(float(p50), 1), "p90": round(float(p90), 1),
            "p99": round(float(p99), 1), "max": int(a.max())}


def token_lengths(records: Sequence[MCQRecord], tokenizer: Any, batch_size: int = 1024) -> tuple[list[int], list[int]]:
    """(prompt lengths, full lengths) in tokens as the model sees them: the chat-template prompt, then
    prompt + training target (answer, explanation, end of turn). Batched for fast tokenizers."""
    from medqa.format import PromptFormat

    fmt = PromptFormat(tokenizer, "chat")
    prompt: list[int] = []
    full: list[int] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts = [fmt.prompt(r) for r in chunk]
        for texts, out in ((prompts, prompt), ([p + fmt.target(r) for p, r in zip(prompts, chunk)], full)):
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            out += [len(x) for x in ids]
    return prompt, full


def inspect_records(
    records: Sequence[MCQRecord] | Mapping[str, Sequence[MCQRecord]],
    tokenizer: Any = None,
    eval_records: Sequence[MCQRecord] | None = None,
    png_path: str | Path | None = None,
    tokenizer_name: str | None = None,
) -> dict[str, Any]:
    """Statistics of one record list, or of several splits given as {split: records}."""
    splits: dict[str, Sequence[MCQRecord]] = dict(records) if isinstance(records, Mapping) else {"all": records}
    allrecs = [r for recs in splits.values() for r in recs]
    n = len(allrecs)
    subjects = Counter(r.subject or "(none)" for r in allrecs)
    by_split_subject = {s: dict(Counter(r.subject or "(none)" for r in recs).most_common()) for s, recs in splits.items()}
    width = max((len(r.options) for r in allrecs), default=4)
    gold = Counter(LETTERS[r.answer] for r in allrecs)
    majority_letter, majority_n = gold.most_common(1)[0] if n else ("A", 0)
    with_exp = sum(1 for r in allrecs if r.explanation)
    out: dict[str, Any] = {
        "n": n,
        "splits": {s: len(v) for s, v in splits.items()},
        "sources": dict(Counter(r.source for r in allrecs).most_common()),
        "subjects": dict(subjects.most_common()),
        "options_per_question": {str(k): v for k, v in sorted(Counter(len(r.options) for r in allrecs).items())},
        "gold_letters": {L: gold.get(L, 0) for L in LETTERS[:width]},
        "gold_letter_share": {L: round(gold.get(L, 0) / n, 4) if n else 0.0 for L in LETTERS[:width]},
        "majority_letter": majority_letter,
        "majority_baseline": round(majority_n / n, 4) if n else 0.0,
        "uniform_baseline": round(float(np.mean([1 / len(r.options) for r in allrecs])), 4) if n else 0.0,
        "explanation_coverage": round(with_exp / n, 4) if n else 0.0,
        "with_explanation": with_exp,
        "choice_types": dict(Counter(r.choice_type or "(none)" for r in allrecs).most_common()),
        "duplicates": count_duplicates(allrecs),
    }
    if len(splits) > 1:
        out["by_split_subject"] = by_split_subject
        out["duplicates_by_split"] = {s: count_duplicates(v) for s, v in splits.items()}
    out["leakage"] = _leakage(splits, allrecs, eval_records)
    xsub = cross_subject_duplicates(allrecs)
    out["cross_subject_duplicates"] = len(xsub)
    out["cross_subject_examples"] = xsub[:5]
    out["chars"] = {
        "question": _percentiles([len(r.question) for r in allrecs]),
        "options": _percentiles([sum(len(o) for o in r.options) for r in allrecs]),
        "explanation": _percentiles([len(r.explanation) for r in allrecs if r.explanation]),
    }
    _lengths(out, splits, tokenizer, tokenizer_name, png_path)
    return out


def _leakage(splits: Mapping[str, Sequence[MCQRecord]], allrecs: list[MCQRecord],
             eval_records: Sequence[MCQRecord] | None) -> dict[str, Any]:
    """Questions shared between every two splits, and between the data and an evaluation set."""
    leakage: dict[str, Any] = {}
    for (a, ra), (b, rb) in combinations(splits.items(), 2):
        rep = find_leakage(ra, rb)
        leakage[f"{a}~{b}"] = {"records_in_" + a: rep.train_leaked, "records_in_" + b: rep.eval_leaked}
    if eval_records is not None:
        rep = find_leakage(allrecs, eval_records)
        leakage["eval"] = {"records_in_data": rep.train_leaked, "records_in_eval": rep.eval_leaked,
                           "examples": rep.examples[:5]}
    return leakage


def _lengths(out: dict[str, Any], splits: Mapping[str, Sequence[MCQRecord]], tokenizer: Any,
             tokenizer_name: str | None, png_path: str | Path | None) -> None:
    """Token lengths (with a tokenizer) or character lengths, and the histogram PNG when asked."""
    hist: dict[str, list[int]] = {}
    if tokenizer is not None:
        tokens: dict[str, Any] = {"tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__}
        all_prompt: list[int] = []
        all_full: list[int] = []
        for s, recs in splits.items():
            p, f = token_lengths(list(recs), tokenizer)
            all_prompt += p
            all_full += f
            hist[s] = f
        tokens["prompt"] = _percentiles(all_prompt)
        tokens["full"] = _percentiles(all_full)
        tokens["full_over"] = {str(m): int(sum(1 for x in all_full if x > m)) for m in MAX_LENGTHS}
        out["tokens"] = tokens
        unit = "tokens (full training text)"
    else:
        for s, recs in splits.items():
            hist[s] = [len(user_message(r)) + len(r.options[r.answer]) + len(r.explanation or "") for r in recs]
        unit = "characters (question, options, answer and explanation)"
    if png_path is not None:
        out["png"] = str(write_histogram(hist, png_path, unit))


def write_histogram(lengths: Mapping[str, Sequence[int]], path: str | Path, unit: str = "tokens") -> Path:
    """Histogram of lengths per split as a PNG, written atomically (temp file beside it, then rename)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    values = [v for vs in lengths.values() for v in vs]
    bins = np.histogram_bin_edges(values, bins=50) if values else 10
    for name, vs in lengths.items():
        if vs:
            ax.hist(vs, bins=bins, alpha=0.6 if len(lengths) > 1 else 0.9, label=f"{name} (n={len(vs)})")
    if values:
        p99 = float(np.percentile(values, 99))
        ax.axvline(p99, color="black", linestyle="--", linewidth=1, label=f"p99 = {p99:.0f}")
    ax.set_xlabel(f"length in {unit}")
    ax.set_ylabel("questions")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- command line


def _parse_opts(pairs: list[str] | None) -> dict[str, Any]:
    from medqa.config import parse_value
    from medqa.errors import DataError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise DataError("data", None, "option", f"expected KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v if k.strip() in ("question", "answer", "explanation", "subject", "id", "topic", "test_ids") else parse_value(v)
    return out


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `inspect` to a subparsers action (the one under `medqa data`): the short flags below, or a YAML
    `--config` and `--data.*` / `--eval_data.*` flags through the same parser as every other subcommand."""
    from medqa.datasets import dataset_names
    from medqa.flags import add_config_arguments

    p = subparsers.add_parser("inspect", help="counts, gold letters, duplicates, leakage, lengths of a dataset")
    p.add_argument("--dataset", help=f"dataset family ({', '.join(dataset_names())}) or an lm-eval task name "
                   "(medqa_4options, mmlu_<subject>); default: the config's, medmcqa")
    p.add_argument("--data", help="file, folder or Hub id (not needed for demo)")
    p.add_argument("--split", help="split (Hub split; pubmedqa: test|train; mmlu: test|dev|val)")
    p.add_argument("--subset", help="mmlu: one subject or 'medical' (all six)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="loader option, repeatable: cop_base=0, test_ids=PATH, include_context=false, "
                        "question=COL, options=A,B,C,D, answer=COL, answer_format=letter|index0|index1|text")
    p.add_argument("--on-bad-rows", choices=("error", "skip"), default=None)
    p.add_argument("--eval-dataset", help="loader of --eval-data (default: --dataset)")
    p.add_argument("--eval-data", help="evaluation set to check for leakage against")
    p.add_argument("--tokenizer", help="tokenizer for token lengths (Hub id, folder or smollm2-135m-instruct)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--png", help="write a histogram of lengths to this PNG file")
    add_config_arguments(p, sections=("data", "eval_data"))
    p.set_defaults(data_command="inspect")
    return p


def _inspect_config(args: argparse.Namespace) -> Any:
    """The short flags as config values (they win over --config and the dotted flags), then the one parser."""
    from medqa.flags import config_from_args

    base: dict[str, Any] = {}
    short = {"data.dataset": args.dataset, "data.path": args.data, "data.split": args.split,
             "data.subjects": args.subset, "data.on_bad_rows": args.on_bad_rows}
    for k, v in _parse_opts(getattr(args, "option", None)).items():
        short["data.cop_base" if k == "cop_base" else f"data.loader_options.{k}"] = v
    if args.eval_data:
        short.update({"eval_data.path": args.eval_data, "eval_data.on_bad_rows": args.on_bad_rows})
        base["eval_data.dataset"] = args.eval_dataset or args.dataset or "medmcqa"
    for k, v in short.items():
        if v is not None:
            setattr(args, f"cfg:{k}", v)
    return config_from_args(args, base=base)


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `data` (with `inspect` under it) to the top-level subparsers action."""
    p = subparsers.add_parser("data", help="inspect datasets")
    sub = p.add_subparsers(dest="data_command", required=True)
    add_inspect_parser(sub)
    return p


def inspect_main(args: argparse.Namespace) -> int:
    from medqa.datasets import load_dataset_config

    cfg = _inspect_config(args)
    records, report = load_dataset_config(cfg.data, default_split="train")
    eval_records = load_dataset_config(cfg.eval_data, default_split="validation")[0] if cfg.eval_data else None
    tok = None
    if args.tokenizer:
        from medqa.modeling import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    stats = inspect_records(records, tokenizer=tok, eval_records=eval_records, png_path=args.png,
                            tokenizer_name=args.tokenizer)
    stats["load"] = report.as_dict()
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(format_report(stats, cfg.data.path or cfg.data.dataset))
    return 0


def format_report(s: dict[str, Any], name: str) -> str:
    load = s.get("load", {})
    lines = [f"{name}: {s['n']} questions" + (f" ({load.get('skipped')} bad rows skipped)" if load.get("skipped") else "")]
    lines.append("options per question: " + ", ".join(f"{k}: {v}" for k, v in s["options_per_question"].items()))
    lines.append("gold letters: " + ", ".join(f"{L} {c} ({s['gold_letter_share'][L]:.1%})" for L, c in s["gold_letters"].items()))
    lines.append(f"majority baseline: {s['majority_baseline']:.1%} (always {s['majority_letter']}); "
                 f"uniform {s['uniform_baseline']:.1%}")
    lines.append(f"explanations: {s['with_explanation']} ({s['explanation_coverage']:.1%})")
    top = list(s["subjects"].items())[:12]
    lines.append("subjects: " + ", ".join(f"{k} {v}" for k, v in top) + (" ..." if len(s["subjects"]) > 12 else ""))
    d = s["duplicates"]
    lines.append(f"duplicates: {d['exact']} exact, {d['content']} same question+options, {d['label_conflicts']} answer conflicts; "
                 f"{s['cross_subject_duplicates']} questions under several subjects")
    for k, v in s["leakage"].items():
        lines.append(f"leakage {k}: " + ", ".join(f"{a} {b}" for a, b in v.items() if a != "examples"))
    q = s["chars"]["question"]
    if q.get("n"):
        lines.append(f"question chars: p50 {q['p50']:.0f}, p90 {q['p90']:.0f}, p99 {q['p99']:.0f}, max {q['max']}")
    if "tokens" in s:
        t = s["tokens"]
        for part in ("prompt", "full"):
            v = t[part]
            lines.append(f"{part} tokens ({t['tokenizer']}): p50 {v['p50']:.0f}, p90 {v['p90']:.0f}, p99 {v['p99']:.0f}, max {v['max']}")
        lines.append("full text over max_length: " + ", ".join(f">{k}: {v}" for k, v in t["full_over"].items()))
    if "png" in s:
        lines.append(f"histogram: {s['png']}")
    return "\n".join(lines)
