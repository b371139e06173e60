"""Confidence that means something: option-order augmentation, temperature scaling, selective answering.

- `augment_options`: permute each training question's options so the gold letter is spread evenly
  over the positions (balanced, seeded; the gold index follows its option). Questions whose options
  point at other options ("Both A and B", "All of the above", "None", "Either A or C": `refers_to_positions`)
  and PubMedQA's fixed yes / no / maybe keep their order (`keeps_option_order`, also used by the
  permutation analysis).
- `fit_temperature`: one scalar T minimising the negative log-likelihood of the gold option on a
  calibration split (disjoint from training and from the final evaluation); `apply_temperature`
  rescales option probabilities p -> softmax(log p / T).
- `risk_coverage`: accuracy of the answers kept when the least confident are withheld, its area
  (AURC, lower is better) and accuracy at fixed coverages; `abstain_threshold` picks the lowest
  confidence threshold whose kept answers reach a target accuracy on the calibration split *with a
  statistical guarantee* (Clopper–Pearson lower bound, selective risk control); `abstains` is the one
  rule every surface applies.
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

from medqa.datasets import LETTERS, MCQRecord
from medqa.io import atomic_write_json

CALIBRATION_FILE = "calibration.json"
# An option "points at other options" when its meaning depends on the other options of the question: it
# quantifies over them ("All of the above", "None", "Both", "Any of these", "All are equal") or names them by
# letter or number ("Both A and B", "Either A or C", "Only A", "All except C", "Both option 2 and 3", a bare
# "1 and 2" beside options that are not letters). Such a question keeps its option order (augmentation, rotation).
# Letter sets among letter-set options ("ab", "1,3", "a only") name statements in the question stem, not options.
_QUANT = r"(?:all|none|both|neither|either|any|some)"
_REFERS = re.compile(
    rf"\b{_QUANT}\s+(?:of\s+(?:the\s+)?|the\s+)(?:above|below|following)\b"  # All of the above, all the following
    rf"|\b{_QUANT}\s+(?:of\s+)?(?:these|those)\b|^{_QUANT}\s+above$"  # None of these, All above ("all above 40": no)
    rf"|\b{_QUANT}\s+of\s+(?:the\s+)?(?:them|options?|choices?|alternatives|(?:two|three|four|five))\b"  # Either of the three
    rf"|^{_QUANT}$"  # standing alone: All, None., Both, Neither, Any
    r"|^(?:all|both)\s+(?:are\s+|is\s+|have\s+|at\s+|remain\s+)?(?:the\s+)?(?:same|equal|equally|similar|common)\b"  # All are equal
    r"|^(?:all|any)\s*,?\s+(?:except|but)\b",  # All except C, Any but ...
    re.IGNORECASE,
)
_ONE = r"\(?\s*[a-e1-5]\s*\)?"
_SEP = r"(?:\s*[,&+/]\s*|(?:\s+|(?<=\)))(?:and|or|nor)(?:\s+|(?=\()))"  # words need spaces: "Cord" is no set
_LETTER_REF = re.compile(  # letters or numbers that name options when the options themselves are not letters
    rf"^(?:(?:both|either|neither|only)\s+(?:of\s+)?(?:options?\s+)?|options?\s+)(?P<a>{_ONE}(?:(?:{_SEP})?{_ONE})*)$"  # Both AB
    rf"|^(?P<b>{_ONE}(?:{_SEP}{_ONE})*)\s+(?:only|alone)$"  # A only
    rf"|^(?:all|any)\s+(?:options?\s+)?(?:except|but)\s+(?P<c>{_ONE}(?:{_SEP}{_ONE})*)$"  # All except C
    rf"|^(?P<d>{_ONE}(?:{_SEP}{_ONE})+)$",  # a bare set: A and B, 1, 3
    re.IGNORECASE,
)
_OWN_LABEL = re.compile(r"^\s*(?:\([a-e]\)|[a-e]\))\s+(?!(?:and|or|nor)\b|[,&+/])", re.IGNORECASE)  # "d)\tNone of the above"


def _normal(option: str) -> str:
    return _OWN_LABEL.sub("", option).strip().rstrip(".,;:!").strip()


_LETTER_LIKE = re.compile(rf"^(?:only\s+)?{_ONE}(?:(?:{_SEP})?{_ONE})*(?:\s+(?:only|alone))?$", re.IGNORECASE)


def _letter_like(option: str) -> bool:
    """A letter or number on its own, a letter set ("ab", "1, 3"), or such a set with only/alone: options that
    name the stem's statements (or a figure's labels) rather than other options."""
    return bool(_LETTER_LIKE.match(_normal(option)))


def _names_options(option: str, n_options: int) -> bool:
    m = _LETTER_REF.match(_normal(option))
    if not m:
        return False
    letters = re.findall(r"[a-e1-5]", next(g for g in m.groups() if g), re.IGNORECASE)
    index = [("abcde".index(x.lower()) if x.isalpha() else int(x) - 1) for x in letters]
    return all(i < n_options for i in index)


def refers_to_positions(rec: MCQRecord) -> bool:
    """True when an option points at other options (quantifies over them or names them by letter/number)."""
    for i, option in enumerate(rec.options):
        s = _normal(option)
        if s == "ALL":  # acute lymphoblastic leukaemia, not "all of the options"
            continue
        if _REFERS.search(s):
            return True
        others_letters = any(_letter_like(o) for j, o in enumerate(rec.options) if j != i)
        if not others_letters and _names_options(s, len(rec.options)):
            return True
    return False


def fixed_label_set(rec: MCQRecord) -> bool:
    """PubMedQA's yes / no / maybe: a fixed label set in a fixed order, not options to shuffle."""
    return rec.source == "pubmedqa" or [o.strip().lower() for o in rec.options] == ["yes", "no", "maybe"]


