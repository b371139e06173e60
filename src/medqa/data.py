"""Data: one typed multiple-choice record, the MedMCQA loader, the bundled demo set, seeded splits.

Every loader reads rows from a local file (JSONL, JSON, Parquet, CSV) or a Hub dataset id, turns
each into an `MCQRecord`, and either raises a `DataError` naming the file, row and field, or (with
`on_bad_rows="skip"`) skips the row and counts it in a `LoadReport`. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medqa.errors import DataError

LETTERS = "ABCDE"
MEDMCQA_OPTION_KEYS = ("opa", "opb", "opc", "opd")
LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv"}


class MCQRecord(BaseModel):
    """One multiple-choice question: 2 to 5 options and the 0-based index of the correct one."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2, max_length=5)
    answer: int = Field(ge=0)
    context: str | None = None  # a passage the question is about (PubMedQA's abstract)
    explanation: str | None = None
    subject: str | None = None
    topic: str | None = None
    choice_type: str | None = None
    source: str = "unknown"

    @field_validator("options")
    @classmethod
    def _non_empty_options(cls, v: list[str]) -> list[str]:
        for i, o in enumerate(v):
            if not o.strip():
                raise ValueError(f"option {LETTERS[i]} is empty")
        return v

    def model_post_init(self, __context: Any) -> None:
        if self.answer >= len(self.options):
            raise ValueError(f"answer {self.answer} out of range for {len(self.options)} options")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass
class LoadReport:
    """What a load did: rows read, records kept, rows skipped and why."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    cop_base: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "kept": self.kept,
            "skipped": len(self.skipped),
            "skipped_reasons": self.skipped[:50],
            "cop_base": self.cop_base,
        }


# ----------------------------------------------------------------------------- raw row readers


def is_local(path: str) -> bool:
    return Path(path).suffix.lower() in LOCAL_SUFFIXES or Path(path).exists()


def iter_raw_rows(path: str, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, raw dict). Row numbers are 1-based lines for JSONL/CSV, record indexes otherwise."""
    if is_local(path):
        yield from _iter_local(Path(path))
    else:
        yield from _iter_hub(path, split or "train")


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
        yield from _iter_csv(p, text)
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


