"""medqa.report: the one way accuracy, its 95 % interval and the majority baseline are written."""

from __future__ import annotations

from medqa import report

S = {"n": 40, "accuracy": 0.45, "ci95": [0.3107, 0.5972], "majority_baseline": 0.3, "ece": 0.0712,
     "pred_letter_distribution": {"A": 10, "B": 30}}


def test_pct_ci_and_with_ci():
    assert report.pct(0.4567) == "45.7%" and report.pct(1) == "100.0%"
    assert report.ci_text([0.3107, 0.5972]) == "31.1%–59.7%"
    assert report.ci_text((0.1, 0.2), sep="-") == "10.0%-20.0%"
    assert report.with_ci(0.45, [0.3107, 0.5972]) == "45.0% (31.1%–59.7%)"
    assert report.accuracy_cells(S) == ["45.0%", "31.1%–59.7%", "30.0%"]
    assert report.accuracy_cells(S, bold=True)[0] == "**45.0%**"


def test_markdown_table_header_rows_and_empty_cells():
    text = report.markdown_table([["a", 1, ""], ["b", "", "x"]], ("name", "n", "note"))
    assert text == "| name | n | note |\n|---|---|---|\n| a | 1 | |\n| b | | x |\n"


def test_before_after_table_is_the_quickstart_table():
    after = {**S, "accuracy": 0.6, "ci95": [0.45, 0.73], "pred_letter_distribution": {"A": 20, "B": 20}}
    assert report.before_after_table(S, after) == (
        "| model | accuracy | 95 % CI | majority baseline | ECE | predicted letters |\n"
        "|---|---|---|---|---|---|\n"
        "| base (zero-shot) | 45.0% | 31.1%–59.7% | 30.0% | 0.071 | A:10 B:30 |\n"
        "| base + LoRA | 60.0% | 45.0%–73.0% | 30.0% | 0.071 | A:20 B:20 |\n"
    )


def test_multi_set_table_rows_weighted_and_macro_means():
    summary = {"n": 60, "accuracy": 0.5, "ci95": [0.375, 0.625], "majority_baseline": 0.35, "macro_accuracy": 0.525,
               "per_dataset": {"medmcqa": S, "pubmedqa": {**S, "n": 20, "accuracy": 0.6, "majority_baseline": 0.45}}}
    assert report.multi_set_table(summary) == (
        "| dataset | n | accuracy | 95 % CI | majority baseline |\n"
        "|---|---|---|---|---|\n"
        "| medmcqa | 40 | 45.0% | 31.1%–59.7% | 30.0% |\n"
        "| pubmedqa | 20 | 60.0% | 31.1%–59.7% | 45.0% |\n"
        "| **size-weighted mean** | 60 | 50.0% | 37.5%–62.5% | 35.0% |\n"
        "| macro mean | | 52.5% | | |\n"
    )


def test_subject_and_letter_tables():
    summary = {"per_subject": {"Anatomy": {"n": 3, "accuracy": 2 / 3, "ci95": [0.2, 0.94]}}, "macro_subject_accuracy": 2 / 3,
               "gold_letter_distribution": {"A": 2, "B": 1}, "pred_letter_distribution": {"A": 3}}
    assert report.subject_table(summary) == ("| subject | n | accuracy | 95 % CI |\n|---|---|---|---|\n"
                                             "| Anatomy | 3 | 66.7% | 20.0%–94.0% |\n| macro mean | 1 subjects | 66.7% | |\n")
    assert report.letter_table(summary) == "| letter | gold | predicted |\n|---|---|---|\n| A | 2 | 3 |\n| B | 1 | 0 |\n"


def test_thinking_section_sits_beside_the_letter_score():
    """Issue 17.2: thinking-mode accuracy with its interval beside the one-pass letter score, agreement, paired
    counts, unparseable answers, tokens per question and the cut-off share."""
    thinking = {"n": 40, "accuracy": 0.5, "ci95": [0.352, 0.648], "template_thinking": True,
                "letter_scoring": {"correct": 18, "accuracy": 0.45, "ci95": [0.3107, 0.5972]},
                "agreement_with_letter_scoring": 0.625,
                "paired": {"both_correct": 15, "thinking_only": 5, "scoring_only": 3, "neither": 17},
                "unparseable": 4, "unparseable_share": 0.1, "tokens": {"mean": 412.25, "median": 388.0, "max": 1024},
                "cut_off": 3, "cut_off_share": 0.075, "max_new_tokens": 1024}
    text = report.thinking_section({"thinking": thinking})
    assert text.startswith("## Thinking mode\n") and "the chat template's thinking mode" in text
    assert ("| mode | n | accuracy | 95 % CI |\n|---|---|---|---|\n"
            "| one-pass letter scoring | 40 | 45.0% | 31.1%–59.7% |\n"
            "| thinking: reasoning, then 'Answer: X' | 40 | **50.0%** | 35.2%–64.8% |\n") in text
    assert "- Agreement with letter scoring (parsed letter = letter scoring's choice): 62.5%\n" in text
    assert "- Paired: both correct 15, only thinking 5, only letter scoring 3, neither 17\n" in text
    assert "- Unparseable (counted wrong): 4 of 40 (10.0%)\n" in text
    assert "- Tokens generated per question: mean 412.2, median 388, max 1024\n" in text
    assert text.endswith("- Cut off at max_new_tokens = 1024: 3 of 40 (7.5%)\n")
    plain = report.thinking_section({"thinking": {**thinking, "template_thinking": False}})
    assert "plain-text rationale" in plain
