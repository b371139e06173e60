import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medqa.datasets import MCQRecord, load_demo
from medqa.evaluate import (
    parse_letter,
    permutation_analysis,
    rotate,
    evaluate,
    expected_calibration_error,
    prediction_rows,
    score_records,
    summarize,
    wilson_interval,
)
from medqa.format import PromptFormat


def _load(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _mixed_records():
    demo = load_demo()[:9]
    # vary the option count (2-5) and the prompt length so batches need padding
    out = []
    for i, r in enumerate(demo):
        n = 2 + i % 4
        opts = (r.options + ["None of these findings"])[:n]
        out.append(r.model_copy(update={"options": opts, "answer": min(r.answer, n - 1)}))
    return out


def _loglik_per_option(model, fmt, rec):
    """Reference: one separate forward pass per option, log P(letter | prompt) from the full sequence."""
    prompt = fmt.encode_prompt(rec)
    scores = []
    for letter_id in fmt.letter_ids(len(rec.options)):
        ids = torch.tensor([prompt + [letter_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -2].float(), -1)
        scores.append(float(logp[letter_id]))
    return np.array(scores)


@pytest.mark.parametrize("protocol", ["chat", "lm-eval"])
def test_letter_scoring_equals_separate_loglik_passes(any_model_dir, protocol):
    model, tok = _load(any_model_dir)
    fmt = PromptFormat(tok, protocol)
    records = _mixed_records()
    probs = score_records(model, fmt, records, batch_size=4, progress=False)
    for r, p in zip(records, probs):
        ref = _loglik_per_option(model, fmt, r)
        assert len(p) == len(r.options)
        assert int(np.argmax(p)) == int(np.argmax(ref))
        # same distribution after renormalising over the letters
        ref_p = np.exp(ref - ref.max())
        np.testing.assert_allclose(p, ref_p / ref_p.sum(), atol=2e-4)


def test_batching_and_padding_do_not_change_scores(qwen_dir):
    model, tok = _load(qwen_dir)
    fmt = PromptFormat(tok, "chat")
    records = _mixed_records()
    one = score_records(model, fmt, records, batch_size=1, progress=False)
    many = score_records(model, fmt, records, batch_size=16, progress=False)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert abs(a.sum() - 1) < 1e-5


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_ece_perfect_and_overconfident():
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([0.9] * 10), np.array([0.0] * 10)) == pytest.approx(0.9)


def test_summary_baselines_and_subjects():
    recs = [MCQRecord(id=str(i), question="q", options=["a", "b", "c", "d"], answer=a, subject=s)
            for i, (a, s) in enumerate([(0, "X"), (0, "X"), (0, "Y"), (1, "Y")])]
    probs = [np.array([0.7, 0.1, 0.1, 0.1])] * 3 + [np.array([0.1, 0.2, 0.3, 0.4])]
    s = summarize(recs, probs)
    assert s["n"] == 4 and s["correct"] == 3 and s["accuracy"] == 0.75
    assert s["majority_baseline"] == 0.75 and s["majority_letter"] == "A" and s["uniform_baseline"] == 0.25
    assert s["pred_letter_distribution"] == {"A": 3, "B": 0, "C": 0, "D": 1}
    assert s["per_subject"]["X"]["accuracy"] == 1.0 and s["per_subject"]["Y"]["accuracy"] == 0.5
    rows = prediction_rows(recs, probs)
    assert rows[3] == {"id": "3", "probs": [0.1, 0.2, 0.3, 0.4], "pred": "D", "gold": "B", "correct": False,
                       "confidence": 0.4, "subject": "Y"}


def test_evaluate_writes_reports(qwen_dir, tmp_path):
    model, tok = _load(qwen_dir)
    records = load_demo()[:10]
    s = evaluate(model, PromptFormat(tok), records, tmp_path, batch_size=4, meta={"model": "tiny"}, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("accuracy", "n", "ci95", "majority_baseline", "protocol", "model"):
        assert key in summary
    assert summary == json.loads(json.dumps(s))
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    row = json.loads(lines[0])
    assert set(row) >= {"id", "probs", "pred", "gold", "correct"} and len(row["probs"]) == 4
    report = (tmp_path / "report.md").read_text()
    assert "study aid" in report and "Wilson" in report
    assert not list(tmp_path.glob(".*.tmp"))


def test_rotation_keeps_the_gold_option():
    r = load_demo()[0]
    for shift in range(4):
        rr = rotate(r, shift)
        assert rr.options[rr.answer] == r.options[r.answer]
        assert sorted(rr.options) == sorted(r.options)


def test_permutation_analysis_on_a_position_biased_scorer(qwen_dir):
    model, tok = _load(qwen_dir)
    fmt = PromptFormat(tok)
    records = load_demo()[:6]
    base = score_records(model, fmt, records, progress=False)
    res = permutation_analysis(model, fmt, records, base, k=4, progress=False)
    assert 0.0 <= res["consistency"] <= 1.0 and len(res["debiased_probs"]) == 6
    for p in res["debiased_probs"]:
        assert abs(p.sum() - 1) < 1e-5
    # a hand check of the per-content average for one question
    r = records[0]
    rotated = [score_records(model, fmt, [rotate(r, sh)], progress=False)[0] for sh in range(4)]
    by_content = np.mean([[p[(j + sh) % 4] for j in range(4)] for sh, p in enumerate(rotated)], axis=0)
    np.testing.assert_allclose(res["debiased_probs"][0], by_content, atol=1e-5)


def test_parse_letter_is_strict():
    assert parse_letter("B. SA node\nExplanation: ...", 4) == 1
    assert parse_letter("(C) AV node", 4) == 2
    assert parse_letter("D", 4) == 3
    assert parse_letter("E. five", 4) is None  # not an option here
    assert parse_letter("The answer is B", 4) is None
    assert parse_letter("", 4) is None
    assert parse_letter("Because A is ...", 4) is None


def test_generative_mode_and_plots(qwen_dir, tmp_path):
    model, tok = _load(qwen_dir)
    records = load_demo()[:5]
    s = evaluate(model, PromptFormat(tok), records, tmp_path, batch_size=4, progress=False, generate=True,
                 max_new_tokens=6, permutations=2)
    g = s["generative"]
    # a random tiny model rarely opens with a letter: unparseable answers count as wrong, never defaulted
    assert g["unparseable"] + round(g["accuracy"] * 5) <= 5
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all("generated" in r and "debiased_probs" in r for r in rows)
    for r in rows:
        assert r["generated_pred"] is None or r["generated"].lstrip("( ").startswith(r["generated_pred"])
    for png in ("reliability.png", "letters.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Generative mode" in (tmp_path / "report.md").read_text()
    assert s["brier"] >= 0 and s["robustness"]["permutations"] == 2


def test_few_shot_prompts(qwen_dir, plain_dir):
    shots = load_demo()[10:12]
    r = load_demo()[0]
    chat = PromptFormat(AutoTokenizer.from_pretrained(qwen_dir), "chat", shots=shots)
    p = chat.prompt(r)
    assert p.count("<|im_start|>user") == 3 and p.count("<|im_start|>assistant") == 3
    assert chat.answer_text(shots[0]) in p and p.endswith("<think>\n\n</think>\n\n")
    lm = PromptFormat(AutoTokenizer.from_pretrained(plain_dir), "lm-eval", shots=shots)
    q = lm.prompt(r)
    assert q.count("Answer:") == 3 and f"Answer: {shots[1].answer_letter}\n\nQuestion:" in q


def _held_records():
    """Two demo questions, one whose options point at other options, and one PubMedQA yes/no/maybe question."""
    demo = load_demo()[:2]
    both = MCQRecord(id="both", question="Which causes mottled enamel?", options=["Fluorosis", "Dental Caries", "Both", "None"],
                     answer=0, source="medmcqa")
    pubmed = MCQRecord(id="pm", question="Does drug X lower blood pressure?", context="A trial of drug X.",
                       options=["yes", "no", "maybe"], answer=2, source="pubmedqa")
    return demo + [both, pubmed]


def test_rotation_holds_options_that_point_at_others_and_pubmedqa_labels():
    for r in _held_records()[2:]:
        for shift in range(4):
            assert rotate(r, shift) == r  # kept in its original order under every "permutation"
    r = load_demo()[0]
    assert rotate(r, 1).options == [r.options[-1]] + r.options[:-1]


def test_permutation_analysis_holds_fixed_questions_and_says_how_many(qwen_dir):
    model, tok = _load(qwen_dir)
    fmt = PromptFormat(tok)
    records = _held_records()
    base = score_records(model, fmt, records, progress=False)
    res = permutation_analysis(model, fmt, records, base, k=4, progress=False)
    assert res["held_fixed"] == 2 and res["permuted"] == 2
    for i in (2, 3):
        np.testing.assert_allclose(res["debiased_probs"][i], base[i], atol=1e-7)  # never rotated, never averaged
    r = records[0]
    rotated = [score_records(model, fmt, [rotate(r, sh)], progress=False)[0] for sh in range(4)]
    by_content = np.mean([[p[(j + sh) % 4] for j in range(4)] for sh, p in enumerate(rotated)], axis=0)
    np.testing.assert_allclose(res["debiased_probs"][0], by_content, atol=1e-5)


def test_permutations_are_scaled_with_the_same_temperature(qwen_dir, tmp_path):
    """With T != 1 every permutation's probabilities are temperature-scaled before the per-content average,
    not only the unpermuted ones."""
    from medqa.calibrate import apply_temperature

    model, tok = _load(qwen_dir)
    fmt = PromptFormat(tok)
    records, t, k = load_demo()[:4], 0.2, 3
    evaluate(model, fmt, records, tmp_path, batch_size=4, progress=False, permutations=k,
             calibration={"temperature": t, "abstain_threshold": None})
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for r, row in zip(records, rows):
        scaled = apply_temperature([score_records(model, fmt, [rotate(r, sh)], progress=False)[0] for sh in range(k)], t)
        want = np.mean([[p[(j + sh) % 4] for j in range(4)] for sh, p in enumerate(scaled)], axis=0)
        np.testing.assert_allclose(row["debiased_probs"], want, atol=2e-5)
        np.testing.assert_allclose(row["probs"], scaled[0], atol=2e-5)


def test_generated_pubmedqa_answers_parse_as_training_taught(qwen_tokenizer):
    """lm-eval's PubMedQA prompt teaches ' yes'/' no'/' maybe' (not letters): generation is parsed the same way."""
    from medqa.evaluate import parse_answer

    rec = MCQRecord(id="p", question="Does it?", options=["yes", "no", "maybe"], answer=1, source="pubmedqa",
                    context="An abstract.")
    lm = PromptFormat(qwen_tokenizer, "lm-eval")
    assert parse_answer(" no. Because the trial ...", rec, lm) == 1
    assert parse_answer(" Maybe", rec, lm) == 2
    assert parse_answer(" B. no", rec, lm) is None and parse_answer(" perhaps", rec, lm) is None
    chat = PromptFormat(qwen_tokenizer, "chat")
    assert parse_answer("B. no", rec, chat) == 1 and parse_answer("no", rec, chat) is None


# ----------------------------------------------------------------------------- thinking mode (issue 17.2)


def _thinking_row(pred, gold, parsed, tokens, cut_off=False):
    return {"pred": pred, "gold": gold, "correct": pred == gold, "generated_pred": parsed,
            "generated_correct": parsed == gold, "generated_tokens": tokens, "cut_off": cut_off}


def test_thinking_summary_accounting():
    """Constructed per-question results: accuracy with its Wilson interval beside letter scoring's, agreement,
    paired counts, unparseable counted wrong, tokens per question and the cut-off share."""
    from medqa.evaluate import thinking_summary

    rows = [
        _thinking_row("A", "A", "A", 100),               # both right, agree
        _thinking_row("B", "A", "A", 200),               # thinking right only
        _thinking_row("A", "A", "C", 300),               # scoring right only
        _thinking_row("C", "A", None, 1024, True),       # unparseable (cut off): wrong, disagrees
        _thinking_row("D", "B", None, 50),               # unparseable, not cut off
        _thinking_row("D", "B", "D", 150),               # both wrong, agree
    ]
    t = thinking_summary(rows, max_new_tokens=1024)
    assert (t["n"], t["correct"], t["accuracy"]) == (6, 2, 2 / 6)
    assert t["ci95"] == list(wilson_interval(2, 6))
    assert t["letter_scoring"] == {"correct": 2, "accuracy": 2 / 6, "ci95": list(wilson_interval(2, 6))}
    assert t["agreement_with_letter_scoring"] == 2 / 6
    assert t["paired"] == {"both_correct": 1, "thinking_only": 1, "scoring_only": 1, "neither": 3}
    assert (t["unparseable"], t["unparseable_share"]) == (2, 2 / 6)
    assert t["tokens"] == {"mean": 1824 / 6, "median": 175.0, "max": 1024, "total": 1824}
    assert (t["cut_off"], t["cut_off_share"], t["max_new_tokens"]) == (1, 1 / 6, 1024)
    # an unparseable answer whose gold happens to be... nothing: None never equals a gold letter
    assert thinking_summary([_thinking_row("A", "A", None, 5)], 8)["correct"] == 0
    empty = thinking_summary([], 8)
    assert empty["accuracy"] == 0.0 and empty["ci95"] == [0.0, 0.0] and empty["tokens"]["mean"] == 0.0


REASONED = "<think>\nThe deltoid is supplied by C5-C6 through the posterior cord.\n</think>\n\nAnswer: B"


@pytest.fixture(scope="module")
def qwen_loaded(qwen_dir):
    return _load(qwen_dir)


def _scripted_thinking_eval(loaded, tmp_path, text, max_new_tokens, letter_logits=(1.0, 3.0, 0.5, 0.0, -1.0)):
    from test_predict import Script

    model, tok = loaded
    records = load_demo()[:5]
    script = Script(model, tok, explanation=text, letter_logits=letter_logits)
    try:
        s = evaluate(model, PromptFormat(tok), records, tmp_path, batch_size=2, progress=False, generate=True,
                     thinking=True, max_new_tokens=max_new_tokens)
    finally:
        script.remove()
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    return s, rows, records, script


def test_thinking_mode_reads_the_final_answer_line(qwen_loaded, tmp_path):
    """Real batched generation (a scripted tiny model): <think> kept in the text, the letter read strictly from
    the final line, tokens counted to the end-of-turn token, nothing cut off."""
    from medqa.reasoning import parse_final_answer

    s, rows, records, script = _scripted_thinking_eval(qwen_loaded, tmp_path, REASONED, max_new_tokens=64)
    t = s["thinking"]
    assert "generative" not in s and t["mode"] == "thinking" and t["template_thinking"]
    assert len(script.prompts) == 3  # 5 questions in batches of 2
    assert "Answer: X" in qwen_loaded[1].decode(script.prompts[0])  # the reasoning prompt, not the letter one
    for row, rec in zip(rows, records, strict=True):
        assert row["generated"].startswith("<think>") and row["generated"].endswith("Answer: B")
        assert row["reasoning"] == "The deltoid is supplied by C5-C6 through the posterior cord."
        assert (row["final_line"], row["generated_pred"], row["well_formed"]) == ("Answer: B", "B", True)
        assert row["generated_correct"] == (rec.answer == 1) and row["pred"] == "B"  # letter scoring favours B
        assert row["generated_tokens"] == len(script.ids) and row["cut_off"] is False
    assert t["accuracy"] == sum(r.answer == 1 for r in records) / 5
    assert t["agreement_with_letter_scoring"] == 1.0 and t["unparseable"] == 0 and t["cut_off_share"] == 0.0
    assert t["tokens"]["mean"] == len(script.ids) and t["max_new_tokens"] == 64
    report = (tmp_path / "report.md").read_text()
    assert "## Thinking mode" in report and "| one-pass letter scoring | 5 |" in report
    assert "Cut off at max_new_tokens = 64: 0 of 5 (0.0%)" in report and "Generative mode" not in report
    # the same parse as the one strict parser, on the stored texts
    for row in rows:
        assert parse_final_answer(row["generated"], 4).letter == row["generated_pred"]


def test_thinking_mode_cut_off_at_the_token_limit_is_unparseable_and_wrong(qwen_loaded, tmp_path):
    s, rows, _, _ = _scripted_thinking_eval(qwen_loaded, tmp_path, REASONED, max_new_tokens=6)
    t = s["thinking"]
    assert all(r["cut_off"] and r["generated_tokens"] == 6 and r["generated_pred"] is None for r in rows)
    assert all(r["generated"].startswith("<think>") and not r["generated_correct"] for r in rows)
    assert (t["accuracy"], t["unparseable"], t["cut_off"], t["cut_off_share"]) == (0.0, 5, 5, 1.0)
    assert t["agreement_with_letter_scoring"] == 0.0 and t["tokens"]["median"] == 6.0


def test_thinking_mode_on_a_random_tiny_model_counts_what_it_parses(any_model_dir, tmp_path):
    """Unscripted generation (chat template with a thinking switch, ChatML, plain prompt): whatever the model
    writes, the stored accounting is parse_final_answer's on the stored texts and the summary is recomputable."""
    from medqa.evaluate import thinking_summary
    from medqa.reasoning import parse_final_answer

    model, tok = _load(any_model_dir)
    records = load_demo()[:3]
    s = evaluate(model, PromptFormat(tok), records, tmp_path, batch_size=2, progress=False, generate=True,
                 thinking=True, max_new_tokens=8)
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for row, rec in zip(rows, records, strict=True):
        parsed = parse_final_answer(row["generated"], len(rec.options))
        assert row["generated_pred"] == parsed.letter and row["final_line"] == parsed.final_line
        assert row["generated_correct"] == (parsed.index == rec.answer)
        assert 1 <= row["generated_tokens"] <= 8 and row["cut_off"] == (row["generated_tokens"] == 8)
    want = thinking_summary(rows, 8)
    assert {k: s["thinking"][k] for k in want} == json.loads(json.dumps(want))
