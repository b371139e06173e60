"""MedQA-USMLE: the original release, JSON lines with `question`, `options` (a dict of letters A-D or
A-E), `answer` (the text), `answer_idx` (the letter) and `meta_info` (step1, step2&3: kept as
`subject`), for the 4- and 5-option files alike.

When `answer` is present it must equal `options[answer_idx]` (after Unicode/whitespace
normalisation, ignoring case): a mismatch is an error, since it means the file was edited or
mis-joined. The Hub copy `GBaker/MedQA-USMLE-4-options` has the same schema;
`GBaker/MedQA-USMLE-4-options-hf` uses `id`, `sent1` (+ optional `sent2`), `ending0..3` and a
0-based `label`. Both are detected per row. `options` given as bigbio's
`[{"key": "A", "value": ...}]` list is accepted too.
"""

from __future__ import annotations

import json
from typing import Any

from medqa.datasets.readers import (
    check_format, check_on_bad_rows, collect, int_cell, letter_cell, read_rows, require_object, short, text_cell,
)
from medqa.datasets.record import LETTERS, LoadReport, MCQRecord, Row, default_id, make_record
from medqa.errors import DataError
from medqa.hygiene import text_key


def _normalise_options(source: str, row: Row, v: Any) -> Any:
    """A dict written into a CSV cell, or bigbio's key/value list, as a dict."""
    if isinstance(v, str) and v.strip().startswith(("{", "[")):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(source, row, "options", "text is not a JSON object of letters") from None
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # bigbio: [{"key": "A", "value": ...}]
        try:
            v = {x["key"]: x["value"] for x in v}
        except (KeyError, TypeError):
            raise DataError(source, row, "options", "list entries need 'key' and 'value'") from None
    return v


def _medqa_options(source: str, row: Row, v: Any) -> list[str]:
    v = _normalise_options(source, row, v)
    if v is None:
        raise DataError(source, row, "options", "missing value")
    if isinstance(v, list):
        if len(v) not in (4, 5):
            raise DataError(source, row, "options", f"expected 4 or 5 options, got {len(v)}")
        return [text_cell(source, row, f"options.{LETTERS[i]}", x) for i, x in enumerate(v)]  # type: ignore[misc]
    if not isinstance(v, dict):
        raise DataError(source, row, "options", f"expected a dict of letters A-D or A-E, got {type(v).__name__}")
    by_letter: dict[str, Any] = {}
    for k, x in v.items():
        key = str(k).strip().upper()
        if key in by_letter:
            raise DataError(source, row, "options", f"letter {key} given twice")
        by_letter[key] = x
    n = len(by_letter)
    if n not in (4, 5) or set(by_letter) != set(LETTERS[:n]):
        raise DataError(source, row, "options", f"expected option letters A-D or A-E, got {sorted(map(str, v))}")
    return [text_cell(source, row, f"options.{L}", by_letter[L]) for L in LETTERS[:n]]  # type: ignore[misc]


def medqa_usmle_record(raw: Any, source: str, row: Row) -> MCQRecord:
    """One MedQA-USMLE row (original release / GBaker, or the `-hf` form) as a record."""
    raw = require_object(source, row, raw)
    if "sent1" in raw or "ending0" in raw:
        return _medqa_hf_record(raw, source, row)
    question = text_cell(source, row, "question", raw.get("question"))
    options = _medqa_options(source, row, raw.get("options"))
    answer = letter_cell(source, row, "answer_idx", raw.get("answer_idx"), len(options))
    answer_text = text_cell(source, row, "answer", raw.get("answer"), required=False)
    if answer_text is not None and text_key(answer_text) != text_key(options[answer]):
        raise DataError(
            source, row, "answer",
            f"text {short(answer_text)} does not match option {LETTERS[answer]} {short(options[answer])} given by answer_idx",
        )
    rid = text_cell(source, row, "id", raw.get("id"), required=False)
    return make_record(
        source, row,
        id=rid or default_id(source, row),
        question=question,
        options=options,
        answer=answer,
        subject=text_cell(source, row, "meta_info", raw.get("meta_info"), required=False),
        source="medqa-usmle",
    )


def _medqa_hf_record(raw: dict[str, Any], source: str, row: Row) -> MCQRecord:
    question = text_cell(source, row, "sent1", raw.get("sent1"))
    sent2 = text_cell(source, row, "sent2", raw.get("sent2"), required=False)
    if sent2:
        question = f"{question} {sent2}"
    keys = [f"ending{i}" for i in range(5) if f"ending{i}" in raw and (i < 4 or raw.get(f"ending{i}") not in (None, ""))]
    if len(keys) < 4:
        missing = next(f"ending{i}" for i in range(4) if f"ending{i}" not in raw)
        raise DataError(source, row, missing, "missing value")
    options = [text_cell(source, row, k, raw.get(k)) for k in keys]
    label = int_cell(source, row, "label", raw.get("label"))
    if not 0 <= label < len(options):
        raise DataError(source, row, "label", f"answer {label} out of range for 0-based label with {len(options)} options")
    rid = text_cell(source, row, "id", raw.get("id"), required=False)
    return make_record(source, row, id=rid or default_id(source, row), question=question, options=options,
                       answer=label, source="medqa-usmle")


def load_medqa_usmle(path: str, split: str | None = None, on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    """MedQA-USMLE JSONL (4- or 5-option), the GBaker Hub copy or its `-hf` form."""
    check_on_bad_rows(on_bad_rows)
    report = LoadReport(source=path)
    raws = read_rows(path, split)
    if raws:
        check_format(path, raws[0][0], raws[0][1], "MedQA-USMLE", [{"options", "answer_idx"}, {"sent1", "ending0", "label"}],
                     "question/options/answer_idx (or sent1/ending0..3/label)")
    return collect(path, raws, lambda raw, row: medqa_usmle_record(raw, path, row), on_bad_rows, report), report
