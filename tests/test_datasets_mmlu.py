"""MMLU medical subsets: original header-less CSVs (data/<split>/<subject>_<split>.csv) and the Hub schema."""

import csv

import pytest
from conftest import mcq_row, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa.datasets import MCQRecord, MMLU_MEDICAL, load_mmlu, load_named, mmlu_csv_record, mmlu_record
from medqa.errors import DataError
from medqa.hygiene import cross_subject_duplicates


def csv_rows(subject: str, n: int = 3) -> list[list[str]]:
    return [[f'{subject} question {i}, with "quotes",\nand a second line?', f"{subject} a{i}", f"b{i}", f"c{i}", f"d{i}",
             "ABCD"[i % 4]] for i in range(n)]


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def mmlu_dir(tmp_path):
    root = tmp_path / "data"
    for s in (*MMLU_MEDICAL, "astronomy"):
        write_csv(root / "test" / f"{s}_test.csv", csv_rows(s))
        write_csv(root / "dev" / f"{s}_dev.csv", csv_rows(s, 2))
    return root


def test_folder_defaults_to_the_six_medical_subsets(mmlu_dir):
    records, report = load_mmlu(str(mmlu_dir))
    assert len(records) == 18 and report.kept == 18
    assert {r.subject for r in records} == set(MMLU_MEDICAL)
    r = next(r for r in records if r.subject == "anatomy")
    assert r.question == 'anatomy question 0, with "quotes",\nand a second line?'
    assert r.options == ["anatomy a0", "b0", "c0", "d0"] and r.answer == 0 and r.source == "mmlu"
    assert records[1].answer == 1 and records[1].id == "anatomy_test.csv:2"
    assert len({r.id for r in records}) == 18


def test_subset_and_split(mmlu_dir):
    records, _ = load_named("mmlu", str(mmlu_dir), subset="college_medicine")
    assert {r.subject for r in records} == {"college_medicine"} and len(records) == 3
    dev, _ = load_mmlu(str(mmlu_dir), split="dev", subset="medical")
    assert len(dev) == 12
    astro, _ = load_mmlu(str(mmlu_dir), subset="astronomy")
    assert {r.subject for r in astro} == {"astronomy"}
    with pytest.raises(DataError, match="no virology_test.csv"):
        load_mmlu(str(mmlu_dir), subset="virology")
    with pytest.raises(DataError, match="not an MMLU subject"):
        load_mmlu(str(mmlu_dir), subset="Anatomy!")


def test_single_file_subject_from_its_name(mmlu_dir):
    path = mmlu_dir / "test" / "medical_genetics_test.csv"
    records, _ = load_mmlu(str(path))
    assert {r.subject for r in records} == {"medical_genetics"}
    records, _ = load_mmlu(str(path), subset="medical")
    assert len(records) == 3
    with pytest.raises(DataError, match="not 'anatomy'"):
        load_mmlu(str(path), subset="anatomy")
    with pytest.raises(DataError, match="subject 'astronomy'"):
        load_mmlu(str(mmlu_dir / "test" / "astronomy_test.csv"), subset="medical")


def test_header_row_is_tolerated(tmp_path):
    path = write_csv(tmp_path / "anatomy_val.csv", [["question", "A", "B", "C", "D", "answer"], *csv_rows("anatomy", 2)])
    records, _ = load_mmlu(str(path))
    assert len(records) == 2 and records[0].subject == "anatomy"


def test_hub_schema_file_with_subject_column(tmp_path):
    rows = [{"question": f"Q{i}?", "subject": s, "choices": ["w", "x", "y", "z"], "answer": i % 4}
            for i, s in enumerate(["anatomy", "astronomy", "college_biology", "anatomy"])]
    path = write_jsonl(tmp_path / "mmlu_all.jsonl", rows)
    records, _ = load_mmlu(str(path))
    assert len(records) == 4 and records[2].answer == 2 and records[2].subject == "college_biology"
    med, report = load_mmlu(str(path), subset="medical")
    assert [r.subject for r in med] == ["anatomy", "college_biology", "anatomy"] and report.rows == 3
    with pytest.raises(DataError, match="no rows of subset"):
        load_mmlu(str(path), subset="virology")


