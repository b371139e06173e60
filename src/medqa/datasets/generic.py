"""Any CSV / JSONL / JSON / Parquet file (or Hub id) through a column mapping (families `csv`, `jsonl`).

The mapping names the question column, the option columns (or one column holding a list), the
answer column and its format (`letter` / `index0` / `index1` / `text`), and optional explanation /
subject / id / topic columns. Trailing empty option columns are dropped (4-option rows in a
5-column file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqa.datasets.readers import (
    check_on_bad_rows, collect, int_cell, is_local, iter_csv_rows, letter_cell, read_rows, read_text_file,
    require_object, short, text_cell,
)
from medqa.datasets.record import LETTERS, LoadReport, MCQRecord, Row, default_id, make_record
from medqa.errors import DataError
from medqa.hygiene import text_key

ANSWER_FORMATS = ("letter", "index0", "index1", "text")


def _option_cells(source: str, row: Row, raw: dict[str, Any], options: list[str] | str) -> list[str]:
    """The option texts: from the option columns, or from one column holding a list; trailing empties dropped."""
    if isinstance(options, str):  # one column holding a list of option texts
        v = raw.get(options)
        if v is None:
            raise DataError(source, row, options, "missing value")
        if not isinstance(v, list):
            raise DataError(source, row, options, f"expected a list of option texts, got {type(v).__name__}")
        cells, names = list(v), [f"{options}[{i}]" for i in range(len(v))]
    else:
        cells, names = [raw.get(c) for c in options], list(options)
    while cells and (cells[-1] is None or (isinstance(cells[-1], str) and not cells[-1].strip())):
        cells.pop()  # trailing empty options: a 4-option row in a 5-option file
        names.pop()
    if not 2 <= len(cells) <= 5:
        raise DataError(source, row, options if isinstance(options, str) else ",".join(options),
                        f"expected 2 to 5 non-empty options, got {len(cells)}")
    return [text_cell(source, row, n, c) for n, c in zip(names, cells)]  # type: ignore[misc]


def _answer_index(source: str, row: Row, answer: str, v: Any, answer_format: str, opts: list[str]) -> int:
    """The 0-based answer from its cell, read as `answer_format`."""
    n = len(opts)
    if answer_format == "letter":
        return letter_cell(source, row, answer, v, n)
    if answer_format in ("index0", "index1"):
        base = 0 if answer_format == "index0" else 1
        ans = int_cell(source, row, answer, v) - base
        if not 0 <= ans < n:
            raise DataError(source, row, answer, f"answer {ans + base} out of range for {base}-based index with {n} options")
        return ans
    if answer_format == "text":
        t = text_cell(source, row, answer, v)
        matches = [i for i, o in enumerate(opts) if text_key(o) == text_key(t or "")]
        if not matches:
            raise DataError(source, row, answer, f"text {short(t)} matches no option")
        if len(matches) > 1:
            raise DataError(source, row, answer, f"text {short(t)} matches several options ({', '.join(LETTERS[i] for i in matches)})")
        return matches[0]
    raise DataError(source, None, "answer_format", f"must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")


def generic_record(
    raw: Any, source: str, row: Row, *, question: str, options: list[str] | str, answer: str,
    answer_format: str = "letter", explanation: str | None = None, subject: str | None = None,
    id: str | None = None, topic: str | None = None, source_name: str = "generic",
) -> MCQRecord:
    """One row through a column mapping."""
    raw = require_object(source, row, raw)

    def optional(column: str | None) -> str | None:
        return text_cell(source, row, column, raw.get(column), required=False) if column else None

    q = text_cell(source, row, question, raw.get(question))
    opts = _option_cells(source, row, raw, options)
    ans = _answer_index(source, row, answer, raw.get(answer), answer_format, opts)
    return make_record(
        source, row, id=optional(id) or default_id(source, row), question=q, options=opts, answer=ans,
        explanation=optional(explanation), subject=optional(subject), topic=optional(topic), source=source_name,
    )


def _check_columns(path: str, raws: list[tuple[int, dict[str, Any]]], mapped: list[str]) -> None:
    """The mapped columns must exist in the first row: a wrong mapping is one error, not one per row."""
    first = raws[0][1]
    if not isinstance(first, dict):
        raise DataError(path, raws[0][0], None, f"expected a JSON object per row, got {type(first).__name__}")
    absent = [c for c in mapped if c not in first]
    if absent:
        cols = ", ".join(map(str, list(first)[:20]))
        raise DataError(path, None, absent[0], f"no such column in this file (columns: {cols}); check the column mapping")


def load_generic(
    path: str,
    question: str = "question",
    options: list[str] | str = ("A", "B", "C", "D"),  # type: ignore[assignment]
    answer: str = "answer",
    answer_format: str = "letter",
    explanation: str | None = None,
    subject: str | None = None,
    id: str | None = None,
    topic: str | None = None,
    split: str | None = None,
    on_bad_rows: str = "error",
    file_format: str | None = None,
    delimiter: str = ",",
    source_name: str = "generic",
) -> tuple[list[MCQRecord], LoadReport]:
    """Any CSV / JSONL / JSON / Parquet file (or Hub id) through a column mapping.

    `options` is a list of column names, a comma-separated string of them, or one column that holds a list.
    `file_format="csv"` reads the file as CSV whatever its suffix (`delimiter` for TSV).
    """
    check_on_bad_rows(on_bad_rows)
    if answer_format not in ANSWER_FORMATS:
        raise DataError(path, None, "answer_format", f"must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    if isinstance(options, str) and "," in options:
        options = [c.strip() for c in options.split(",") if c.strip()]
    if isinstance(options, tuple):
        options = list(options)
    if not isinstance(options, (str, list)) or (isinstance(options, list) and not 2 <= len(options) <= 5):
        raise DataError(path, None, "options", "give 2 to 5 option columns, or one column holding a list")
    report = LoadReport(source=path)
    suffix = Path(path).suffix.lower()
    is_csv = is_local(path) and (file_format == "csv" or suffix in (".csv", ".tsv"))
    if is_csv:
        sep = "\t" if suffix == ".tsv" and delimiter == "," else delimiter
        raws = list(iter_csv_rows(path, read_text_file(path), sep))
    else:
        raws = read_rows(path, split)
    if raws:
        mapped = [question, answer] + ([options] if isinstance(options, str) else options[:2])
        if is_csv:  # a CSV header names every column; in JSON rows optional keys may be absent
            mapped += [c for c in (explanation, subject, id, topic) if c]
        _check_columns(path, raws, mapped)
    mapping = dict(question=question, options=options, answer=answer, answer_format=answer_format, explanation=explanation,
                   subject=subject, id=id, topic=topic, source_name=source_name)
    records = collect(path, raws, lambda raw, row: generic_record(raw, path, row, **mapping), on_bad_rows, report)  # type: ignore[arg-type]
    return records, report
