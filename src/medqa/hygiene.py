"""Data hygiene: text normalisation, duplicates, train/eval leakage, mixtures, multi-benchmark scores.

- `normalize_text`: Unicode NFKC, invisible format characters removed (zero-width space/joiners,
  soft hyphen, BOM, bidi marks), line breaks unified, runs of spaces/tabs collapsed, blank-line
  runs reduced to one, ends stripped. Case is kept: this is the text the model sees.
- `text_key`: `normalize_text`, all whitespace collapsed, case-folded: the comparison form.
- `clean_records`: normalises every record and drops exact duplicates (same normalised question,
  options in the same order and same answer), keeping the first; copies that disagree on the
  answer are counted as `label_conflicts` and kept (which one is right is not ours to guess).
- Leakage: a record's `leak_key` is the `text_key` of its question plus the sorted `text_key`s of
  its options, so reordered options still match. `remove_leakage` drops every training record
  whose key occurs in any evaluation set and says how many, per evaluation set.
- `cross_subject_duplicates`: the same question (by `leak_key`) filed under several subjects,
  a known MMLU artefact that inflates multi-subject averages.
- `mix`: a seeded mixture of datasets by weight (see its docstring for up-sampling).
- `aggregate_accuracy`: per-dataset accuracy, the size-weighted mean (= pooled accuracy) and the
  macro mean (each dataset counts once), for reporting several benchmarks together.

Policy for MedMCQA `choice_type: "multi"` questions
---------------------------------------------------
In MedMCQA "multi" marks a question *type* (e.g. "All of the following are true EXCEPT", "which
of these are ..." with combined options such as "1, 2 and 3"), not several correct options: every
row still has exactly one correct option, `cop`, and the published MedMCQA accuracy (and the
lm-evaluation-harness task) scores all rows, "multi" included, against that single `cop`.
So by default (`policy="keep"`) they are kept as ordinary single-answer questions with the given
`cop`, which keeps our numbers comparable with published ones. `policy="drop"` removes them
(e.g. to train only on single-fact questions) and returns how many were dropped; dropping them
from an *evaluation* set makes its accuracy incomparable, so say so when reporting.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from medqa.errors import DataError

# Invisible "format" characters that NFKC keeps: soft hyphen, zero-width space/non-joiner/joiner,
# LRM/RLM, bidi embeddings and isolates, word joiner, invisible operators, BOM / ZWNBSP.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
_HSPACE = re.compile(r"[^\S\n]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(s: str) -> str:
    """NFKC, invisible characters removed, whitespace normalised (line structure kept)."""
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s)
        s = _INVISIBLE.sub("", s)
    s = _LINE_BREAKS.sub("\n", s)
    s = _HSPACE.sub(" ", s)
    if "\n" in s:
        s = "\n".join(line.strip() for line in s.split("\n"))
        s = _BLANK_RUNS.sub("\n\n", s)
    return s.strip()


def text_key(s: str) -> str:
    """Comparison form: normalised, all whitespace collapsed to one space, case-folded."""
    return " ".join(normalize_text(s).split()).casefold()


def leak_key(rec: Any) -> str:
    """Question plus the *sorted* options, each by `text_key`: reordered options still match."""
    return text_key(rec.question) + "\x1e" + "\x1f".join(sorted(text_key(o) for o in rec.options))


_PUNCT = re.compile(r"[\W_]+")


def content_key(rec: Any) -> str:
    """`leak_key` that also ignores punctuation: near-duplicates differing only in case, punctuation or
    whitespace (and option order) share it. Used to keep every copy of a question on one side of a split."""
    q = _PUNCT.sub(" ", text_key(rec.question)).strip()
    return q + "\x1e" + "\x1f".join(sorted(_PUNCT.sub(" ", text_key(o)).strip() for o in rec.options))


def hold_out_by_content(parts: Mapping[str, Sequence[Any]], sizes: Sequence[tuple[str, int, int]],
                        order: Any) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Hold questions out of training by content, before any mixing or up-sampling.

    `parts`: {name: records}; `sizes`: (split name, questions, seed) in order; `order(records, seed)` a
    seeded order (e.g. `data.hash_order`). Each split takes that many distinct questions (by
    `content_key`, one representative each, from what earlier splits left); every record sharing a held
    key — duplicates, near-duplicates, other parts' copies — leaves training. Returns (the parts without
    the held questions, {split name: representatives})."""
    reps: dict[str, Any] = {}
    for recs in parts.values():
        for r in recs:
            reps.setdefault(content_key(r), r)
    remaining = list(reps.values())
    held: dict[str, list[Any]] = {}
    held_keys: set[str] = set()
    for name, n, seed in sizes:
        if n == 0:
            held[name] = []
            continue
        if n >= len(remaining):
            raise DataError("train", None, name, f"holding out {n} questions leaves none of {len(remaining)} "
                            "distinct questions to train on")
        ordered = order(remaining, seed)
        held[name], remaining = ordered[:n], ordered[n:]
        held_keys |= {content_key(r) for r in held[name]}
    kept = {name: [r for r in recs if content_key(r) not in held_keys] for name, recs in parts.items()}
    return kept, held


