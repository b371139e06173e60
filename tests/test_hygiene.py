"""Normalisation, duplicates, leakage removal, cross-subject duplicates, mixtures, aggregation, the multi policy."""

from collections import Counter

import pytest
from conftest import mcq_row, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medqa.datasets import MCQRecord, load_medmcqa
from medqa.errors import DataError
from medqa.hygiene import (
    aggregate_accuracy,
    apply_multi_policy,
    clean_records,
    count_duplicates,
    cross_subject_duplicates,
    find_leakage,
    leak_key,
    mix,
    normalize_text,
    remove_leakage,
    text_key,
)


def rec(i, q=None, opts=None, answer=0, **kw) -> MCQRecord:
    return MCQRecord(id=kw.pop("id", f"r{i}"), question=q or f"Question {i}?", options=opts or [f"a{i}", f"b{i}", f"c{i}", f"d{i}"],
                     answer=answer, **kw)


def test_normalize_text():
    assert normalize_text("ﬁbrosis\u00a0of the  lung\t") == "fibrosis of the lung"  # NFKC ligature, NBSP, tabs
    assert normalize_text("Ｖｉｔａｍｉｎ Ｂ１２") == "Vitamin B12"  # full-width
    assert normalize_text("zero\u200bwidth\u00adsoft\ufeff") == "zerowidthsoft"
    assert normalize_text(" a \r\n b\r\n\n\n\nc  ") == "a\nb\n\nc"
    assert normalize_text("x\u2028y") == "x\ny"
    assert text_key("  The  HEART\nrate ") == "the heart rate"
    assert normalize_text("2\u00b2 µg") == "22 μg"  # compatibility forms (superscript, micro sign)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_normalisation_is_idempotent(s):
    n = normalize_text(s)
    assert normalize_text(n) == n
    assert text_key(text_key(s)) == text_key(s)
    assert n == n.strip()


def test_clean_drops_exact_duplicates_and_counts_conflicts():
    records = [
        rec(0),
        rec(1, q="Question 0?\u00a0", opts=["a0", "b0 ", "c0", "d0"], id="dup-of-0"),  # same after normalising
        rec(2, q="Question 0?", opts=["a0", "b0", "c0", "d0"], answer=2, id="conflict"),  # other answer
        rec(3, q="Question 0?", opts=["b0", "a0", "c0", "d0"], answer=1, id="reordered"),  # not an exact duplicate
        rec(4),
        rec(5, opts=["x", "\u200b", "y", "z"]),  # an option that is only a zero-width space
    ]
    out, report = clean_records(records)
    assert [r.id for r in out] == ["r0", "conflict", "reordered", "r4"]
    assert report.exact_duplicates == 1 and report.label_conflicts == 1 and report.emptied == 1
    assert report.input == 6 and report.kept == 4 and report.normalized == 1
    assert report.emptied_ids == ["r5"]
    kept_all, rep2 = clean_records(records, drop_duplicates=False)
    assert len(kept_all) == 5 and rep2.exact_duplicates == 0
    assert count_duplicates(records[:5]) == {"exact": 1, "content": 3, "label_conflicts": 1}


def test_leakage_detected_through_reordering_case_and_spacing():
    train = [rec(i) for i in range(10)]
    eval_a = [rec(100, q="QUESTION  3?", opts=["d3", "c3", "b3", "a3"]), rec(101)]
    eval_b = [rec(200, q="question 7?", opts=["a7", "b7", "c7", "d7"]), rec(201, q="Question 3?", opts=["a3", "b3", "c3", "d3"])]
    rep = find_leakage(train, eval_a)
    assert rep.train_leaked == 1 and rep.eval_leaked == 1 and rep.examples == [("r3", "r100")]
    assert leak_key(train[3]) == leak_key(eval_a[0])
    clean, info = remove_leakage(train, {"a": eval_a, "b": eval_b})
    assert info["removed"] == 2 and info["by_eval"] == {"a": 1, "b": 2} and info["kept"] == 8
    assert {r.id for r in clean} == {f"r{i}" for i in range(10)} - {"r3", "r7"}
    assert not find_leakage(clean, eval_a + eval_b).train_leaked
    clean2, info2 = remove_leakage(train, eval_a)  # one list: named "eval"
    assert info2["by_eval"] == {"eval": 1} and len(clean2) == 9


