"""Reading rows: local files (JSONL, JSON, Parquet, CSV) and Hub datasets, the cells in them, and the
one loop that turns rows into records.

Every family's loader reads `(row, raw)` pairs here and hands them, with its row converter, to
`collect`: a bad row raises a `DataError` naming the file, row and field, or (with
`on_bad_rows="skip"`) is skipped and counted in the `LoadReport`. Nothing is dropped silently.
A missing, empty, undecodable or wrong-format file is a `DataError` that says so.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medqa.datasets.record import LETTERS, LoadReport, MCQRecord, Row
from medqa.errors import DataError

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv"}


# ----------------------------------------------------------------------------- files and the Hub


def is_local(path: str) -> bool:
    return Path(path).suffix.lower() in LOCAL_SUFFIXES or Path(path).exists()


def iter_raw_rows(path: str, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, raw dict). Row numbers are 1-based lines for JSONL/CSV, record indexes otherwise."""
    if is_local(path):
        yield from _iter_local(Path(path))
    else:
        yield from iter_hub(path, split or "train")


def read_rows(path: str, split: str | None) -> list[tuple[int, dict[str, Any]]]:
    """`iter_raw_rows` as a list, refusing a folder (for formats that need one file)."""
    if is_local(path) and Path(path).is_dir():
        raise DataError(path, None, None, "is a folder; this format needs a file")
    return list(iter_raw_rows(path, split))


def read_text_file(path: str | Path, allow_empty: bool = False) -> str:
    """A UTF-8 text file (BOM tolerated), or a DataError: not found, not a file, not UTF-8, empty."""
    p = Path(path)
    if not p.exists():
        raise DataError(str(path), None, None, "file not found")
    if not p.is_file():
        raise DataError(str(path), None, None, "not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not allow_empty and not text.strip():
        raise DataError(str(path), None, None, "the file is empty")
    return text


def _iter_local(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not p.is_file():
        raise DataError(str(p), None, None, "file not found")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(p)
        return
    text = read_text_file(p)
    if suffix == ".csv":
        yield from iter_csv_rows(str(p), text)
    elif suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(str(p), None, None, f"not valid JSON: {e.msg} (line {e.lineno})") from None
        for i, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(str(p), i, None, f"expected a JSON object, got {type(row).__name__}")
            yield i, row
    else:  # .jsonl, and .json written one object per line (the original MedMCQA release)
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(p), lineno, None, f"not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(str(p), lineno, None, f"expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def iter_csv_rows(source: str, text: str, delimiter: str = ",") -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV with a header line (row numbers are file lines; line 1 is the header); blank cells are None."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(source, None, None, "CSV has no header row")
    for i, row in enumerate(reader, start=2):
        if None in row:
            raise DataError(source, i, None, "more values than header columns")
        yield i, {k: (None if v == "" else v) for k, v in row.items()}


def _iter_parquet(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(str(p), None, None, f"not a readable Parquet file ({type(e).__name__})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def iter_hub(dataset_id: str, split: str, config: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Hub dataset split (of one config, e.g. an MMLU subject); offline is a DataError, not a traceback."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, config, split=split) if config else datasets.load_dataset(dataset_id, split=split)
    except Exception as e:
        name = f"{dataset_id}:{config}" if config else dataset_id
        first = (str(e).splitlines() or [""])[0][:200]
        raise DataError(
            name, None, None,
            f"cannot load Hub dataset split '{split}' ({type(e).__name__}: {first}); offline? pass a local file path instead",
        ) from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


# ----------------------------------------------------------------------------- rows to records


def check_on_bad_rows(value: str) -> None:
    if value not in ("error", "skip"):
        raise DataError("data", None, "on_bad_rows", f"must be 'error' or 'skip', got {value!r}")


def collect(
    source: str,
    items: Iterable[tuple[Row, Any]],
    convert: Callable[[Any, Row], MCQRecord],
    on_bad_rows: str,
    report: LoadReport,
) -> list[MCQRecord]:
    """Convert rows, raising or skipping-and-counting bad ones; no rows, or no good row, is an error."""
    records: list[MCQRecord] = []
    for row, raw in items:
        report.rows += 1
        try:
            records.append(convert(raw, row))
        except DataError as e:
            if on_bad_rows == "skip":
                report.skipped.append(str(e))
                continue
            raise
    report.kept = len(records)
    if report.rows == 0:
        raise DataError(source, None, None, "no rows")
    if not records:
        raise DataError(source, None, None, f"every row was bad ({len(report.skipped)} skipped)")
    return records


def check_format(source: str, row: Row, raw: Any, fmt: str, signatures: list[set[str]], expected: str) -> None:
    """Name a wrong-format file as such (from its first row) instead of failing on every row's first missing field."""
    a = "an" if fmt.startswith(("MMLU", "A", "E", "I", "O", "U")) else "a"
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"not {a} {fmt} file: expected a JSON object per row, got {type(raw).__name__}")
    keys = set(raw)
    if not any(keys & sig for sig in signatures):
        found = ", ".join(sorted(map(str, keys))[:12]) or "none"
        raise DataError(source, row, None, f"not {a} {fmt} file: expected {expected}; found keys: {found}")


def require_object(source: str, row: Row, raw: Any) -> dict[str, Any]:
    """A row must be a JSON object (a dict)."""
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- cells


def short(v: Any, limit: int = 60) -> str:
    """`repr(v)`, cut to `limit` characters for an error message."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def text_cell(source: str, row: Row, field: str, v: Any, required: bool = True) -> str | None:
    """A text cell: str, or a number written as text; None / NaN / blank is missing."""
    if v is None or (isinstance(v, float) and v != v):  # None or NaN
        if required:
            raise DataError(source, row, field, "missing value")
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DataError(source, row, field, f"expected text, got {type(v).__name__}")
    s = str(v).strip()
    if required and not s:
        raise DataError(source, row, field, "empty text")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape in JSON
        raise DataError(source, row, field, "text is not valid Unicode (a lone surrogate)") from None
    return s or None


def int_cell(source: str, row: Row, field: str, v: Any) -> int:
    """An integer cell: int, a whole float, or digits as text; None / NaN is missing."""
    if v is None or (isinstance(v, float) and v != v):
        raise DataError(source, row, field, "missing value")
    if isinstance(v, bool):
        raise DataError(source, row, field, f"expected an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        v = int(v)
    if not isinstance(v, int):
        raise DataError(source, row, field, f"expected an integer, got {short(v)}")
    return v


def letter_cell(source: str, row: Row, field: str, v: Any, n: int) -> int:
    """An option letter A.. (case-insensitive) among `n` options, as a 0-based index."""
    s = text_cell(source, row, field, v)
    assert s is not None
    letter = s.upper()
    if len(letter) != 1 or letter not in LETTERS[:n]:
        raise DataError(source, row, field, f"{short(s)} is not an option letter A-{LETTERS[n - 1]}")
    return LETTERS.index(letter)
