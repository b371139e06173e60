"""PubMedQA: the original ori_pqal.json (keyed by PMID) + test_ground_truth.json, and Hub pqa_labeled rows."""

import json

import pytest
from conftest import mcq_row, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa.datasets import MCQRecord, load_named, load_pubmedqa, pubmedqa_record
from medqa.errors import DataError

DECISIONS = ["yes", "no", "maybe", "yes", "no", "yes"]
PMIDS = ["21645374", "16418930", "9488747", "17208539", "10808977", "23831910"]


def pqal_entry(i: int, decision: str) -> dict:
    return {
        "QUESTION": f"Does treatment {i} reduce mortality in sepsis?",
        "CONTEXTS": [f"Background sentence {i}.", f"We randomised {100 + i} patients.", "Mortality fell."],
        "LABELS": ["BACKGROUND", "METHODS", "RESULTS"],
        "MESHES": ["Sepsis", "Humans"],
        "YEAR": "2011",
        "reasoning_required_pred": decision,
        "reasoning_free_pred": decision,
        "final_decision": decision,
        "LONG_ANSWER": f"Treatment {i} answer is {decision}.",
    }


@pytest.fixture
def pqal(tmp_path):
    data = {p: pqal_entry(i, d) for i, (p, d) in enumerate(zip(PMIDS, DECISIONS))}
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data, indent=1))  # the release is one (pretty-printed) JSON object
    return path, data


def write_truth(path, pmids):
    truth = {p: DECISIONS[PMIDS.index(p)] for p in pmids}
    path.write_text(json.dumps(truth))
    return path


def test_all_rows_with_context_and_long_answer(pqal):
    path, _ = pqal
    records, report = load_pubmedqa(str(path))
    assert report.rows == report.kept == 6
    r = records[2]
    assert r.id == "9488747" and r.options == ["yes", "no", "maybe"] and r.answer == 2 and r.answer_letter == "C"
    assert r.question == "Does treatment 2 reduce mortality in sepsis?"
    assert r.context == "Background sentence 2.\nWe randomised 102 patients.\nMortality fell."
    assert r.explanation == "Treatment 2 answer is maybe." and r.source == "pubmedqa"


def test_without_context(pqal):
    records, _ = load_pubmedqa(str(pqal[0]), include_context=False)
    assert records[0].question == "Does treatment 0 reduce mortality in sepsis?" and records[0].context is None


def test_official_test_split_from_ground_truth_file(pqal, tmp_path):
    path, _ = pqal
    truth = write_truth(tmp_path / "elsewhere.json", PMIDS[:3])
    test, _ = load_pubmedqa(str(path), split="test", test_ids=str(truth))
    train, _ = load_pubmedqa(str(path), split="train", test_ids=str(truth))
    assert [r.id for r in test] == PMIDS[:3] and [r.id for r in train] == PMIDS[3:]
    with pytest.raises(DataError, match="test_ground_truth.json"):
        load_pubmedqa(str(path), split="test")
    # found beside the data file under its official name
    write_truth(tmp_path / "test_ground_truth.json", PMIDS[1:4])
    test, _ = load_named("pubmedqa", str(path), split="test")
    assert [r.id for r in test] == PMIDS[1:4]
    with pytest.raises(DataError, match="split must be test, train or all"):
        load_pubmedqa(str(path), split="dev")


def test_test_label_disagreeing_with_final_decision_names_pmid(pqal, tmp_path):
    path, _ = pqal
    truth = tmp_path / "gt.json"
    truth.write_text(json.dumps({PMIDS[0]: "no", PMIDS[1]: "no"}))
    with pytest.raises(DataError) as exc:
        load_pubmedqa(str(path), split="test", test_ids=str(truth))
    assert exc.value.row == PMIDS[0] and "disagrees" in str(exc.value)
    records, report = load_pubmedqa(str(path), split="test", test_ids=str(truth), on_bad_rows="skip")
    assert [r.id for r in records] == [PMIDS[1]] and len(report.skipped) == 1


