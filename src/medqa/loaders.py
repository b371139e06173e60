"""Loaders for the medical multiple-choice benchmarks in the formats they are really released in.

Every loader returns `(list[MCQRecord], LoadReport)` and follows the contract of
`medqa.data.load_medmcqa`: a bad row raises a `DataError` naming the file, the row (1-based line or
record number, or the PMID key for PubMedQA) and the field; with `on_bad_rows="skip"` the row is
skipped and its reason counted in `LoadReport.skipped`. A missing, empty, undecodable or
wrong-format file is a `DataError` that says so, never a raw traceback. Rows left out because they
are outside the requested split or subject are not "bad": they are not read into `rows` at all.

Formats
- `medqa-usmle`: the original MedQA (USMLE) release, JSON lines with `question`, `options` (a dict
  of letters A-D or A-E), `answer` (the text), `answer_idx` (the letter) and `meta_info` (step1,
  step2&3: kept as `subject`), for the 4- and 5-option files alike. When `answer` is present it
  must equal `options[answer_idx]` (after Unicode/whitespace normalisation, ignoring case): a
  mismatch is an error, since it means the file was edited or mis-joined. The Hub copy
  `GBaker/MedQA-USMLE-4-options` has the same schema; `GBaker/MedQA-USMLE-4-options-hf` uses
  `id`, `sent1` (+ optional `sent2`), `ending0..3` and a 0-based `label`. Both are detected per row.
  `options` given as bigbio's `[{"key": "A", "value": ...}]` list is accepted too.
- `pubmedqa`: the original `ori_pqal.json` (one JSON object keyed by PMID, each with `QUESTION`,
  `CONTEXTS`, `LABELS`, `final_decision`, `LONG_ANSWER`), options yes / no / maybe.
  `split="test"` keeps the 500 PMIDs of the official `test_ground_truth.json` (passed as `test_ids`
  or found beside the data file), `split="train"` the other 500 (the official train+dev pool);
  labels in the ground-truth file must agree with `final_decision`. With `include_context=True`
  (default) the record carries the abstract in `MCQRecord.context` (the CONTEXTS joined by newlines,
  as lm-evaluation-harness shows them); prompts put it before the question. `LONG_ANSWER` is the explanation. The Hub `pqa_labeled`
  rows (`pubid`, `question`, `context.contexts`, `long_answer`, `final_decision`) load the same way.
- `mmlu`: the six medical subsets (anatomy, clinical_knowledge, college_biology, college_medicine,
  medical_genetics, professional_medicine), from the Hub schema (`question`, `subject`, `choices`,
  integer `answer`; local JSONL/JSON/Parquet or a Hub id loaded per subject config) or from the
  original header-less CSVs (question, A, B, C, D, answer letter) named `<subject>_<split>.csv`,
  as one file or a folder searched recursively. `subset` is one subject or `medical` (all six);
  a folder or Hub id defaults to `medical`, a single file to whatever it holds.
- `csv` / `jsonl`: any file with a column mapping (question column, option columns, answer column
  and its format `letter` / `index0` / `index1` / `text`, optional explanation / subject / id /
  topic columns). Trailing empty option columns are dropped (4-option rows in a 5-column file).
"""

from __future__ import annotations

import csv
import inspect as _inspect
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medqa.data import (
    LETTERS,
    LoadReport,
    MCQRecord,
    is_local,
    iter_raw_rows,
    load_medmcqa,
    read_text_file,
    text_cell,
)
from medqa.errors import DataError
from medqa.hygiene import text_key

MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
PUBMEDQA_OPTIONS = ("yes", "no", "maybe")
ANSWER_FORMATS = ("letter", "index0", "index1", "text")
DATASET_NAMES = ("medmcqa", "medqa-usmle", "pubmedqa", "mmlu", "csv", "jsonl", "demo")

Row = str | int | None


# ----------------------------------------------------------------------------- shared helpers


def _check_on_bad_rows(value: str) -> None:
    if value not in ("error", "skip"):
        raise DataError("data", None, "on_bad_rows", f"must be 'error' or 'skip', got {value!r}")


_is_local = is_local
_read_text = read_text_file


_text = text_cell


