"""MedQA-USMLE: the original 4-/5-option JSONL release, the GBaker Hub copy and its -hf form."""


import pytest
from conftest import loads_or_data_error, mcq_row, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa.datasets import MCQRecord, load_medqa_usmle, load_named, medqa_usmle_record
from medqa.errors import DataError


def usmle_row(i: int, n: int = 5, idx: int | None = None, **kw) -> dict:
    """A row in the layout of data_clean/questions/US/{train,dev,test}.jsonl (5 options) or 4_options/*.jsonl."""
    letters = "ABCDE"[:n]
    idx = i % n if idx is None else idx
    options = {L: f"Drug {L.lower()}{i}" for L in letters}
    row = {
        "question": f"A {20 + i}-year-old woman presents with dysuria. Which is the most appropriate treatment?",
        "answer": options[letters[idx]],
        "options": options,
        "meta_info": "step2&3" if i % 2 else "step1",
        "answer_idx": letters[idx],
    }
    if n == 4:
        row["metamap_phrases"] = ["year old woman", "dysuria"]
    row.update(kw)
    return row


def hf_row(i: int, label: int = 0, **kw) -> dict:
    row = {"id": f"hf{i}", "sent1": f"Question {i}: which nerve is injured?", "sent2": "",
           "ending0": "Radial", "ending1": "Ulnar", "ending2": "Median", "ending3": "Axillary", "label": label}
    row.update(kw)
    return row


def test_five_option_original_release(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [usmle_row(i) for i in range(10)])
    records, report = load_medqa_usmle(str(path))
    assert report.rows == report.kept == 10 and not report.skipped
    r = records[3]
    assert len(r.options) == 5 and r.answer == 3 and r.answer_letter == "D"
    assert r.options[r.answer] == "Drug d3" and r.subject == "step2&3" and r.source == "medqa-usmle"
    assert r.id == "train.jsonl:4" and len({x.id for x in records}) == 10


def test_four_option_original_release(tmp_path):
    path = write_jsonl(tmp_path / "phrases_no_exclude_test.jsonl", [usmle_row(i, n=4) for i in range(8)])
    records, _ = load_medqa_usmle(str(path))
    assert all(len(r.options) == 4 for r in records)
    assert [r.answer for r in records] == [i % 4 for i in range(8)]


def test_gbaker_hub_copy_as_parquet_with_struct_options(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [usmle_row(i, n=4) for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    records, _ = load_medqa_usmle(str(tmp_path / "train.parquet"))
    ref, _ = load_medqa_usmle(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    assert [(r.question, r.options, r.answer) for r in records] == [(r.question, r.options, r.answer) for r in ref]


def test_hf_form(tmp_path):
    path = write_jsonl(tmp_path / "hf.jsonl", [hf_row(i, label=i % 4) for i in range(4)])
    records, _ = load_named("medqa-usmle", str(path))
    assert [r.id for r in records] == ["hf0", "hf1", "hf2", "hf3"]
    assert records[2].options == ["Radial", "Ulnar", "Median", "Axillary"] and records[2].answer == 2
    assert records[0].question == "Question 0: which nerve is injured?"


def test_bigbio_key_value_options(tmp_path):
    row = usmle_row(1, n=4)
    row["options"] = [{"key": k, "value": v} for k, v in row["options"].items()]
    records, _ = load_medqa_usmle(str(write_jsonl(tmp_path / "b.jsonl", [row])))
    assert records[0].options == ["Drug a1", "Drug b1", "Drug c1", "Drug d1"] and records[0].answer == 1


def test_answer_text_must_match_answer_idx(tmp_path):
    rows = [usmle_row(i) for i in range(3)]
    rows[1]["answer"] = "Drug a1"  # answer_idx says B
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(DataError) as exc:
        load_medqa_usmle(str(path))
    assert exc.value.row == 2 and exc.value.field == "answer" and "does not match option B" in str(exc.value)
    rows[1]["answer"] = "  drug B1 "  # whitespace and case do not matter
    records, _ = load_medqa_usmle(str(write_jsonl(tmp_path / "y.jsonl", rows)))
    assert records[1].answer == 1


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"answer_idx": "F", "answer": None}, "answer_idx", "not an option letter A-E"),
        ({"answer_idx": None}, "answer_idx", "missing"),
        ({"options": {"A": "x", "B": "y", "D": "z", "E": "w"}}, "options", "A-D or A-E"),
        ({"options": ["only", "two"]}, "options", "4 or 5"),
        ({"options": "free text"}, "options", "expected a dict"),
        ({"options": {"A": "x", "B": "", "C": "y", "D": "z"}, "answer_idx": "A", "answer": "x"}, "options.B", "empty"),
        ({"question": None}, "question", "missing"),
        ({"question": {"nested": 1}}, "question", "expected text"),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path, bad, field, message):
    rows = [usmle_row(i) for i in range(4)]
    rows[2].update(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as exc:
        load_medqa_usmle(str(path))
    assert exc.value.source == str(path) and exc.value.row == 3 and exc.value.field == field
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "bad, field",
    [({"label": 7}, "label"), ({"label": "x"}, "label"), ({"ending2": None}, "ending2"), ({"sent1": ""}, "sent1")],
)
def test_bad_hf_rows(tmp_path, bad, field):
    rows = [hf_row(i) for i in range(3)]
    rows[1].update(bad)
    with pytest.raises(DataError) as exc:
        load_medqa_usmle(str(write_jsonl(tmp_path / "hf.jsonl", rows)))
    assert exc.value.row == 2 and exc.value.field == field
    rows[1].pop(field)
    with pytest.raises(DataError, match="missing"):
        load_medqa_usmle(str(write_jsonl(tmp_path / "hf2.jsonl", rows)))


