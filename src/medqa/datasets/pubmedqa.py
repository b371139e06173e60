"""PubMedQA-L: the original `ori_pqal.json` (one JSON object keyed by PMID, each with `QUESTION`,
`CONTEXTS`, `LABELS`, `final_decision`, `LONG_ANSWER`), options yes / no / maybe.

`split="test"` keeps the 500 PMIDs of the official `test_ground_truth.json` (passed as `test_ids`
or found beside the data file), `split="train"` the other 500 (the official train+dev pool);
labels in the ground-truth file must agree with `final_decision`. With `include_context=True`
(default) the record carries the abstract in `MCQRecord.context` (the CONTEXTS joined by newlines,
as lm-evaluation-harness shows them); prompts put it before the question. `LONG_ANSWER` is the
explanation. The Hub `pqa_labeled` rows (`pubid`, `question`, `context.contexts`, `long_answer`,
`final_decision`) load the same way. Rows are numbered by PMID for the original file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medqa.datasets.readers import (
    check_format, check_on_bad_rows, collect, is_local, iter_hub, read_rows, read_text_file, require_object, short,
    text_cell,
)
from medqa.datasets.record import LoadReport, MCQRecord, Row, default_id, make_record
from medqa.errors import DataError

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


def _pubmedqa_context(source: str, row: Row, contexts: Any, include_context: bool, field: str) -> str | None:
    """The abstract (CONTEXTS joined by newlines, as lm-evaluation-harness shows it), or None."""
    if not include_context:
        return None
    if contexts is None:
        raise DataError(source, row, field, "missing value (needed for include_context=True)")
    if not isinstance(contexts, list) or not contexts:
        raise DataError(source, row, field, f"expected a non-empty list of texts, got {short(contexts)}")
    parts = [text_cell(source, row, f"{field}[{i}]", c) for i, c in enumerate(contexts)]
    return "\n".join(p for p in parts if p)


def _decision(source: str, row: Row, field: str, v: Any) -> int:
    s = text_cell(source, row, field, v)
    assert s is not None
    d = s.lower()
    if d not in PUBMEDQA_OPTIONS:
        raise DataError(source, row, field, f"{short(s)} is not yes, no or maybe")
    return PUBMEDQA_OPTIONS.index(d)


def pubmedqa_record(raw: Any, source: str, pmid: str, include_context: bool = True, gold: str | None = None,
                    gold_source: str | None = None) -> MCQRecord:
    """One `ori_pqal.json` entry (keyed by PMID) as a record."""
    raw = require_object(source, pmid, raw)
    q = text_cell(source, pmid, "QUESTION", raw.get("QUESTION"))
    assert q is not None
    answer = _decision(source, pmid, "final_decision", raw.get("final_decision"))
    if gold is not None and gold.strip().lower() != PUBMEDQA_OPTIONS[answer]:
        raise DataError(gold_source or source, pmid, None,
                        f"test label {gold!r} disagrees with final_decision {PUBMEDQA_OPTIONS[answer]!r} in {Path(source).name}")
    context = _pubmedqa_context(source, pmid, raw.get("CONTEXTS"), include_context, "CONTEXTS")
    return make_record(
        source, pmid, id=str(pmid), question=q, context=context, options=list(PUBMEDQA_OPTIONS), answer=answer,
        explanation=text_cell(source, pmid, "LONG_ANSWER", raw.get("LONG_ANSWER"), required=False), source="pubmedqa",
    )


def _pubmedqa_hub_record(raw: Any, source: str, row: Row, include_context: bool) -> MCQRecord:
    raw = require_object(source, row, raw)
    pubid = text_cell(source, row, "pubid", raw.get("pubid"), required=False)
    q = text_cell(source, row, "question", raw.get("question"))
    assert q is not None
    answer = _decision(source, row, "final_decision", raw.get("final_decision"))
    ctx = raw.get("context")
    contexts = ctx.get("contexts") if isinstance(ctx, dict) else ctx
    context = _pubmedqa_context(source, row, contexts, include_context, "context.contexts")
    return make_record(
        source, row, id=pubid or default_id(source, row), question=q, context=context, options=list(PUBMEDQA_OPTIONS),
        answer=answer, explanation=text_cell(source, row, "long_answer", raw.get("long_answer"), required=False),
        source="pubmedqa",
    )


def _load_test_ids(path: str) -> dict[str, str]:
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, None, None, f"not valid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(path, None, None, "not a PubMedQA test_ground_truth.json: expected a JSON object PMID -> yes/no/maybe")
    out: dict[str, str] = {}
    for pmid, label in data.items():
        if not isinstance(label, str) or label.strip().lower() not in PUBMEDQA_OPTIONS:
            raise DataError(path, str(pmid), None, f"label {short(label)} is not yes, no or maybe")
        out[str(pmid)] = label
    return out


def _pubmedqa_select(split: str | None, test_ids: dict[str, str] | None, path: str) -> Callable[[str], bool]:
    if split in (None, "all"):
        return lambda pmid: True
    if split not in ("test", "train"):
        raise DataError(path, None, "split", f"PubMedQA split must be test, train or all, got {split!r}")
    if test_ids is None:
        raise DataError(path, None, "split", f"split '{split}' needs the official test_ground_truth.json "
                        "(pass test_ids=PATH or put it beside the data file)")
    if split == "test":
        return lambda pmid: pmid in test_ids
    return lambda pmid: pmid not in test_ids


def load_pubmedqa(
    path: str,
    split: str | None = None,
    test_ids: str | None = None,
    include_context: bool = True,
    on_bad_rows: str = "error",
    hub_config: str | None = "pqa_labeled",
) -> tuple[list[MCQRecord], LoadReport]:
    """PubMedQA-L: `ori_pqal.json` (+ `test_ground_truth.json` for the split), or Hub `pqa_labeled` rows."""
    check_on_bad_rows(on_bad_rows)
    report = LoadReport(source=path)
    if test_ids is None and is_local(path):
        beside = Path(path).with_name("test_ground_truth.json")
        if beside.is_file() and beside != Path(path):
            test_ids = str(beside)
    gold = _load_test_ids(test_ids) if test_ids else None
    keep = _pubmedqa_select(split, gold, path)

    if not is_local(path):  # Hub: qiaojin/PubMedQA, config pqa_labeled, one 'train' split of 1,000
        raws = list(iter_hub(path, "train", hub_config))
        return _pubmedqa_rows(path, raws, keep, gold, test_ids, include_context, on_bad_rows, report), report

    text = read_text_file(path)
    data: Any = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines (Hub export), handled below
    if isinstance(data, dict):
        return _pqal_records(path, data, split, keep, gold, test_ids, include_context, on_bad_rows, report), report
    raws = read_rows(path, None)
    return _pubmedqa_rows(path, raws, keep, gold, test_ids, include_context, on_bad_rows, report), report


def _pqal_records(path: str, data: dict[str, Any], split: str | None, keep: Callable[[str], bool],
                  gold: dict[str, str] | None, test_ids: str | None, include_context: bool, on_bad_rows: str,
                  report: LoadReport) -> list[MCQRecord]:
    """The records of an `ori_pqal.json` object keyed by PMID."""
    if not data:
        raise DataError(path, None, None, "no rows")
    if not all(isinstance(v, dict) for v in data.values()) or ("QUESTION" in data and not isinstance(data["QUESTION"], dict)):
        raise DataError(path, None, None, "not a PubMedQA ori_pqal.json file: expected a JSON object keyed by PMID, "
                        "each value an object with QUESTION, CONTEXTS, final_decision")
    if gold is not None:
        missing = [p for p in gold if p not in data]
        if missing and split == "test":
            raise DataError(test_ids or path, missing[0], None,
                            f"{len(missing)} test PMIDs are not in {Path(path).name} (e.g. {missing[0]}); wrong file pair?")
    items = [(str(k), v) for k, v in data.items() if keep(str(k))]
    return collect(
        path, items,
        lambda raw, pmid: pubmedqa_record(raw, path, str(pmid), include_context,
                                          gold.get(str(pmid)) if gold else None, test_ids),
        on_bad_rows, report,
    )


def _pubmedqa_rows(path: str, raws: list[tuple[int, Any]], keep: Callable[[str], bool], gold: dict[str, str] | None,
                   test_ids: str | None, include_context: bool, on_bad_rows: str, report: LoadReport) -> list[MCQRecord]:
    """The records of Hub-schema rows (`pubid`, `question`, `context`, `final_decision`, `long_answer`)."""
    if raws:
        check_format(path, raws[0][0], raws[0][1], "PubMedQA", [{"final_decision", "pubid", "long_answer"}],
                     "an ori_pqal.json object keyed by PMID, or rows with pubid/question/context/final_decision")

    def pmid_of(raw: Any) -> str:
        return str(raw.get("pubid")) if isinstance(raw, dict) and raw.get("pubid") is not None else ""

    def convert(raw: Any, row: Row) -> MCQRecord:
        rec = _pubmedqa_hub_record(raw, path, row, include_context)
        g = gold.get(rec.id) if gold else None
        if g is not None and g.strip().lower() != rec.options[rec.answer]:
            raise DataError(test_ids or path, rec.id, None, f"test label {g!r} disagrees with final_decision {rec.options[rec.answer]!r}")
        return rec

    items = [(row, raw) for row, raw in raws if keep(pmid_of(raw))]
    return collect(path, items, convert, on_bad_rows, report)
