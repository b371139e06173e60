"""MedMCQA: the Hub schema (`question`, `opa`..`opd`, `cop`, `exp`, `subject_name`, `topic_name`,
`choice_type`) in any file format `readers` reads, or the Hub dataset itself.

`cop` is 0-based on the Hub and 1-based in the original release; `cop_base="auto"` decides from
the values present, and only when that is unambiguous.
"""

from __future__ import annotations

from typing import Any

from medqa.datasets.readers import collect, int_cell, iter_raw_rows, text_cell
from medqa.datasets.record import LoadReport, MCQRecord, default_id, make_record
from medqa.errors import DataError

MEDMCQA_OPTION_KEYS = ("opa", "opb", "opc", "opd")


def detect_cop_base(cops: list[int], source: str) -> int:
    """0-based (Hub) or 1-based (original release) `cop`, decided only when unambiguous."""
    has0, has4 = 0 in cops, 4 in cops
    if has0 and has4:
        raise DataError(source, None, "cop", "values 0 and 4 both occur: neither 0-based nor 1-based; fix the file")
    if has0:
        return 0
    if has4:
        return 1
    raise DataError(
        source, None, "cop",
        "cannot tell whether 'cop' is 0-based (Hub) or 1-based (original release) from these rows; "
        "set data.cop_base to 0 or 1",
    )


def medmcqa_record(raw: dict[str, Any], source: str, row: int, cop_base: int) -> MCQRecord:
    """Turn one MedMCQA row (Hub schema) into a record, or raise a DataError naming the field."""

    def cell(key: str, required: bool = False) -> str | None:
        return text_cell(source, row, key, raw.get(key), required)

    question = cell("question", required=True)
    options = [cell(k, required=True) for k in MEDMCQA_OPTION_KEYS]
    cop = int_cell(source, row, "cop", raw.get("cop")) - cop_base
    if not 0 <= cop < len(options):
        raise DataError(source, row, "cop", f"answer {cop + cop_base} out of range for {cop_base}-based cop with 4 options")
    rid = raw.get("id")
    return make_record(
        source, row,
        id=str(rid) if rid not in (None, "") else default_id(source, row),
        question=question,
        options=options,
        answer=cop,
        explanation=cell("exp"),
        subject=cell("subject_name"),
        topic=cell("topic_name"),
        choice_type=cell("choice_type"),
        source="medmcqa",
    )


def _cop_base(raws: list[tuple[int, dict[str, Any]]], source: str, cop_base: str | int) -> int:
    if str(cop_base) != "auto":
        return int(cop_base)
    cops = []
    for row, raw in raws:
        try:
            cops.append(int_cell(source, row, "cop", raw.get("cop")))
        except DataError:
            pass  # reported per row when the row is converted
    return detect_cop_base(cops, source)


def load_medmcqa(
    path: str,
    split: str | None = None,
    on_bad_rows: str = "error",
    cop_base: str | int = "auto",
    source_name: str = "medmcqa",
) -> tuple[list[MCQRecord], LoadReport]:
    """MedMCQA from a local file or a Hub id; `source_name` relabels the records (the demo set)."""
    report = LoadReport(source=path)
    raws = list(iter_raw_rows(path, split))
    if not raws:
        raise DataError(path, None, None, "no rows")
    base = report.cop_base = _cop_base(raws, path, cop_base)

    def convert(raw: dict[str, Any], row: int) -> MCQRecord:
        rec = medmcqa_record(raw, path, row, base)
        return rec if source_name == "medmcqa" else rec.model_copy(update={"source": source_name})

    return collect(path, raws, convert, on_bad_rows, report), report  # type: ignore[arg-type]
