"""MMLU, by default its six medical subsets (anatomy, clinical_knowledge, college_biology,
college_medicine, medical_genetics, professional_medicine).

Read from the Hub schema (`question`, `subject`, `choices`, integer `answer`; local
JSONL/JSON/Parquet or a Hub id loaded per subject config) or from the original header-less CSVs
(question, A, B, C, D, answer letter) named `<subject>_<split>.csv`, as one file or a folder
searched recursively. `subset` is one subject (or several, comma-separated) or `medical` (all
six); a folder or Hub id defaults to `medical`, a single file to whatever it holds.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from medqa.datasets.readers import (
    check_format, check_on_bad_rows, collect, int_cell, is_local, iter_hub, letter_cell, read_rows, read_text_file,
    require_object, short, text_cell,
)
from medqa.datasets.record import LETTERS, LoadReport, MCQRecord, Row, default_id, make_record
from medqa.errors import DataError

MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)

_MMLU_FILE = re.compile(r"^(?P<subject>.+?)_(?P<split>test|dev|val|validation|auxiliary_train)$")
_MMLU_SPLIT_FILE = {"test": "test", "dev": "dev", "val": "val", "validation": "val"}


def _mmlu_subjects(subset: str | None, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if subset is None:
        return default
    if subset == "medical":
        return MMLU_MEDICAL
    names = tuple(s.strip() for s in subset.split(",") if s.strip())
    for s in names:
        if not re.fullmatch(r"[a-z_]+", s):
            raise DataError("mmlu", None, "subset", f"{s!r} is not an MMLU subject name (e.g. anatomy) or 'medical'")
    return names


def mmlu_record(raw: Any, source: str, row: Row, subject: str | None = None) -> MCQRecord:
    """One Hub-schema MMLU row (`question`, `subject`, `choices`, integer `answer`) as a record."""
    raw = require_object(source, row, raw)
    question = text_cell(source, row, "question", raw.get("question"))
    choices = raw.get("choices")
    if choices is None:
        raise DataError(source, row, "choices", "missing value")
    if not isinstance(choices, list) or not 2 <= len(choices) <= 5:
        raise DataError(source, row, "choices", f"expected a list of 2 to 5 texts, got {short(choices)}")
    options = [text_cell(source, row, f"choices[{i}]", c) for i, c in enumerate(choices)]
    v = raw.get("answer")
    if isinstance(v, str) and v.strip().upper() in LETTERS:
        answer = letter_cell(source, row, "answer", v, len(options))
    else:
        answer = int_cell(source, row, "answer", v)
        if not 0 <= answer < len(options):
            raise DataError(source, row, "answer", f"answer {answer} out of range for 0-based answer with {len(options)} options")
    subj = text_cell(source, row, "subject", raw.get("subject"), required=False) or subject
    return make_record(source, row, id=default_id(source, row), question=question, options=options, answer=answer,
                       subject=subj, source="mmlu")


def mmlu_csv_record(cells: list[str], source: str, row: Row, subject: str | None) -> MCQRecord:
    """One row of an original header-less MMLU CSV: question, A, B, C, D, answer letter."""
    if len(cells) != 6:
        raise DataError(source, row, None, f"expected 6 columns (question, A, B, C, D, answer), got {len(cells)}")
    question = text_cell(source, row, "question", cells[0])
    options = [text_cell(source, row, L, c) for L, c in zip("ABCD", cells[1:5])]
    answer = letter_cell(source, row, "answer", cells[5], 4)
    return make_record(source, row, id=default_id(source, row), question=question, options=options, answer=answer,
                       subject=subject, source="mmlu")


def _mmlu_csv_rows(path: str) -> list[tuple[int, list[str]]]:
    text = read_text_file(path)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    out = [(i, r) for i, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if out and [c.strip().lower() for c in out[0][1]] == ["question", "a", "b", "c", "d", "answer"]:
        out = out[1:]
    return out


def _subject_of_file(path: Path) -> tuple[str, str | None]:
    m = _MMLU_FILE.match(path.stem)
    return (m["subject"], m["split"]) if m else (path.stem, None)


def _looks_like_header_csv(path: str) -> bool:
    """A CSV whose first row names Hub-schema columns (question, choices, answer) is not the header-less original."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    cols = {c.strip().lower() for c in first}
    return "choices" in cols and "question" in cols