def exact_key(rec: Any) -> tuple[str, tuple[str, ...], int]:
    return normalize_text(rec.question), tuple(normalize_text(o) for o in rec.options), rec.answer


def normalize_record(rec: Any) -> Any:
    """The record with normalised question, options and explanation (the same object if nothing changed)."""
    q = normalize_text(rec.question)
    opts = [normalize_text(o) for o in rec.options]
    exp = normalize_text(rec.explanation) if rec.explanation else rec.explanation
    if q == rec.question and opts == rec.options and exp == rec.explanation:
        return rec
    data = rec.model_dump()
    data.update(question=q, options=opts, explanation=exp or None)
    return type(rec).model_validate(data)


# ----------------------------------------------------------------------------- cleaning


@dataclass
class CleanReport:
    input: int = 0
    kept: int = 0
    normalized: int = 0
    exact_duplicates: int = 0
    label_conflicts: int = 0
    emptied: int = 0
    emptied_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["emptied_ids"] = d["emptied_ids"][:20]
        return d


def clean_records(records: Sequence[Any], drop_duplicates: bool = True) -> tuple[list[Any], CleanReport]:
    """Normalise every record, drop exact duplicates (counted), count answer conflicts.

    A record whose question or an option normalises to nothing (e.g. only zero-width spaces) is
    dropped and counted in `emptied`.
    """
    report = CleanReport(input=len(records))
    out: list[Any] = []
    seen: set[tuple[str, tuple[str, ...], int]] = set()
    answer_of: dict[tuple[str, tuple[str, ...]], int] = {}
    for rec in records:
        try:
            norm = normalize_record(rec)
        except ValidationError:
            report.emptied += 1
            report.emptied_ids.append(rec.id)
            continue
        if norm is not rec:
            report.normalized += 1
        key = exact_key(norm)
        if drop_duplicates and key in seen:
            report.exact_duplicates += 1
            continue
        seen.add(key)
        prev = answer_of.setdefault(key[:2], key[2])
        if prev != key[2]:
            report.label_conflicts += 1
        out.append(norm)
    report.kept = len(out)
    return out, report


def count_duplicates(records: Sequence[Any]) -> dict[str, int]:
    """Exact duplicates, content duplicates (same question and option set, any order) and answer conflicts."""
    exact = Counter(exact_key(r) for r in records)
    content: dict[str, set[int]] = defaultdict(set)
    n_content = Counter()
    for r in records:
        k = leak_key(r)
        n_content[k] += 1
        content[k].add(_gold_key(r))
    return {
        "exact": sum(c - 1 for c in exact.values()),
        "content": sum(c - 1 for c in n_content.values()),
        "label_conflicts": sum(1 for v in content.values() if len(v) > 1),
    }


def _gold_key(rec: Any) -> int:
    return hash(text_key(rec.options[rec.answer]))


# ----------------------------------------------------------------------------- leakage