def test_skip_mode_counts(tmp_path):
    rows = [usmle_row(i) for i in range(6)]
    rows[1]["answer_idx"] = "Z"
    rows[4]["answer"] = "something else"
    records, report = load_medqa_usmle(str(write_jsonl(tmp_path / "s.jsonl", rows)), on_bad_rows="skip")
    assert report.rows == 6 and report.kept == 4 and len(report.skipped) == 2
    assert "row 2, field 'answer_idx'" in report.skipped[0] and "row 5, field 'answer'" in report.skipped[1]


def test_every_row_bad_is_an_error(tmp_path):
    rows = [usmle_row(i, answer_idx="Q") for i in range(3)]
    with pytest.raises(DataError, match="every row was bad"):
        load_medqa_usmle(str(write_jsonl(tmp_path / "s.jsonl", rows)), on_bad_rows="skip")


def test_wrong_format_empty_and_missing_files(tmp_path):
    medmcqa = write_jsonl(tmp_path / "medmcqa.jsonl", [mcq_row(i) for i in range(3)])
    with pytest.raises(DataError, match="not a MedQA-USMLE file"):
        load_medqa_usmle(str(medmcqa))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_medqa_usmle(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        load_medqa_usmle(str(tmp_path / "nope.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"question": ')
    with pytest.raises(DataError, match="not valid JSON"):
        load_medqa_usmle(str(tmp_path / "broken.jsonl"))
    with pytest.raises(DataError, match="on_bad_rows"):
        load_medqa_usmle(str(medmcqa), on_bad_rows="ignore")


# ----------------------------------------------------------------------------- properties

json_leaf = st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True) | st.text(max_size=8)
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
                        max_leaves=8)
letters = st.sampled_from(["A", "B", "C", "D", "E", "a", "F", "", " B "])
options = st.dictionaries(letters, json_leaf, max_size=6) | st.lists(json_leaf, max_size=6) | json_any
usmle_like = st.fixed_dictionaries(
    {}, optional={"question": json_leaf, "options": options, "answer": json_leaf, "answer_idx": letters | json_leaf,
                  "meta_info": json_leaf, "id": json_leaf},
)
hf_like = st.fixed_dictionaries(
    {"sent1": json_leaf}, optional={**{f"ending{i}": json_leaf for i in range(5)}, "label": json_leaf, "sent2": json_leaf},
)


@settings(max_examples=300, deadline=None)
@given(raw=usmle_like | hf_like | json_any)
def test_any_json_row_gives_a_record_or_a_data_error(raw):
    try:
        rec = medqa_usmle_record(raw, "f.jsonl", 1)
    except DataError as e:
        assert e.source == "f.jsonl"
        return
    assert isinstance(rec, MCQRecord) and 0 <= rec.answer < len(rec.options)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(usmle_like | json_any, min_size=1, max_size=4))
def test_any_file_gives_records_or_a_data_error(rows):
    loads_or_data_error(rows, load_medqa_usmle)