def keeps_option_order(rec: MCQRecord) -> bool:
    """Questions whose options must stay where they are: option-order augmentation and the permutation
    analysis leave them as they are."""
    return fixed_label_set(rec) or refers_to_positions(rec)


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
            if keeps_option_order(r):
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


def clopper_pearson_lower(k: int, n: int, level: float) -> float:
    """One-sided Clopper–Pearson lower confidence bound of a binomial proportion: the p with
    P(Bin(n, p) >= k) = 1 - level (0 when k = 0). Exact, by bisection on the binomial tail."""
    if n <= 0 or k <= 0:
        return 0.0
    alpha = 1.0 - level
    i = np.arange(k, n + 1, dtype=float)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in range(k, n + 1)])

    def upper_tail(p: float) -> float:  # P(X >= k) for X ~ Bin(n, p)
        if p <= 0.0:
            return 0.0
        return min(1.0, float(np.exp(log_choose + i * math.log(p) + (n - i) * math.log1p(-p)).sum()))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if upper_tail(mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def abstain_threshold(conf: np.ndarray, correct: np.ndarray, target_accuracy: float, level: float = 0.9
                      ) -> dict[str, Any]:
    """Selective risk control (Geifman & El-Yaniv 2017, "SGR"): the lowest confidence threshold whose
    kept answers (conf >= t) have a Clopper–Pearson lower bound of accuracy >= `target_accuracy`, at
    confidence `level` overall.

    The thresholds are searched by bisection over the sorted confidences, as in SGR, and each of the
    ceil(log2 n) tests is made at level 1 - (1 - level) / ceil(log2 n) (Bonferroni), so the guarantee
    holds for the threshold chosen. A handful of lucky questions cannot set it: with few calibration
    questions no threshold qualifies, and then every answer is flagged (`abstain_all`).

    Returns {"abstain_threshold": t or None, "abstain_all": bool, "guarantee": {...}} with the
    method, level, target, n, the answers kept on the calibration split, their accuracy and the bound."""
    conf, correct = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float)
    n = len(conf)
    tests = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    per_test = 1.0 - (1.0 - level) / tests
    guarantee: dict[str, Any] = {
        "method": "SGR bisection, one-sided Clopper-Pearson lower bound, Bonferroni over the tests",
        "level": level, "target_accuracy": target_accuracy, "n": n, "tests": tests,
        "kept": 0, "kept_accuracy": None, "lower_bound": None,
    }
    if n == 0:
        return {"abstain_threshold": None, "abstain_all": True, "guarantee": guarantee}
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order]
    hits = np.cumsum(ok)

    def kept_at(i: int) -> int:  # answers kept by the threshold c[i]: every one with conf >= c[i]
        return int(np.searchsorted(-c, -c[i], side="right"))

    def bound(i: int) -> tuple[int, float]:
        m = kept_at(i)
        return m, clopper_pearson_lower(int(hits[m - 1]), m, per_test)

    best: tuple[int, float] | None = None
    lo, hi = 0, n - 1  # indices into the descending confidences: larger index, lower threshold
    while lo <= hi:
        mid = (lo + hi) // 2
        m, lb = bound(mid)
        if lb >= target_accuracy:
            best, lo = (mid, lb), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return {"abstain_threshold": None, "abstain_all": True, "guarantee": guarantee}
    i, lb = best
    m = kept_at(i)
    guarantee.update(kept=m, kept_accuracy=float(hits[m - 1] / m), lower_bound=lb)
    return {"abstain_threshold": float(c[i]), "abstain_all": False, "guarantee": guarantee}


def abstains(conf: float, calibration: dict[str, Any] | None, threshold: float | None = None,
             default: float = 0.5) -> bool:
    """The one abstention rule: below an explicit `threshold` if given; else everything when the
    calibration found no threshold with its guarantee (`abstain_all`); else below the fitted threshold;
    without a calibration, below `default`."""
    if threshold is not None:
        return conf < threshold
    cal = calibration or {}
    if cal.get("abstain_all"):
        return True
    fitted = cal.get("abstain_threshold")
    return conf < (float(fitted) if fitted is not None else default)


def guarantee_text(calibration: dict[str, Any] | None) -> str | None:
    """One sentence saying what the fitted abstention rule guarantees (None without a calibration)."""
    g = (calibration or {}).get("guarantee")
    if not g:
        return None
    lvl, target, n = g["level"], g["target_accuracy"], g["n"]
    if (calibration or {}).get("abstain_all"):
        return (f"No confidence threshold reached {target:.0%} accuracy with {lvl:.0%} confidence on the "
                f"{n} calibration questions, so every answer is flagged as low confidence.")
    t = calibration["abstain_threshold"]
    return (f"Answers at or above {t:.1%} confidence: {g['kept']} of {n} calibration questions, "
            f"{g['kept_accuracy']:.1%} right; accuracy at least {g['lower_bound']:.1%} with {lvl:.0%} confidence "
            f"(Clopper-Pearson, target {target:.0%}).")


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