@dataclass
class LeakageReport:
    train_leaked: int
    eval_leaked: int
    examples: list[tuple[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {"train_leaked": self.train_leaked, "eval_leaked": self.eval_leaked, "examples": self.examples[:20]}


def find_leakage(train: Sequence[Any], eval_records: Sequence[Any]) -> LeakageReport:
    """How many training records also occur in `eval_records` (and vice versa), by `leak_key`."""
    eval_ids: dict[str, str] = {}
    for r in eval_records:
        eval_ids.setdefault(leak_key(r), r.id)
    train_keys: set[str] = set()
    hits, examples = 0, []
    for r in train:
        k = leak_key(r)
        train_keys.add(k)
        if k in eval_ids:
            hits += 1
            if len(examples) < 20:
                examples.append((r.id, eval_ids[k]))
    eval_hits = sum(1 for r in eval_records if leak_key(r) in train_keys)
    return LeakageReport(train_leaked=hits, eval_leaked=eval_hits, examples=examples)


def remove_leakage(
    train: Sequence[Any], evals: Sequence[Any] | Mapping[str, Sequence[Any]]
) -> tuple[list[Any], dict[str, Any]]:
    """Drop training records that occur in any evaluation set; returns (kept, report with counts)."""
    sets: Mapping[str, Sequence[Any]] = evals if isinstance(evals, Mapping) else {"eval": evals}
    key_sets = {name: {leak_key(r) for r in recs} for name, recs in sets.items()}
    kept: list[Any] = []
    by_eval = dict.fromkeys(key_sets, 0)
    removed_ids: list[str] = []
    for r in train:
        k = leak_key(r)
        hit = [name for name, keys in key_sets.items() if k in keys]
        if hit:
            for name in hit:
                by_eval[name] += 1
            removed_ids.append(r.id)
        else:
            kept.append(r)
    return kept, {"input": len(train), "kept": len(kept), "removed": len(removed_ids), "by_eval": by_eval,
                  "removed_ids": removed_ids[:20]}


def cross_subject_duplicates(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Questions (by `leak_key`) that occur under more than one subject, e.g. across MMLU subsets."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        groups[leak_key(r)].append(r)
    out = []
    for recs in groups.values():
        subjects = sorted({r.subject or "(none)" for r in recs})
        if len(subjects) > 1:
            out.append({
                "question": recs[0].question[:120],
                "subjects": subjects,
                "ids": [r.id for r in recs],
                "same_answer": len({text_key(r.options[r.answer]) for r in recs}) == 1,
            })
    return out


# ----------------------------------------------------------------------------- MedMCQA "multi"


def apply_multi_policy(records: Sequence[Any], policy: str = "keep") -> tuple[list[Any], int]:
    """MedMCQA `choice_type == "multi"`: keep as single-answer with the given cop, or drop (counted)."""
    if policy == "keep":
        return list(records), 0
    if policy != "drop":
        raise DataError("data", None, "multi_policy", f"must be 'keep' or 'drop', got {policy!r}")
    kept = [r for r in records if (r.choice_type or "").strip().lower() != "multi"]
    return kept, len(records) - len(kept)


# ----------------------------------------------------------------------------- mixtures


def _as_named(datasets_with_weights: Any) -> list[tuple[str, Sequence[Any], float]]:
    if isinstance(datasets_with_weights, Mapping):
        items = [(str(k), v[0], v[1]) for k, v in datasets_with_weights.items()]
    else:
        items = []
        for i, t in enumerate(datasets_with_weights):
            if len(t) == 3:
                items.append((str(t[0]), t[1], t[2]))
            elif len(t) == 2:
                items.append((str(i), t[0], t[1]))
            else:
                raise DataError("mix", None, None, "give (records, weight) or (name, records, weight) per dataset")
    return items


def mix(datasets_with_weights: Any, seed: int, total: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """A seeded mixture: `total` records (default: all inputs together), shared out by weight.

    `datasets_with_weights`: {name: (records, weight)} or [(records, weight)] or [(name, records, weight)].
    Each dataset gets round(total * w / sum(w)) records (largest remainder, so they add up to `total`).
    A dataset asked for more records than it has is up-sampled: whole copies plus a seeded sample of
    the rest; the copies get ids `<id>#r<k>` so that ids stay unique.
    Fewer than it has: a seeded sample without replacement. The result is shuffled with the seed.
    """
    items = _as_named(datasets_with_weights)
    if not items:
        raise DataError("mix", None, None, "no datasets to mix")
    for name, recs, w in items:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 or w != w:
            raise DataError("mix", None, name, f"weight must be a number >= 0, got {w!r}")
        if w > 0 and not recs:
            raise DataError("mix", None, name, "has weight but no records")
    wsum = float(sum(w for _, _, w in items))
    if wsum <= 0:
        raise DataError("mix", None, None, "weights sum to 0")
    if total is None:
        total = sum(len(r) for _, r, _ in items)
    if total < 0:
        raise DataError("mix", None, "total", f"must be >= 0, got {total}")
    quotas = [total * w / wsum for _, _, w in items]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(items)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    rng = random.Random(seed)
    out: list[Any] = []
    info: dict[str, Any] = {}
    for (name, recs, w), k in zip(items, counts):
        n = len(recs)
        picked: list[Any] = []
        if k and n:
            full, rest = divmod(k, n)
            for c in range(full):
                picked += list(recs) if c == 0 else [_copy(r, c) for r in recs]
            picked += [(_copy(r, full) if full else r) for r in rng.sample(list(recs), rest)]
        out += picked
        info[name] = {"available": n, "weight": w, "share": w / wsum, "drawn": len(picked),
                      "upsampled": k > n}
    rng.shuffle(out)
    return out, {"total": len(out), "seed": seed, "datasets": info}


def _copy(rec: Any, k: int) -> Any:
    return rec.model_copy(update={"id": f"{rec.id}#r{k}"})


# ----------------------------------------------------------------------------- aggregation


def aggregate_accuracy(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-dataset accuracy, the size-weighted mean and the macro mean of several evaluations.

    Each value needs `n` and `correct` or `accuracy` (an `evaluate.summarize` dict works).
    """
    per: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        n = int(r.get("n", 0))
        if n <= 0:
            raise DataError("aggregate", None, name, "needs n > 0")
        if "correct" in r:
            correct = int(r["correct"])
        elif "accuracy" in r:
            correct = round(float(r["accuracy"]) * n)
        else:
            raise DataError("aggregate", None, name, "needs 'correct' or 'accuracy'")
        if not 0 <= correct <= n:
            raise DataError("aggregate", None, name, f"correct {correct} not within 0..{n}")
        per[name] = {"n": n, "correct": correct, "accuracy": correct / n}
    if not per:
        raise DataError("aggregate", None, None, "no results")
    n_all = sum(v["n"] for v in per.values())
    return {
        "per_dataset": per,
        "n": n_all,
        "weighted_mean": sum(v["correct"] for v in per.values()) / n_all,
        "macro_mean": sum(v["accuracy"] for v in per.values()) / len(per),
    }
