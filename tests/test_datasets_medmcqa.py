"""MedMCQA: the Hub schema in JSONL / JSON / Parquet / CSV, the original 1-based release, bad rows and files."""

import json
from collections import Counter

import pytest
from conftest import MEDMCQA_VALIDATION, mcq_row, write_jsonl

from medqa.datasets import detect_cop_base, hash_order, load_medmcqa, split_train_heldout
from medqa.errors import DataError


def test_jsonl_hub_schema(small_jsonl):
    records, report = load_medmcqa(str(small_jsonl))
    assert len(records) == 12 and report.kept == 12 and report.cop_base == 0
    r = records[5]
    assert r.id == "q5" and r.options == ["alpha 5", "beta 5", "gamma 5", "delta 5"]
    assert r.answer == 1 and r.answer_letter == "B"
    assert r.explanation == "Because 5." and r.subject == "Physiology" and r.topic is None


def test_json_array_parquet_csv_agree(tmp_path, small_jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in small_jsonl.read_text().splitlines()]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    import csv

    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ref, _ = load_medmcqa(str(small_jsonl))
    for name in ("a.json", "a.parquet", "a.csv"):
        got, _ = load_medmcqa(str(tmp_path / name))
        assert [r.model_dump() for r in got] == [r.model_dump() for r in ref], name


def test_original_release_one_based_detected(tmp_path):
    # The original MedMCQA release: JSON lines in a .json file, 1-based cop.
    rows = [mcq_row(i, cop=(i % 4) + 1) for i in range(8)]
    path = write_jsonl(tmp_path / "dev.json", rows)
    records, report = load_medmcqa(str(path))
    assert report.cop_base == 1
    assert [r.answer for r in records] == [i % 4 for i in range(8)]


def test_ambiguous_cop_base_is_an_error_not_a_guess(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [mcq_row(i, cop=1 + i % 3) for i in range(6)])
    with pytest.raises(DataError, match="cop_base"):
        load_medmcqa(str(path))
    records, _ = load_medmcqa(str(path), cop_base="1")
    assert [r.answer for r in records] == [i % 3 for i in range(6)]
    records, _ = load_medmcqa(str(path), cop_base=0)
    assert [r.answer for r in records] == [1 + i % 3 for i in range(6)]


def test_detect_cop_base_conflict():
    with pytest.raises(DataError, match="both occur"):
        detect_cop_base([0, 4, 2], "f")


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"question": None}, "question", "missing"),
        ({"question": "   "}, "question", "empty"),
        ({"opc": None}, "opc", "missing"),
        ({"opb": ["list"]}, "opb", "expected text"),
        ({"cop": 7}, "cop", "out of range"),
        ({"cop": "two"}, "cop", "expected an integer"),
        ({"cop": None}, "cop", "missing"),
    ],
)
def test_bad_row_names_file_row_field(tmp_path, bad, field, message):
    rows = [mcq_row(i, cop=i % 4) for i in range(5)]
    rows[2].update(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as exc:
        load_medmcqa(str(path))
    err = exc.value
    assert err.source == str(path) and err.row == 3 and err.field == field
    assert message in str(err) and "bad.jsonl, row 3, field" in str(err)


def test_skip_mode_counts_bad_rows(tmp_path):
    rows = [mcq_row(i, cop=i % 4) for i in range(6)]
    rows[1]["opa"] = None
    rows[4]["cop"] = 9
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    records, report = load_medmcqa(str(path), on_bad_rows="skip")
    assert [r.id for r in records] == ["q0", "q2", "q3", "q5"]
    assert report.rows == 6 and report.kept == 4 and len(report.skipped) == 2
    assert "row 2, field 'opa'" in report.skipped[0] and "row 5, field 'cop'" in report.skipped[1]


@pytest.mark.parametrize(
    "content, message",
    [("", "empty"), ('{"id": 1,\n', "not valid JSON"), ("[1, 2]", "expected a JSON object")],
)
def test_broken_files(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_medmcqa(str(path))


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_medmcqa(str(tmp_path / "nope.jsonl"))
    p = tmp_path / "latin1.jsonl"
    p.write_bytes('{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_medmcqa(str(p))


@pytest.mark.skipif(not MEDMCQA_VALIDATION.is_file(), reason="../shared/data not present")
def test_real_medmcqa_validation_file():
    records, report = load_medmcqa(str(MEDMCQA_VALIDATION))
    assert len(records) == 4183 and report.cop_base == 0 and not report.skipped
    assert records[0].question.startswith("Which of the following is not true for myelinated nerve fibers")
    assert records[0].answer == 0
    letters = Counter(r.answer_letter for r in records)
    assert letters == {"A": 1348, "B": 1085, "C": 925, "D": 825}
    train, held = split_train_heldout(records, 2000, seed=42)
    assert len(held) == 2183
    assert hash_order(records, 42)[:2000] == train