def _int(source: str, row: Row, field: str, v: Any) -> int:
    if v is None or (isinstance(v, float) and v != v):
        raise DataError(source, row, field, "missing value")
    if isinstance(v, bool):
        raise DataError(source, row, field, f"expected an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        v = int(v)
    if not isinstance(v, int):
        raise DataError(source, row, field, f"expected an integer, got {_short(v)}")
    return v


def _letter(source: str, row: Row, field: str, v: Any, n: int) -> int:
    s = _text(source, row, field, v)
    assert s is not None
    letter = s.upper()
    if len(letter) != 1 or letter not in LETTERS[:n]:
        raise DataError(source, row, field, f"{_short(s)} is not an option letter A-{LETTERS[n - 1]}")
    return LETTERS.index(letter)


def _short(v: Any, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _record(where: str, row: Row, /, **fields: Any) -> MCQRecord:
    """Build a validated record; a validation failure becomes a DataError naming the field."""
    try:
        return MCQRecord(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or None
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise DataError(where, row, loc, msg) from None


def _default_id(source: str, row: Row) -> str:
    return f"{Path(source).name}:{row}"


def _collect(
    source: str,
    items: Iterable[tuple[Row, Any]],
    convert: Callable[[Any, Row], MCQRecord],
    on_bad_rows: str,
    report: LoadReport,
) -> list[MCQRecord]:
    """Convert rows, raising or skipping-and-counting bad ones; an empty result is an error."""
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


def _first_row_format(source: str, row: Row, raw: Any, fmt: str, signatures: list[set[str]], expected: str) -> None:
    """Name a wrong-format file as such instead of failing on every row's first missing field."""
    a = "an" if fmt.startswith(("MMLU", "A", "E", "I", "O", "U")) else "a"
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"not {a} {fmt} file: expected a JSON object per row, got {type(raw).__name__}")
    keys = set(raw)
    if not any(keys & sig for sig in signatures):
        found = ", ".join(sorted(map(str, keys))[:12]) or "none"
        raise DataError(source, row, None, f"not {a} {fmt} file: expected {expected}; found keys: {found}")


def _iter_hub_config(dataset_id: str, config: str | None, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _rows(path: str, split: str | None) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a local JSONL / JSON array / Parquet / CSV file or a Hub dataset (via data.iter_raw_rows)."""
    if _is_local(path) and Path(path).is_dir():
        raise DataError(path, None, None, "is a folder; this format needs a file")
    return list(iter_raw_rows(path, split))


# ----------------------------------------------------------------------------- MedQA-USMLE


def _medqa_options(source: str, row: Row, v: Any) -> list[str]:
    if isinstance(v, str) and v.strip().startswith(("{", "[")):  # a dict written into a CSV cell
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(source, row, "options", "text is not a JSON object of letters") from None
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # bigbio: [{"key": "A", "value": ...}]
        try:
            v = {x["key"]: x["value"] for x in v}
        except (KeyError, TypeError):
            raise DataError(source, row, "options", "list entries need 'key' and 'value'") from None
    if v is None:
        raise DataError(source, row, "options", "missing value")
    if isinstance(v, list):
        if len(v) not in (4, 5):
            raise DataError(source, row, "options", f"expected 4 or 5 options, got {len(v)}")
        return [_text(source, row, f"options.{LETTERS[i]}", x) for i, x in enumerate(v)]  # type: ignore[misc]
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
    return [_text(source, row, f"options.{L}", by_letter[L]) for L in LETTERS[:n]]  # type: ignore[misc]


def medqa_usmle_record(raw: Any, source: str, row: Row) -> MCQRecord:
    """One MedQA-USMLE row (original release / GBaker, or the `-hf` form) as a record."""
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
    if "sent1" in raw or "ending0" in raw:
        return _medqa_hf_record(raw, source, row)
    question = _text(source, row, "question", raw.get("question"))
    options = _medqa_options(source, row, raw.get("options"))
    answer = _letter(source, row, "answer_idx", raw.get("answer_idx"), len(options))
    answer_text = _text(source, row, "answer", raw.get("answer"), required=False)
    if answer_text is not None and text_key(answer_text) != text_key(options[answer]):
        raise DataError(
            source, row, "answer",
            f"text {_short(answer_text)} does not match option {LETTERS[answer]} {_short(options[answer])} given by answer_idx",
        )
    rid = _text(source, row, "id", raw.get("id"), required=False)
    return _record(
        source, row,
        id=rid or _default_id(source, row),
        question=question,
        options=options,
        answer=answer,
        subject=_text(source, row, "meta_info", raw.get("meta_info"), required=False),
        source="medqa-usmle",
    )


def _medqa_hf_record(raw: dict[str, Any], source: str, row: Row) -> MCQRecord:
    question = _text(source, row, "sent1", raw.get("sent1"))
    sent2 = _text(source, row, "sent2", raw.get("sent2"), required=False)
    if sent2:
        question = f"{question} {sent2}"
    keys = [f"ending{i}" for i in range(5) if f"ending{i}" in raw and (i < 4 or raw.get(f"ending{i}") not in (None, ""))]
    if len(keys) < 4:
        missing = next(f"ending{i}" for i in range(4) if f"ending{i}" not in raw)
        raise DataError(source, row, missing, "missing value")
    options = [_text(source, row, k, raw.get(k)) for k in keys]
    label = _int(source, row, "label", raw.get("label"))
    if not 0 <= label < len(options):
        raise DataError(source, row, "label", f"answer {label} out of range for 0-based label with {len(options)} options")
    rid = _text(source, row, "id", raw.get("id"), required=False)
    return _record(source, row, id=rid or _default_id(source, row), question=question, options=options,
                   answer=label, source="medqa-usmle")


def load_medqa_usmle(path: str, split: str | None = None, on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    """MedQA-USMLE JSONL (4- or 5-option), the GBaker Hub copy or its `-hf` form."""
    _check_on_bad_rows(on_bad_rows)
    report = LoadReport(source=path)
    raws = _rows(path, split)
    if raws:
        _first_row_format(path, raws[0][0], raws[0][1], "MedQA-USMLE", [{"options", "answer_idx"}, {"sent1", "ending0", "label"}],
                          "question/options/answer_idx (or sent1/ending0..3/label)")
    return _collect(path, raws, lambda raw, row: medqa_usmle_record(raw, path, row), on_bad_rows, report), report


# ----------------------------------------------------------------------------- PubMedQA


def _pubmedqa_context(source: str, row: Row, contexts: Any, include_context: bool, field: str) -> str | None:
    """The abstract (CONTEXTS joined by newlines, as lm-evaluation-harness shows it), or None."""
    if not include_context:
        return None
    if contexts is None:
        raise DataError(source, row, field, "missing value (needed for include_context=True)")
    if not isinstance(contexts, list) or not contexts:
        raise DataError(source, row, field, f"expected a non-empty list of texts, got {_short(contexts)}")
    parts = [_text(source, row, f"{field}[{i}]", c) for i, c in enumerate(contexts)]
    return "\n".join(p for p in parts if p)


def _decision(source: str, row: Row, field: str, v: Any) -> int:
    s = _text(source, row, field, v)
    assert s is not None
    d = s.lower()
    if d not in PUBMEDQA_OPTIONS:
        raise DataError(source, row, field, f"{_short(s)} is not yes, no or maybe")
    return PUBMEDQA_OPTIONS.index(d)


def pubmedqa_record(raw: Any, source: str, pmid: str, include_context: bool = True, gold: str | None = None,
                    gold_source: str | None = None) -> MCQRecord:
    """One `ori_pqal.json` entry (keyed by PMID) as a record."""
    if not isinstance(raw, dict):
        raise DataError(source, pmid, None, f"expected a JSON object, got {type(raw).__name__}")
    q = _text(source, pmid, "QUESTION", raw.get("QUESTION"))
    assert q is not None
    answer = _decision(source, pmid, "final_decision", raw.get("final_decision"))
    if gold is not None and gold.strip().lower() != PUBMEDQA_OPTIONS[answer]:
        raise DataError(gold_source or source, pmid, None,
                        f"test label {gold!r} disagrees with final_decision {PUBMEDQA_OPTIONS[answer]!r} in {Path(source).name}")
    context = _pubmedqa_context(source, pmid, raw.get("CONTEXTS"), include_context, "CONTEXTS")
    return _record(
        source, pmid, id=str(pmid), question=q, context=context, options=list(PUBMEDQA_OPTIONS), answer=answer,
        explanation=_text(source, pmid, "LONG_ANSWER", raw.get("LONG_ANSWER"), required=False), source="pubmedqa",
    )


def _pubmedqa_hub_record(raw: Any, source: str, row: Row, include_context: bool) -> MCQRecord:
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
    pubid = _text(source, row, "pubid", raw.get("pubid"), required=False)
    q = _text(source, row, "question", raw.get("question"))
    assert q is not None
    answer = _decision(source, row, "final_decision", raw.get("final_decision"))
    ctx = raw.get("context")
    contexts = ctx.get("contexts") if isinstance(ctx, dict) else ctx
    context = _pubmedqa_context(source, row, contexts, include_context, "context.contexts")
    return _record(
        source, row, id=pubid or _default_id(source, row), question=q, context=context, options=list(PUBMEDQA_OPTIONS),
        answer=answer, explanation=_text(source, row, "long_answer", raw.get("long_answer"), required=False),
        source="pubmedqa",
    )


def _load_test_ids(path: str) -> dict[str, str]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, None, None, f"not valid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(path, None, None, "not a PubMedQA test_ground_truth.json: expected a JSON object PMID -> yes/no/maybe")
    out: dict[str, str] = {}
    for pmid, label in data.items():
        if not isinstance(label, str) or label.strip().lower() not in PUBMEDQA_OPTIONS:
            raise DataError(path, str(pmid), None, f"label {_short(label)} is not yes, no or maybe")
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
    _check_on_bad_rows(on_bad_rows)
    report = LoadReport(source=path)
    if test_ids is None and _is_local(path):
        beside = Path(path).with_name("test_ground_truth.json")
        if beside.is_file() and beside != Path(path):
            test_ids = str(beside)
    gold = _load_test_ids(test_ids) if test_ids else None
    keep = _pubmedqa_select(split, gold, path)

    if not _is_local(path):  # Hub: qiaojin/PubMedQA, config pqa_labeled, one 'train' split of 1,000
        raws = list(_iter_hub_config(path, hub_config, "train"))
        return _pubmedqa_rows(path, raws, keep, gold, test_ids, include_context, on_bad_rows, report), report

    text = _read_text(path)
    data: Any = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines (Hub export), handled below
    if isinstance(data, dict):
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
        records = _collect(
            path, items,
            lambda raw, pmid: pubmedqa_record(raw, path, str(pmid), include_context,
                                              gold.get(str(pmid)) if gold else None, test_ids),
            on_bad_rows, report,
        )
        return records, report
    raws = _rows(path, None)
    return _pubmedqa_rows(path, raws, keep, gold, test_ids, include_context, on_bad_rows, report), report


def _pubmedqa_rows(path: str, raws: list[tuple[int, Any]], keep: Callable[[str], bool], gold: dict[str, str] | None,
                   test_ids: str | None, include_context: bool, on_bad_rows: str, report: LoadReport) -> list[MCQRecord]:
    if raws:
        _first_row_format(path, raws[0][0], raws[0][1], "PubMedQA", [{"final_decision", "pubid", "long_answer"}],
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
    return _collect(path, items, convert, on_bad_rows, report)


# ----------------------------------------------------------------------------- MMLU


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
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
    question = _text(source, row, "question", raw.get("question"))
    choices = raw.get("choices")
    if choices is None:
        raise DataError(source, row, "choices", "missing value")
    if not isinstance(choices, list) or not 2 <= len(choices) <= 5:
        raise DataError(source, row, "choices", f"expected a list of 2 to 5 texts, got {_short(choices)}")
    options = [_text(source, row, f"choices[{i}]", c) for i, c in enumerate(choices)]
    v = raw.get("answer")
    if isinstance(v, str) and v.strip().upper() in LETTERS:
        answer = _letter(source, row, "answer", v, len(options))
    else:
        answer = _int(source, row, "answer", v)
        if not 0 <= answer < len(options):
            raise DataError(source, row, "answer", f"answer {answer} out of range for 0-based answer with {len(options)} options")
    subj = _text(source, row, "subject", raw.get("subject"), required=False) or subject
    return _record(source, row, id=_default_id(source, row), question=question, options=options, answer=answer,
                   subject=subj, source="mmlu")


def mmlu_csv_record(cells: list[str], source: str, row: Row, subject: str | None) -> MCQRecord:
    """One row of an original header-less MMLU CSV: question, A, B, C, D, answer letter."""
    if len(cells) != 6:
        raise DataError(source, row, None, f"expected 6 columns (question, A, B, C, D, answer), got {len(cells)}")
    question = _text(source, row, "question", cells[0])
    options = [_text(source, row, L, c) for L, c in zip("ABCD", cells[1:5])]
    answer = _letter(source, row, "answer", cells[5], 4)
    return _record(source, row, id=_default_id(source, row), question=question, options=options, answer=answer,
                   subject=subject, source="mmlu")


def _mmlu_csv_rows(path: str) -> list[tuple[int, list[str]]]:
    text = _read_text(path)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    out = [(i, r) for i, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if out and [c.strip().lower() for c in out[0][1]] == ["question", "a", "b", "c", "d", "answer"]:
        out = out[1:]
    return out


def _subject_of_file(path: Path) -> tuple[str, str | None]:
    m = _MMLU_FILE.match(path.stem)
    return (m["subject"], m["split"]) if m else (path.stem, None)


def load_mmlu(path: str, split: str | None = None, subset: str | None = None, on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    """MMLU (medical subsets by default for folders and Hub ids) from CSVs, Hub-schema files or the Hub."""
    _check_on_bad_rows(on_bad_rows)
    report = LoadReport(source=path)
    p = Path(path)
    if not _is_local(path):  # Hub id, e.g. cais/mmlu: one config per subject
        subjects = _mmlu_subjects(subset, MMLU_MEDICAL) or MMLU_MEDICAL
        items: list[tuple[Row, Any]] = []
        for s in subjects:
            items += [(f"{s}:{i}", raw) for i, raw in _iter_hub_config(path, s, split or "test")]
        return _collect(path, items, lambda raw, row: mmlu_record(raw, path, row, str(row).split(":")[0]), on_bad_rows, report), report

    if p.is_dir():
        subjects = _mmlu_subjects(subset, MMLU_MEDICAL) or MMLU_MEDICAL
        want = _MMLU_SPLIT_FILE.get(split or "test", split or "test")
        files = []
        for s in subjects:
            found = sorted(p.rglob(f"{s}_{want}.csv"))
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

    if p.suffix.lower() == ".csv" and not _looks_like_header_csv(path):
        subject, _ = _subject_of_file(p)
        wanted = _mmlu_subjects(subset, None)
        if wanted is not None and subject not in wanted:
            raise DataError(path, None, "subset", f"file holds MMLU subject '{subject}' (from its name), not {subset!r}")
        return _load_mmlu_csv(path, subject, on_bad_rows)

    raws = _rows(path, split)
    if raws:
        _first_row_format(path, raws[0][0], raws[0][1], "MMLU", [{"choices"}], "question/subject/choices/answer (Hub schema)")
    wanted = _mmlu_subjects(subset, None)
    if wanted is not None:
        raws = [(r, raw) for r, raw in raws if isinstance(raw, dict) and str(raw.get("subject") or _subject_of_file(p)[0]) in wanted]
        if not raws:
            raise DataError(path, None, "subject", f"no rows of subset {subset!r}")
    default_subject = _subject_of_file(p)[0] if _MMLU_FILE.match(p.stem) else None
    return _collect(path, raws, lambda raw, row: mmlu_record(raw, path, row, default_subject), on_bad_rows, report), report


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
    return _collect(path, rows, lambda cells, row: mmlu_csv_record(cells, path, row, subject), on_bad_rows, report), report


# ----------------------------------------------------------------------------- generic CSV / JSONL


def _iter_csv_header(path: str, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(path, None, None, "CSV has no header row")
    out = []
    for i, row in enumerate(reader, start=2):
        if None in row:
            raise DataError(path, i, None, "more values than header columns")
        out.append((i, {k: (None if v == "" else v) for k, v in row.items()}))
    return out


def generic_record(
    raw: Any, source: str, row: Row, *, question: str, options: list[str] | str, answer: str,
    answer_format: str = "letter", explanation: str | None = None, subject: str | None = None,
    id: str | None = None, topic: str | None = None, source_name: str = "generic",
) -> MCQRecord:
    """One row through a column mapping."""
    if not isinstance(raw, dict):
        raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
    q = _text(source, row, question, raw.get(question))
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
    opts = [_text(source, row, n, c) for n, c in zip(names, cells)]
    v = raw.get(answer)
    n = len(opts)
    if answer_format == "letter":
        ans = _letter(source, row, answer, v, n)
    elif answer_format in ("index0", "index1"):
        base = 0 if answer_format == "index0" else 1
        ans = _int(source, row, answer, v) - base
        if not 0 <= ans < n:
            raise DataError(source, row, answer, f"answer {ans + base} out of range for {base}-based index with {n} options")
    elif answer_format == "text":
        t = _text(source, row, answer, v)
        matches = [i for i, o in enumerate(opts) if text_key(o) == text_key(t or "")]  # type: ignore[arg-type]
        if not matches:
            raise DataError(source, row, answer, f"text {_short(t)} matches no option")
        if len(matches) > 1:
            raise DataError(source, row, answer, f"text {_short(t)} matches several options ({', '.join(LETTERS[i] for i in matches)})")
        ans = matches[0]
    else:
        raise DataError(source, None, "answer_format", f"must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    rid = _text(source, row, id, raw.get(id), required=False) if id else None
    return _record(
        source, row, id=rid or _default_id(source, row), question=q, options=opts, answer=ans,
        explanation=_text(source, row, explanation, raw.get(explanation), required=False) if explanation else None,
        subject=_text(source, row, subject, raw.get(subject), required=False) if subject else None,
        topic=_text(source, row, topic, raw.get(topic), required=False) if topic else None,
        source=source_name,
    )


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
    _check_on_bad_rows(on_bad_rows)
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
    is_csv = _is_local(path) and (file_format == "csv" or suffix in (".csv", ".tsv"))
    if is_csv:
        raws = _iter_csv_header(path, "\t" if suffix == ".tsv" and delimiter == "," else delimiter)
    else:
        raws = _rows(path, split)
    if raws:
        first = raws[0][1]
        if not isinstance(first, dict):
            raise DataError(path, raws[0][0], None, f"expected a JSON object per row, got {type(first).__name__}")
        mapped = [question, answer] + ([options] if isinstance(options, str) else options[:2])
        if is_csv:  # a CSV header names every column; in JSON rows optional keys may be absent
            mapped += [c for c in (explanation, subject, id, topic) if c]
        absent = [c for c in mapped if c not in first]
        if absent:
            cols = ", ".join(map(str, list(first)[:20]))
            raise DataError(path, None, absent[0], f"no such column in this file (columns: {cols}); check the column mapping")
    mapping = dict(question=question, options=options, answer=answer, answer_format=answer_format, explanation=explanation,
                   subject=subject, id=id, topic=topic, source_name=source_name)
    records = _collect(path, raws, lambda raw, row: generic_record(raw, path, row, **mapping), on_bad_rows, report)  # type: ignore[arg-type]
    return records, report


# ----------------------------------------------------------------------------- dispatcher


def _demo(path: str | None = None, split: str | None = None, on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    from medqa.data import demo_path

    return load_medmcqa(str(demo_path()), cop_base=0, source_name="medqa-demo", on_bad_rows=on_bad_rows)


def load_named(
    name: str,
    path: str | None,
    split: str | None = None,
    subset: str | None = None,
    on_bad_rows: str = "error",
    **opts: Any,
) -> tuple[list[MCQRecord], LoadReport]:
    """Load dataset family `name` from `path` (file, folder or Hub id).

    `subset` is the MMLU subject (or `medical`); other families reject it. `opts` go to the loader:
    medmcqa: cop_base; pubmedqa: test_ids, include_context; csv/jsonl: the column mapping
    (question, options, answer, answer_format, explanation, subject, id, topic, delimiter).
    """
    _check_on_bad_rows(on_bad_rows)
    if name not in DATASET_NAMES:
        raise DataError("data", None, "dataset", f"unknown dataset {name!r} (one of {', '.join(DATASET_NAMES)})")
    if name != "demo" and not path:
        raise DataError("data", None, "path", f"dataset '{name}' needs --data PATH|HUB_ID")
    if subset is not None and name != "mmlu":
        raise DataError("data", None, "subset", f"dataset '{name}' has no subsets (only mmlu: a subject or 'medical')")
    fn: Callable[..., tuple[list[MCQRecord], LoadReport]]
    kwargs: dict[str, Any] = {"split": split, "on_bad_rows": on_bad_rows}
    if name == "medmcqa":
        fn = load_medmcqa
    elif name == "medqa-usmle":
        fn = load_medqa_usmle
    elif name == "pubmedqa":
        fn = load_pubmedqa
    elif name == "mmlu":
        fn, kwargs["subset"] = load_mmlu, subset
    elif name == "demo":
        fn = _demo
    else:
        fn = load_generic
        if name == "csv":
            opts.setdefault("file_format", "csv")
    allowed = set(_inspect.signature(fn).parameters) - {"path", "split", "on_bad_rows", "subset"}
    for k in opts:
        if k not in allowed:
            raise DataError("data", None, k, f"unknown option for dataset '{name}' (allowed: {', '.join(sorted(allowed)) or 'none'})")
    return fn(path, **kwargs, **opts)