def _load_mmlu_csv(path: str, subject: str | None, on_bad_rows: str) -> tuple[list[MCQRecord], LoadReport]:
    report = LoadReport(source=path)
    rows = _mmlu_csv_rows(path)
    return collect(path, rows, lambda cells, row: mmlu_csv_record(cells, path, row, subject), on_bad_rows, report), report


def load_mmlu(path: str, split: str | None = None, subset: str | None = None, on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    """MMLU (medical subsets by default for folders and Hub ids) from CSVs, Hub-schema files or the Hub."""
    check_on_bad_rows(on_bad_rows)
    if not is_local(path):  # Hub id, e.g. cais/mmlu: one config per subject
        return _load_mmlu_hub(path, split, subset, on_bad_rows)
    p = Path(path)
    if p.is_dir():
        return _load_mmlu_folder(path, split, subset, on_bad_rows)
    if p.suffix.lower() == ".csv" and not _looks_like_header_csv(path):
        subject, _ = _subject_of_file(p)
        wanted = _mmlu_subjects(subset, None)
        if wanted is not None and subject not in wanted:
            raise DataError(path, None, "subset", f"file holds MMLU subject '{subject}' (from its name), not {subset!r}")
        return _load_mmlu_csv(path, subject, on_bad_rows)
    return _load_mmlu_rows_file(path, split, subset, on_bad_rows)


def _load_mmlu_hub(path: str, split: str | None, subset: str | None, on_bad_rows: str) -> tuple[list[MCQRecord], LoadReport]:
    report = LoadReport(source=path)
    subjects = _mmlu_subjects(subset, MMLU_MEDICAL) or MMLU_MEDICAL
    items: list[tuple[Row, Any]] = []
    for s in subjects:
        items += [(f"{s}:{i}", raw) for i, raw in iter_hub(path, split or "test", s)]
    return collect(path, items, lambda raw, row: mmlu_record(raw, path, row, str(row).split(":")[0]), on_bad_rows, report), report


def _load_mmlu_folder(path: str, split: str | None, subset: str | None, on_bad_rows: str) -> tuple[list[MCQRecord], LoadReport]:
    report = LoadReport(source=path)
    subjects = _mmlu_subjects(subset, MMLU_MEDICAL) or MMLU_MEDICAL
    want = _MMLU_SPLIT_FILE.get(split or "test", split or "test")
    files = []
    for s in subjects:
        found = sorted(Path(path).rglob(f"{s}_{want}.csv"))
        if not found:
            raise DataError(path, None, None, f"no {s}_{want}.csv under this folder (MMLU CSV layout data/{want}/<subject>_{want}.csv)")
        files.append(found[0])
    records: list[MCQRecord] = []
    for f in files:
        recs, rep = _load_mmlu_csv(str(f), _subject_of_file(f)[0], on_bad_rows)
        records += recs
        report.rows += rep.rows
        report.skipped += rep.skipped
    report.kept = len(records)
    return records, report


def _load_mmlu_rows_file(path: str, split: str | None, subset: str | None, on_bad_rows: str) -> tuple[list[MCQRecord], LoadReport]:
    """A Hub-schema file (JSONL / JSON / Parquet / CSV with a header), filtered to `subset`."""
    report = LoadReport(source=path)
    p = Path(path)
    raws = read_rows(path, split)
    if raws:
        check_format(path, raws[0][0], raws[0][1], "MMLU", [{"choices"}], "question/subject/choices/answer (Hub schema)")
    wanted = _mmlu_subjects(subset, None)
    if wanted is not None:
        raws = [(r, raw) for r, raw in raws if isinstance(raw, dict) and str(raw.get("subject") or _subject_of_file(p)[0]) in wanted]
        if not raws:
            raise DataError(path, None, "subject", f"no rows of subset {subset!r}")
    default_subject = _subject_of_file(p)[0] if _MMLU_FILE.match(p.stem) else None
    return collect(path, raws, lambda raw, row: mmlu_record(raw, path, row, default_subject), on_bad_rows, report), report
