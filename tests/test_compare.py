import json
import math

import pytest
from conftest import write_jsonl

from medqa.cli import main
from medqa.compare import compare_runs, mcnemar_exact
from medqa.errors import DataError


def _run(tmp_path, name, correct):
    d = tmp_path / name
    d.mkdir()
    write_jsonl(d / "predictions.jsonl", [{"id": f"q{i}", "correct": c} for i, c in enumerate(correct)])
    return d


def test_mcnemar_exact_hand_worked():
    # 1 fixed, 9 broken: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 20) == pytest.approx(2 * sum(math.comb(23, i) for i in range(4)) / 2**23)


def test_compare_counts_fixed_and_broken(tmp_path, capsys):
    a = _run(tmp_path, "a", [1, 1, 0, 0, 1, 0])
    b = _run(tmp_path, "b", [1, 0, 1, 1, 1, 0])
    r = compare_runs(a, b)
    assert (r["fixed"], r["broken"], r["both_right"], r["both_wrong"]) == (2, 1, 2, 1)
    assert r["accuracy_a"] == 0.5 and r["accuracy_b"] == pytest.approx(4 / 6)
    assert r["fixed_ids"] == ["q2", "q3"] and r["broken_ids"] == ["q1"]
    assert main(["compare", str(a), str(b)]) == 0
    assert "exact McNemar p = 1" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fixed"] == 2


def test_compare_refuses_different_questions(tmp_path):
    a = _run(tmp_path, "a", [1, 0, 1])
    b = _run(tmp_path, "b", [1, 0])
    with pytest.raises(DataError, match="same questions"):
        compare_runs(a, b)
    with pytest.raises(DataError, match="no predictions.jsonl"):
        compare_runs(tmp_path / "missing", b)


def test_thinking_compares_the_generated_answers(tmp_path, capsys):
    def run(name, letter, generated):
        d = tmp_path / name
        d.mkdir()
        write_jsonl(d / "predictions.jsonl", [{"id": f"q{i}", "correct": c, "generated_correct": g}
                                              for i, (c, g) in enumerate(zip(letter, generated))])
        return d

    a = run("sft", [1, 1, 0, 0], [0, 0, 0, 1])
    b = run("grpo", [1, 1, 0, 0], [1, 1, 1, 1])  # same letter scoring, three more right when reasoning
    assert compare_runs(a, b)["fixed"] == 0
    r = compare_runs(a, b, thinking=True)
    assert (r["fixed"], r["broken"], r["accuracy_b"]) == (3, 0, 1.0)
    assert main(["compare", str(a), str(b), "--thinking"]) == 0
    assert "generated answers (thinking mode)" in capsys.readouterr().out
    letter_only = _run(tmp_path, "plain", [1, 0, 1, 0])
    with pytest.raises(DataError, match="--eval.thinking true"):
        compare_runs(letter_only, b, thinking=True)