def test_leakage_with_a_real_split(tmp_path):
    rows = [mcq_row(i, cop=i % 4) for i in range(20)]
    records, _ = load_medmcqa(str(write_jsonl(tmp_path / "x.jsonl", rows)))
    train, held = records[:15], records[15:]
    train = train + [held[0].model_copy(update={"id": "copied"})]
    clean, info = remove_leakage(train, held)
    assert info["removed"] == 1 and info["removed_ids"] == ["copied"] and len(clean) == 15


def test_cross_subject_duplicates():
    records = [rec(0, subject="anatomy"), rec(1, q="question 0?", opts=["b0", "a0", "c0", "d0"], answer=0, subject="college_medicine"),
               rec(2, subject="anatomy"), rec(3, q="Question 2?", opts=["a2", "b2", "c2", "d2"], subject="anatomy")]
    dups = cross_subject_duplicates(records)
    assert len(dups) == 1
    assert dups[0]["subjects"] == ["anatomy", "college_medicine"] and dups[0]["ids"] == ["r0", "r1"]
    assert dups[0]["same_answer"] is False  # a0 vs b0


def test_multi_policy():
    records = [rec(i, choice_type="multi" if i % 3 == 0 else "single") for i in range(9)]
    kept, dropped = apply_multi_policy(records, "keep")
    assert len(kept) == 9 and dropped == 0 and [r.answer for r in kept] == [r.answer for r in records]
    kept, dropped = apply_multi_policy(records, "drop")
    assert dropped == 3 and all(r.choice_type == "single" for r in kept)
    with pytest.raises(DataError, match="keep' or 'drop"):
        apply_multi_policy(records, "split")


def test_mix_by_weights_is_seeded_and_upsamples_with_unique_ids():
    a = [rec(i, id=f"a{i}", source="medmcqa") for i in range(100)]
    b = [rec(i, id=f"b{i}", source="pubmedqa") for i in range(10)]
    mixed, info = mix({"medmcqa": (a, 3), "pubmedqa": (b, 1)}, seed=1, total=80)
    assert len(mixed) == 80
    assert Counter(r.source for r in mixed) == {"medmcqa": 60, "pubmedqa": 20}
    assert info["datasets"]["pubmedqa"]["upsampled"] and not info["datasets"]["medmcqa"]["upsampled"]
    assert len({r.id for r in mixed}) == 80  # copies get #r<k> ids
    assert Counter(r.id.split("#")[0] for r in mixed if r.source == "pubmedqa") == {f"b{i}": 2 for i in range(10)}
    again, _ = mix({"medmcqa": (a, 3), "pubmedqa": (b, 1)}, seed=1, total=80)
    other, _ = mix({"medmcqa": (a, 3), "pubmedqa": (b, 1)}, seed=2, total=80)
    assert [r.id for r in again] == [r.id for r in mixed] and [r.id for r in other] != [r.id for r in mixed]
    default, info = mix([(a, 1), (b, 1)], seed=0)  # total = all inputs, shared equally
    assert len(default) == 110 and info["datasets"]["0"]["drawn"] == 55 and info["datasets"]["1"]["drawn"] == 55
    rounding, _ = mix([("x", a, 1), ("y", b, 1), ("z", b, 1)], seed=0, total=10)
    assert len(rounding) == 10
    zero, info = mix([("x", a, 1), ("y", b, 0)], seed=0, total=5)
    assert info["datasets"]["y"]["drawn"] == 0 and len(zero) == 5


@pytest.mark.parametrize(
    "arg, message",
    [({}, "no datasets"), ({"x": ([], 1)}, "no records"), ({"x": ([rec(0)], -1)}, "weight"), ({"x": ([rec(0)], 0)}, "sum to 0")],
)
def test_mix_errors(arg, message):
    with pytest.raises(DataError, match=message):
        mix(arg, seed=0)