def _iter_csv(p: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise DataError(str(p), None, None, "CSV has no header row")
    for i, row in enumerate(reader, start=2):  # line 1 is the header
        if None in row:
            raise DataError(str(p), i, None, "more values than header columns")
        yield i, {k: (None if v == "" else v) for k, v in row.items()}


def _iter_parquet(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(str(p), None, None, f"not a readable Parquet file ({type(e).__name__})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def _iter_hub(dataset_id: str, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:
        raise DataError(
            dataset_id, None, None,
            f"cannot load Hub dataset split '{split}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "offline? pass a local file path instead",
        ) from None
    for i, row in enumerate(ds, start=1):
        yield i, row


# ----------------------------------------------------------------------------- MedMCQA


def text_cell(source: str, row: int | str | None, field: str, v: Any, required: bool = True) -> str | None:
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


def _text(source: str, row: int, raw: dict[str, Any], key: str, required: bool) -> str | None:
    return text_cell(source, row, key, raw.get(key), required)


def _cop_value(source: str, row: int, raw: dict[str, Any]) -> int:
    v = raw.get("cop")
    if v is None:
        raise DataError(source, row, "cop", "missing value")
    if isinstance(v, bool):
        raise DataError(source, row, "cop", f"expected an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v.strip())
    if not isinstance(v, int):
        raise DataError(source, row, "cop", f"expected an integer, got {v!r}")
    return v


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
    question = _text(source, row, raw, "question", required=True)
    options = [_text(source, row, raw, k, required=True) for k in MEDMCQA_OPTION_KEYS]
    cop = _cop_value(source, row, raw) - cop_base
    if not 0 <= cop < len(options):
        raise DataError(source, row, "cop", f"answer {cop + cop_base} out of range for {cop_base}-based cop with 4 options")
    rid = raw.get("id")
    return MCQRecord(
        id=str(rid) if rid not in (None, "") else f"{Path(source).name}:{row}",
        question=question,
        options=options,  # type: ignore[arg-type]
        answer=cop,
        explanation=_text(source, row, raw, "exp", required=False),
        subject=_text(source, row, raw, "subject_name", required=False),
        topic=_text(source, row, raw, "topic_name", required=False),
        choice_type=_text(source, row, raw, "choice_type", required=False),
        source="medmcqa",
    )


def load_medmcqa(
    path: str,
    split: str | None = None,
    on_bad_rows: str = "error",
    cop_base: str | int = "auto",
    source_name: str = "medmcqa",
) -> tuple[list[MCQRecord], LoadReport]:
    report = LoadReport(source=path)
    raws = list(iter_raw_rows(path, split))
    report.rows = len(raws)
    if not raws:
        raise DataError(path, None, None, "no rows")
    base: int
    if str(cop_base) == "auto":
        cops = []
        for row, raw in raws:
            try:
                cops.append(_cop_value(path, row, raw))
            except DataError:
                pass  # reported per row below
        base = detect_cop_base(cops, path)
    else:
        base = int(cop_base)
    report.cop_base = base
    records: list[MCQRecord] = []
    for row, raw in raws:
        try:
            rec = medmcqa_record(raw, path, row, base)
        except DataError as e:
            if on_bad_rows == "skip":
                report.skipped.append(str(e))
                continue
            raise
        if source_name != "medmcqa":
            rec = rec.model_copy(update={"source": source_name})
        records.append(rec)
    report.kept = len(records)
    if not records:
        raise DataError(path, None, None, f"every row was bad ({len(report.skipped)} skipped)")
    return records, report


def demo_path() -> Path:
    """The bundled demo set: original questions written for MedQA. A demo, not a benchmark."""
    return Path(str(resources.files("medqa") / "resources" / "demo_questions.jsonl"))


def load_demo() -> list[MCQRecord]:
    records, _ = load_medmcqa(str(demo_path()), cop_base=0, source_name="medqa-demo")
    return records


# ----------------------------------------------------------------------------- selection


def hash_order(records: list[MCQRecord], seed: int) -> list[MCQRecord]:
    """A seeded, order-independent permutation: sort by sha256(seed:id)."""
    return sorted(records, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())


def split_train_heldout(records: list[MCQRecord], train_size: int, seed: int) -> tuple[list[MCQRecord], list[MCQRecord]]:
    """Deterministic disjoint split by a hash of `id`: `train_size` rows for training, the rest held out."""
    ids = Counter(r.id for r in records)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise DataError("split", None, "id", f"{len(dup)} duplicate ids (e.g. {dup[0]!r}); a hash split needs unique ids")
    if train_size >= len(records):
        raise DataError("split", None, None, f"train_size {train_size} leaves nothing held out of {len(records)} rows")
    ordered = hash_order(records, seed)
    return ordered[:train_size], ordered[train_size:]


def load_dataset_config(cfg: Any, default_split: str) -> tuple[list[MCQRecord], LoadReport]:
    """Load what a `DataConfig` describes: dataset, file or Hub id, subset of the seeded split, limit."""
    if cfg.dataset == "demo":
        path = str(demo_path())
        records, report = load_medmcqa(path, cop_base=0, source_name="medqa-demo")
    elif cfg.dataset == "medmcqa":
        if not cfg.path:
            raise DataError("data", None, "path", f"dataset '{cfg.dataset}' needs --data PATH|HUB_ID")
        records, report = load_medmcqa(cfg.path, split=cfg.split or default_split,
                                       on_bad_rows=cfg.on_bad_rows, cop_base=cfg.cop_base)
    else:  # split: each family has its own default ("validation" is not a PubMedQA split; MMLU: test)
        from medqa.loaders import load_named

        records, report = load_named(cfg.dataset, cfg.path, split=cfg.split, subset=cfg.subjects,
                                     on_bad_rows=cfg.on_bad_rows, **cfg.loader_options)
    from medqa.hygiene import apply_multi_policy, clean_records

    if cfg.clean:
        records, _ = clean_records(records)
    records, _ = apply_multi_policy(records, cfg.multi_policy)
    if cfg.subset != "all":
        if cfg.train_size is None:
            raise DataError("data", None, "train_size", f"subset '{cfg.subset}' needs data.train_size")
        train, held = split_train_heldout(records, cfg.train_size, cfg.seed)
        records = train if cfg.subset == "train" else held
    elif cfg.train_size is not None:
        if cfg.train_size < len(records):
            records = hash_order(records, cfg.seed)[: cfg.train_size]
    if cfg.limit is not None:
        records = records[: cfg.limit]
    return records, report
