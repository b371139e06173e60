"""Generic CSV / JSONL through a column mapping, and the `load_named` dispatcher."""

import csv
from pathlib import Path

import pytest
from conftest import loads_or_data_error, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa.datasets import MCQRecord, generic_record, load_generic, load_named
from medqa.errors import DataError

MAPPING = dict(question="Q", options=["optA", "optB", "optC", "optD", "optE"], answer="ans", explanation="why",
               subject="area", id="qid")


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def gen_row(i: int, **kw) -> dict:
    row = {"qid": f"g{i}", "Q": f"Generic question {i}?", "optA": "one", "optB": "two", "optC": "three",
           "optD": "four", "optE": "five" if i % 2 else "", "ans": "ABCD"[i % 4], "why": f"why {i}", "area": "Pharmacology"}
    row.update(kw)
    return row


def test_csv_letter_answers_and_trailing_empty_option(tmp_path):
    path = write_csv(tmp_path / "g.csv", [gen_row(i) for i in range(6)])
    records, report = load_named("csv", str(path), **MAPPING)
    assert report.kept == 6
    assert [len(r.options) for r in records] == [4, 5, 4, 5, 4, 5]
    r = records[3]
    assert r.id == "g3" and r.answer == 3 and r.explanation == "why 3" and r.subject == "Pharmacology"
    assert r.source == "generic"


def test_tsv_and_csv_with_other_suffix(tmp_path):
    rows = [gen_row(i) for i in range(3)]
    tsv = write_csv(tmp_path / "g.tsv", rows, delimiter="\t")
    assert len(load_generic(str(tsv), **MAPPING)[0]) == 3
    txt = write_csv(tmp_path / "g.txt", rows)
    assert len(load_named("csv", str(txt), **MAPPING)[0]) == 3


@pytest.mark.parametrize(
    "fmt, values, expected",
    [("index0", [0, 3, "2"], [0, 3, 2]), ("index1", [1, 4, 2.0], [0, 3, 1]), ("text", ["two", " FOUR ", "one"], [1, 3, 0]),
     ("letter", ["a", "D", "c"], [0, 3, 2])],
)
def test_answer_formats_jsonl(tmp_path, fmt, values, expected):
    rows = [{"q": f"Q{i}?", "choices": ["one", "two", "three", "four"], "gold": v} for i, v in enumerate(values)]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    records, _ = load_named("jsonl", str(path), question="q", options="choices", answer="gold", answer_format=fmt)
    assert [r.answer for r in records] == expected
    assert records[0].id == "g.jsonl:1"


def test_options_as_comma_separated_string(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"q": "Q?", "a": "x", "b": "y", "ans": "B"}])
    records, _ = load_generic(str(path), question="q", options="a,b", answer="ans")
    assert records[0].options == ["x", "y"] and records[0].answer == 1


@pytest.mark.parametrize(
    "bad, fmt, field, message",
    [
        ({"ans": "E"}, "letter", "ans", "not an option letter A-D"),
        ({"ans": 5}, "index1", "ans", "out of range for 1-based"),
        ({"ans": "x"}, "index0", "ans", "expected an integer"),
        ({"ans": "nine"}, "text", "ans", "matches no option"),
        ({"optB": "one", "ans": "one"}, "text", "ans", "matches several options"),
        ({"optB": None}, "letter", "optB", "missing"),
        ({"Q": None}, "letter", "Q", "missing"),
    ],
)
def test_bad_rows(tmp_path, bad, fmt, field, message):
    rows = [gen_row(i, ans={"letter": "A", "index0": 0, "index1": 1, "text": "one"}[fmt]) for i in range(4)]
    rows[2].update(bad)
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    with pytest.raises(DataError) as exc:
        load_generic(str(path), **{**MAPPING, "answer_format": fmt})
    assert exc.value.row == 3 and exc.value.field == field and message in str(exc.value)
    records, report = load_generic(str(path), **{**MAPPING, "answer_format": fmt}, on_bad_rows="skip")
    assert len(records) == 3 and len(report.skipped) == 1


def test_mapping_errors_are_named(tmp_path):
    path = write_csv(tmp_path / "g.csv", [gen_row(0)])
    with pytest.raises(DataError) as exc:
        load_generic(str(path), **{**MAPPING, "question": "Question"})
    assert exc.value.field == "Question" and "no such column" in str(exc.value) and "columns: qid, Q" in str(exc.value)
    with pytest.raises(DataError, match="answer_format"):
        load_generic(str(path), **MAPPING, answer_format="roman")
    with pytest.raises(DataError, match="2 to 5 option columns"):
        load_generic(str(path), **{**MAPPING, "options": ["optA"]})
    (tmp_path / "short.csv").write_text("Q,optA\nonly header-ish\n")
    with pytest.raises(DataError):
        load_generic(str(tmp_path / "short.csv"), **MAPPING)
    (tmp_path / "extra.csv").write_text("a,b\n1,2,3\n")
    with pytest.raises(DataError, match="more values than header"):
        load_named("csv", str(tmp_path / "extra.csv"), question="a", options=["a", "b"], answer="b")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_named("csv", str(tmp_path / "empty.csv"), **MAPPING)


def test_dispatcher(tmp_path, small_jsonl):
    records, report = load_named("medmcqa", str(small_jsonl), cop_base=0)
    assert len(records) == 12 and report.cop_base == 0
    demo, _ = load_named("demo", None)
    assert demo and demo[0].source == "medqa-demo"
    with pytest.raises(DataError, match="unknown dataset"):
        load_named("medqa", str(small_jsonl))
    with pytest.raises(DataError, match="needs --data"):
        load_named("pubmedqa", None)
    with pytest.raises(DataError, match="has no subsets"):
        load_named("medmcqa", str(small_jsonl), subset="anatomy")
    with pytest.raises(DataError) as exc:
        load_named("medmcqa", str(small_jsonl), include_context=False)
    assert exc.value.field == "include_context" and "allowed: cop_base" in str(exc.value)
    with pytest.raises(DataError, match="on_bad_rows"):
        load_named("medmcqa", str(small_jsonl), on_bad_rows="drop")


json_leaf = st.none() | st.booleans() | st.integers(-2, 6) | st.floats() | st.text(max_size=4)
row_like = st.fixed_dictionaries({}, optional={"q": json_leaf, "a": json_leaf, "b": json_leaf, "c": json_leaf,
                                               "ans": json_leaf | st.sampled_from(["A", "b", "C", "x"]),
                                               "L": st.lists(json_leaf, max_size=6) | json_leaf, "why": json_leaf})


@settings(max_examples=300, deadline=None)
@given(raw=row_like | st.lists(json_leaf, max_size=2), fmt=st.sampled_from(["letter", "index0", "index1", "text"]),
       as_list=st.booleans())
def test_any_row_gives_a_record_or_a_data_error(raw, fmt, as_list):
    try:
        rec = generic_record(raw, "g.jsonl", 1, question="q", options="L" if as_list else ["a", "b", "c"], answer="ans",
                             answer_format=fmt, explanation="why")
    except DataError:
        return
    assert isinstance(rec, MCQRecord) and 0 <= rec.answer < len(rec.options)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row_like, min_size=1, max_size=4))
def test_any_file_gives_records_or_a_data_error(rows):
    loads_or_data_error(rows, lambda p, **kw: load_generic(p, question="q", options=["a", "b", "c"], answer="ans", **kw))