def test_aggregate_accuracy():
    agg = aggregate_accuracy({"medmcqa": {"n": 4183, "correct": 1500}, "pubmedqa": {"n": 500, "accuracy": 0.6},
                              "mmlu": {"n": 100, "correct": 50}})
    assert agg["per_dataset"]["pubmedqa"] == {"n": 500, "correct": 300, "accuracy": 0.6}
    assert agg["n"] == 4783
    assert agg["weighted_mean"] == pytest.approx((1500 + 300 + 50) / 4783)
    assert agg["macro_mean"] == pytest.approx((1500 / 4183 + 0.6 + 0.5) / 3)
    with pytest.raises(DataError, match="n > 0"):
        aggregate_accuracy({"x": {"n": 0, "correct": 0}})
    with pytest.raises(DataError, match="'correct' or 'accuracy'"):
        aggregate_accuracy({"x": {"n": 3}})
    with pytest.raises(DataError, match="not within"):
        aggregate_accuracy({"x": {"n": 3, "correct": 4}})


def test_held_out_questions_never_train_with_up_sampling_and_near_duplicates(tmp_path):
    """Issue 14.9: calibration and eval_size questions were split after mixing and up-sampling, so copies
    of training questions landed in them (this toy mix: 16 of 20 calibration and 15 of 20 held-out questions
    also trained). Split on normalised content before mixing: zero overlap, near-duplicates included."""
    from conftest import mcq_row, write_jsonl

    from medqa.config import build_config
    from medqa.hygiene import content_key
    from medqa.recipes import training_data

    rows_a = [mcq_row(i) for i in range(40)]
    rows_a += [mcq_row(i, id=f"dupA{i}", question=f"QUESTION   number {i} about the heart!!") for i in range(5)]
    rows_b = [mcq_row(100 + i) for i in range(30)] + [mcq_row(3, id="dupB3", opa="ALPHA 3.")]
    write_jsonl(tmp_path / "a.jsonl", rows_a)
    write_jsonl(tmp_path / "b.jsonl", rows_b)
    cfg = build_config(overrides={
        "mixture": [{"dataset": "medmcqa", "path": str(tmp_path / "a.jsonl"), "weight": 1},
                    {"dataset": "medmcqa", "path": str(tmp_path / "b.jsonl"), "weight": 2}],
        "mixture_total": 200, "train.calibration_size": 20, "train.eval_size": 20})
    train, calib, held, info = training_data(cfg)
    assert len(calib) == 20 and len(held) == 20 and len(train) == 200  # up-sampled to the total
    train_keys = {content_key(r) for r in train}
    assert not any(content_key(r) in train_keys for r in calib)
    assert not any(content_key(r) in train_keys for r in held)
    assert not {content_key(r) for r in calib} & {content_key(r) for r in held}
    assert info["held_out"] == {"calibration": 20, "eval_size": 20, "by": info["held_out"]["by"]}
    # near-duplicates share a key: case, punctuation, whitespace and option order
    assert content_key(mcq_row_record(3)) == content_key(mcq_row_record(3, question="QUESTION number 3 about the heart"))


def mcq_row_record(i: int, **kw):
    from medqa.datasets import MCQRecord

    q = kw.get("question", f"Question number {i} about the heart?")
    return MCQRecord(id=f"q{i}", question=q, options=[f"beta {i}", f"alpha {i}.", f"gamma {i}", f"delta {i}"], answer=0)


def test_holding_out_everything_is_a_clear_error():
    from medqa.datasets import MCQRecord
    from medqa.datasets import hash_order
    from medqa.errors import DataError
    from medqa.hygiene import hold_out_by_content

    recs = [MCQRecord(id=f"q{i}", question=f"Q {i}?", options=["a", "b"], answer=0) for i in range(3)]
    dup = [MCQRecord(id=f"d{i}", question=f"q {i}", options=["b", "a"], answer=1) for i in range(3)]
    with pytest.raises(DataError, match="leaves none of 3 distinct"):
        hold_out_by_content({"a": recs, "b": dup}, [("calibration_size", 3, 1)], hash_order)
