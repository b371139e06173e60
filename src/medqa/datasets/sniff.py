"""Which dataset family a local file looks like: for an error that names the likely right `--dataset`.

Only a hint added to a `DataError` that already happened (a PubMedQA `ori_pqal.json` given as medqa-usmle
said "row 1: not valid JSON"; now it also says "the file looks like PubMedQA data: try --dataset pubmedqa").
It never changes how a file is read.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

_MAX_BYTES = 64 << 20  # larger files are not sniffed (the hint is not worth reading gigabytes)


def _family_of_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if {"opa", "opb", "cop"} <= keys or {"opa", "opb", "question"} <= keys:
        return "medmcqa"
    if {"QUESTION", "final_decision"} <= keys or {"pubid", "final_decision"} <= keys:
        return "pubmedqa"
    if "question" in keys and isinstance(row.get("options"), dict) and ({"answer_idx", "answer"} & keys):
        return "medqa-usmle"
    if {"question", "choices", "answer"} <= keys and "subject" in keys:
        return "mmlu"
    return None


def sniff_family(path: str) -> str | None:
    """The family a local file looks like (medmcqa, medqa-usmle, pubmedqa, mmlu), or None when unsure."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > _MAX_BYTES or p.suffix.lower() == ".parquet":
            return None
        text = p.read_text(encoding="utf-8-sig", errors="replace").lstrip()
    except OSError:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):  # ori_pqal.json: {pmid: {QUESTION, CONTEXTS, final_decision, ...}}
            first = next(iter(data.values()), None)
            return _family_of_row(first) or _family_of_row(data)
    if text.startswith("["):
        try:
            data = json.loads(text)
            return _family_of_row(data[0]) if isinstance(data, list) and data else None
        except json.JSONDecodeError:
            return None
    first_line = text.splitlines()[0] if text else ""
    if first_line.startswith("{"):
        try:
            return _family_of_row(json.loads(first_line))
        except json.JSONDecodeError:
            return None
    try:  # MMLU's CSVs: no header, question, four options, a letter
        row = next(csv.reader(io.StringIO(first_line)))
    except (StopIteration, csv.Error):
        return None
    if len(row) == 6 and row[5].strip() in ("A", "B", "C", "D"):
        return "mmlu"
    return None