def test_test_ids_missing_from_data_and_bad_truth_file(pqal, tmp_path):
    path, _ = pqal
    truth = tmp_path / "gt.json"
    truth.write_text(json.dumps({"99999999": "yes"}))
    with pytest.raises(DataError, match="not in ori_pqal.json"):
        load_pubmedqa(str(path), split="test", test_ids=str(truth))
    truth.write_text(json.dumps({PMIDS[0]: "perhaps"}))
    with pytest.raises(DataError, match="not yes, no or maybe"):
        load_pubmedqa(str(path), split="test", test_ids=str(truth))
    truth.write_text("[]")
    with pytest.raises(DataError, match="test_ground_truth"):
        load_pubmedqa(str(path), split="test", test_ids=str(truth))


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"final_decision": "perhaps"}, "final_decision", "not yes, no or maybe"),
        ({"final_decision": None}, "final_decision", "missing"),
        ({"QUESTION": ""}, "QUESTION", "empty"),
        ({"CONTEXTS": "one string"}, "CONTEXTS", "list of texts"),
        ({"CONTEXTS": ["ok", None]}, "CONTEXTS[1]", "missing"),
        ({"LONG_ANSWER": ["x"]}, "LONG_ANSWER", "expected text"),
    ],
)
def test_bad_entries_are_named_by_pmid(pqal, bad, field, message):
    path, data = pqal
    data[PMIDS[3]].update(bad)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        load_pubmedqa(str(path))
    assert exc.value.row == PMIDS[3] and exc.value.field == field and message in str(exc.value)
    assert f"row {PMIDS[3]}, field '{field}'" in str(exc.value)
    records, report = load_pubmedqa(str(path), on_bad_rows="skip")
    assert len(records) == 5 and report.rows == 6 and len(report.skipped) == 1


def test_labels_are_case_insensitive_and_context_optional_when_off(pqal):
    path, data = pqal
    data[PMIDS[0]]["final_decision"] = " Yes "
    del data[PMIDS[1]]["CONTEXTS"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        load_pubmedqa(str(path))
    assert exc.value.row == PMIDS[1] and exc.value.field == "CONTEXTS"
    records, _ = load_pubmedqa(str(path), include_context=False)
    assert records[0].answer == 0


def test_wrong_formats_are_named(tmp_path, pqal):
    medmcqa = write_jsonl(tmp_path / "medmcqa.jsonl", [mcq_row(i) for i in range(3)])
    with pytest.raises(DataError, match="not a PubMedQA"):
        load_pubmedqa(str(medmcqa))
    truth = write_truth(tmp_path / "truth_as_data.json", PMIDS[:2])
    with pytest.raises(DataError, match="not a PubMedQA ori_pqal.json"):
        load_pubmedqa(str(truth))
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_pubmedqa(str(tmp_path / "empty.json"))
    (tmp_path / "broken.json").write_text('{"1": {')
    with pytest.raises(DataError, match="not valid JSON"):
        load_pubmedqa(str(tmp_path / "broken.json"))
    (tmp_path / "nothing.json").write_text("{}")
    with pytest.raises(DataError, match="no rows"):
        load_pubmedqa(str(tmp_path / "nothing.json"))


def test_hub_pqa_labeled_rows(tmp_path):
    rows = [{"pubid": int(p), "question": f"Q{i}?", "context": {"contexts": ["a.", "b."], "labels": ["X", "Y"],
             "meshes": []}, "long_answer": "because", "final_decision": d} for i, (p, d) in enumerate(zip(PMIDS, DECISIONS))]
    path = write_jsonl(tmp_path / "pqa_labeled.jsonl", rows)
    records, _ = load_pubmedqa(str(path))
    assert [r.id for r in records] == PMIDS and records[1].answer == 1
    assert records[0].question == "Q0?" and records[0].context == "a.\nb."
    truth = write_truth(tmp_path / "gt.json", PMIDS[:2])
    test, _ = load_pubmedqa(str(path), split="test", test_ids=str(truth))
    assert [r.id for r in test] == PMIDS[:2]


pqal_like = st.fixed_dictionaries(
    {},
    optional={
        "QUESTION": st.none() | st.text(max_size=6) | st.integers(),
        "CONTEXTS": st.none() | st.text(max_size=4) | st.lists(st.none() | st.text(max_size=4) | st.integers(), max_size=3),
        "LABELS": st.none() | st.lists(st.text(max_size=3), max_size=3),
        "final_decision": st.sampled_from(["yes", "no", "maybe", "YES", "", "perhaps"]) | st.none() | st.floats(),
        "LONG_ANSWER": st.none() | st.text(max_size=4) | st.lists(st.integers(), max_size=2) | st.booleans(),
    },
)
json_any = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(raw=pqal_like | json_any, include_context=st.booleans(), gold=st.none() | st.sampled_from(["yes", "no", "maybe"]))
def test_any_entry_gives_a_record_or_a_data_error(raw, include_context, gold):
    try:
        rec = pubmedqa_record(raw, "ori_pqal.json", "123", include_context, gold)
    except DataError as e:
        assert e.row == "123"
        return
    assert isinstance(rec, MCQRecord) and rec.options == ["yes", "no", "maybe"] and rec.id == "123"