def test_hub_id_is_loaded_per_subject_config(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"question": f"{config} q", "subject": config, "choices": ["a", "b", "c", "d"], "answer": 3}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, _ = load_mmlu("cais/mmlu")
    assert [c[1] for c in calls] == list(MMLU_MEDICAL) and {c[2] for c in calls} == {"test"}
    assert [r.subject for r in records] == list(MMLU_MEDICAL) and all(r.answer == 3 for r in records)

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="offline"):
        load_mmlu("cais/mmlu", subset="anatomy")


@pytest.mark.parametrize(
    "row, field, message",
    [
        (["q", "a", "b", "c", "d"], None, "expected 6 columns"),
        (["q", "a", "b", "c", "d", "E"], "answer", "not an option letter A-D"),
        (["q", "a", "", "c", "d", "A"], "B", "empty"),
        (["", "a", "b", "c", "d", "A"], "question", "empty"),
    ],
)
def test_bad_csv_rows(tmp_path, row, field, message):
    rows = csv_rows("anatomy", 4)
    rows[2] = row
    path = write_csv(tmp_path / "anatomy_test.csv", rows)
    with pytest.raises(DataError) as exc:
        load_mmlu(str(path))
    assert exc.value.row == 3 and exc.value.field == field and message in str(exc.value)
    records, report = load_mmlu(str(path), on_bad_rows="skip")
    assert len(records) == 3 and report.rows == 4 and "row 3" in report.skipped[0]


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"choices": "abcd"}, "choices", "list of 2 to 5"),
        ({"choices": ["a", None, "c", "d"]}, "choices[1]", "missing"),
        ({"answer": 4}, "answer", "out of range"),
        ({"answer": True}, "answer", "expected an integer"),
        ({"answer": None}, "answer", "missing"),
    ],
)
def test_bad_hub_rows(tmp_path, bad, field, message):
    rows = [{"question": f"Q{i}?", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": 1} for i in range(3)]
    rows[1].update(bad)
    with pytest.raises(DataError) as exc:
        load_mmlu(str(write_jsonl(tmp_path / "h.jsonl", rows)))
    assert exc.value.row == 2 and exc.value.field == field and message in str(exc.value)


def test_wrong_format_and_empty(tmp_path):
    with pytest.raises(DataError, match="not an MMLU file"):
        load_mmlu(str(write_jsonl(tmp_path / "m.jsonl", [mcq_row(0)])))
    (tmp_path / "anatomy_test.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_mmlu(str(tmp_path / "anatomy_test.csv"))


def test_cross_subject_duplicates(tmp_path):
    a = write_csv(tmp_path / "college_medicine_test.csv", [["Which vitamin is fat soluble?", "C", "B12", "K", "B1", "C"],
                                                         ["Unique one?", "a", "b", "c", "d", "A"]])
    b = write_csv(tmp_path / "professional_medicine_test.csv", [["which  vitamin is FAT soluble?", "B1", "K", "B12", "C", "B"]])
    records = load_mmlu(str(a))[0] + load_mmlu(str(b))[0]
    dups = cross_subject_duplicates(records)
    assert len(dups) == 1 and dups[0]["subjects"] == ["college_medicine", "professional_medicine"]
    assert dups[0]["same_answer"] is True


cells = st.lists(st.text(max_size=5) | st.sampled_from(["A", "b", "E", " C "]), max_size=8)
json_leaf = st.none() | st.booleans() | st.integers(-2, 6) | st.floats() | st.text(max_size=4)
hub_like = st.fixed_dictionaries({}, optional={"question": json_leaf, "subject": json_leaf,
                                               "choices": st.lists(json_leaf, max_size=6) | json_leaf,
                                               "answer": json_leaf | st.sampled_from(["A", "d", "F"])})


@settings(max_examples=300, deadline=None)
@given(row=cells)
def test_any_csv_row_gives_a_record_or_a_data_error(row):
    try:
        rec = mmlu_csv_record(row, "anatomy_test.csv", 1, "anatomy")
    except DataError:
        return
    assert isinstance(rec, MCQRecord) and len(rec.options) == 4


@settings(max_examples=300, deadline=None)
@given(raw=hub_like | st.lists(json_leaf, max_size=2) | json_leaf)
def test_any_hub_row_gives_a_record_or_a_data_error(raw):
    try:
        rec = mmlu_record(raw, "h.jsonl", 1)
    except DataError:
        return
    assert isinstance(rec, MCQRecord) and 0 <= rec.answer < len(rec.options)
