"""medqa.inference: the one Answerer (scoring, calibration, generation under one stop rule, abstention)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_predict import ABSTAIN_ALL_CAL, EXPLANATION, OPTIONS, QUESTION, THRESHOLD_CAL, Script, make_adapter

from medqa import evaluate as evaluate_mod
from medqa import inference
from medqa.calibrate import abstains, apply_temperature
from medqa.config import ModelConfig, RunConfig
from medqa.datasets import load_demo
from medqa.format import PromptFormat
from medqa.inference import Answerer, InputError, score_records
from medqa.inference_stream import StopRule, stop_rule, stopping_criteria
from medqa.modeling import load_model


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return load_model(ModelConfig(name=str(qwen_dir), device="cpu"))


def test_building_an_answerer_touches_no_weights():
    class Boom:
        def parameters(self):
            raise AssertionError("the model was used")

    a = Answerer(Boom(), None)
    assert a.protocol == "chat" and a.calibration == {} and a.temperature == 1.0
    with pytest.raises(InputError, match="is empty"):
        a.answer("", ["a", "b"])


def test_score_equals_evaluates_scoring(qwen, tmp_path):
    model, tok = qwen
    records = load_demo()[:6]
    a = Answerer(model, tok)
    raw = a.score(records, raw=True, batch_size=4)
    assert evaluate_mod.score_records is score_records  # evaluate scores through inference
    summary = evaluate_mod.evaluate(model, a.fmt, records, tmp_path, batch_size=3, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for row, p in zip(rows, raw, strict=True):
        np.testing.assert_allclose(row["probs"], p, atol=2e-6)
    assert summary["n"] == len(records)


def test_calibrated_and_raw_scores(qwen):
    model, tok = qwen
    records = load_demo()[:4]
    plain = Answerer(model, tok)
    hot = Answerer(model, tok, calibration={"temperature": 2.0, "abstain_threshold": None})
    raw = hot.score(records, raw=True)
    for got, want in zip(hot.score(records), apply_temperature(raw, 2.0), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-9)
    for got, want in zip(plain.score(records), raw, strict=True):  # identity calibration: the raw scores
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert max(p.max() for p in hot.score(records)) < max(p.max() for p in raw) + 1e-9  # T > 1 flattens


def test_from_config_brings_the_adapters_base_protocol_and_calibration(qwen_dir, tmp_path):
    adapter = make_adapter(qwen_dir, tmp_path / "adapter", protocol="lm-eval", calibration=THRESHOLD_CAL)
    a = Answerer.from_config(RunConfig(model=ModelConfig(adapter=str(adapter), device="cpu")))
    assert a.protocol == "lm-eval" and a.fmt.protocol == "lm-eval"
    assert a.calibration["abstain_threshold"] == 0.3 and a.config.model.adapter == str(adapter)
    assert a.model.config.model_type == "qwen3"
    chat = Answerer.from_config(RunConfig.model_validate({"model": {"adapter": str(adapter), "device": "cpu"},
                                                          "eval": {"protocol": "chat"}}))
    assert chat.protocol == "chat"  # eval.protocol wins


def test_one_stop_rule_for_batched_generation_and_streaming(qwen):
    """Evaluation's generation and predict's streaming stop at the same place: the format's end of turn."""
    model, tok = qwen
    a = Answerer(model, tok)
    rule = stop_rule(a.fmt)
    end_id = a.fmt.encode(a.fmt.end_text)[0]
    assert rule.ids[0] == end_id and tok.eos_token_id in rule.ids and rule.seq is None
    s = Script(model, tok)
    try:
        streamed = a.answer(QUESTION, OPTIONS, threshold=0.5, max_new_tokens=64)
        prompt = s.prompts[-1]
        generated = a.generate([prompt], max_new_tokens=64)
        batched = inference.generate_answers(model, a.fmt, load_demo()[:2], batch_size=2, max_new_tokens=64,
                                             progress=False)
    finally:
        s.remove()
    assert streamed.explanation == EXPLANATION and streamed.stop_reason == "end_of_turn"
    assert generated == [EXPLANATION]  # the same text, cut at the same token
    assert batched == [EXPLANATION, EXPLANATION]


def test_a_multi_token_end_marker_stops_each_row():
    rule = StopRule(ids=[0], seq=[5, 6], end_text="<END>", pad_id=0)
    hit = stopping_criteria(rule)[0](torch.tensor([[1, 5, 6], [5, 6, 7]]), None)
    assert hit.tolist() == [True, False]
    assert rule.cut("because<END>junk") == "because" and rule.ended(None, "x<END>")
    assert StopRule(ids=[0], seq=None, end_text="<END>", pad_id=0).cut("a<END>b") == "a<END>b"


@pytest.mark.parametrize("conf", [0.1, 0.29, 0.3, 0.55, 0.9])
@pytest.mark.parametrize("cal", [{}, THRESHOLD_CAL, ABSTAIN_ALL_CAL])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_decide_is_calibrate_abstains(conf, cal, threshold):
    probs = np.array([conf, 1 - conf]) if conf >= 0.5 else np.array([conf, conf / 2, 1 - 1.5 * conf])
    d = Answerer(object(), None, calibration=cal).decide(probs, threshold)
    assert d["low_confidence"] == abstains(float(probs.max()), cal, threshold, inference.DEFAULT_THRESHOLD)
    assert (d["abstention"] is not None) == d["low_confidence"]


def test_abstention_is_decided_in_one_place(qwen, monkeypatch):
    """predict and the demo answer through Answerer.decide; nothing else decides whether to abstain."""
    from medqa import predict

    model, tok = qwen
    seen = []
    real = Answerer.decide

    def spy(self, probs, threshold=None):
        d = real(self, probs, threshold)
        seen.append(d["low_confidence"])
        return d

    monkeypatch.setattr(Answerer, "decide", spy)
    monkeypatch.setattr(model, "medqa_calibration", ABSTAIN_ALL_CAL, raising=False)
    pred = predict.answer(model, tok, QUESTION, OPTIONS, explain=False)
    assert seen == [True] and pred.low_confidence and "every answer" in pred.abstention
    assert not predict.answer(model, tok, QUESTION, OPTIONS, threshold=0.0, explain=False).low_confidence
    assert seen == [True, False]


def test_scores_for_a_prompt_format_of_lm_eval(qwen):
    model, tok = qwen
    records = load_demo()[:3]
    a = Answerer(model, tok, protocol="lm-eval")
    want = score_records(model, PromptFormat(tok, "lm-eval"), records, progress=False)
    for got, w in zip(a.score(records), want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-9)


# ----------------------------------------------------------------------------- plain Transformers + PEFT (issue 16.4a)


def _plain_letter_probs(model, tok, prompt: str, letters: list[str], temperature: float = 1.0) -> np.ndarray:
    """What a user computes without MedQA: one unpadded forward pass, the last position's logits, a softmax
    over the option letters' token ids (each letter one token), divided by calibration.json's temperature."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    letter_ids = [tok.convert_tokens_to_ids(tok.tokenize(L)) for L in letters]
    assert all(len(x) == 1 for x in letter_ids), letter_ids
    with torch.no_grad():
        logits = model(**ids).logits[0, -1].double()
    return torch.softmax(logits[[x[0] for x in letter_ids]] / temperature, dim=-1).numpy()


@pytest.mark.parametrize("temperature", [None, 2.0])
def test_a_trained_adapter_gives_evals_probabilities_in_plain_peft(qwen_dir, tmp_path_factory, tmp_path, temperature):
    """Issue 16.4a: the adapter `medqa train` saved loads with plain `PeftModel.from_pretrained` on the base (the
    model card's snippet) and, with the tokenizer saved beside it and the prompt built the documented way (the
    tokenizer's chat template, enable_thinking=False), gives the letter probabilities `medqa eval` writes to
    predictions.jsonl (temperature-scaled by calibration.json) and `Answerer.score` returns, within 1e-5."""
    from conftest import mcq_row, write_jsonl
    from peft import PeftModel
    from ship_runs import copy_run, trained_run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqa.cli import main as cli_main
    from medqa.datasets import LETTERS, MCQRecord
    from medqa.format import messages

    run = trained_run(qwen_dir, tmp_path_factory)  # the real `medqa train` (+ a strengthened adapter)
    if temperature is not None:
        run = copy_run(run, tmp_path / "run", {"temperature": temperature, "abstain_threshold": None})
    adapter = run / "adapter"
    cal = json.loads((adapter / "calibration.json").read_text())
    assert cal["temperature"] == (temperature or 1.0)
    # questions of different lengths: eval left-pads them into one batch, the plain pass has no padding
    rows = [mcq_row(i, cop=i % 4, question=f"Question {i}: " + "which structure of the heart? " * (1 + 3 * i))
            for i in range(5)]
    data = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "eval"
    assert cli_main(["eval", "--adapter", str(adapter), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    evald = {r["id"]: r["probs"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert sorted(evald) == [r["id"] for r in rows]

    # plain Transformers + PEFT, as the model card says
    base = AutoModelForCausalLM.from_pretrained(str(qwen_dir))
    assert base.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(str(adapter))
    records = [MCQRecord(id=r["id"], question=r["question"], options=[r[k] for k in ("opa", "opb", "opc", "opd")],
                         answer=r["cop"]) for r in rows]
    prompts = [tok.apply_chat_template(messages(rec), tokenize=False, add_generation_prompt=True, enable_thinking=False)
               for rec in records]
    assert prompts == [PromptFormat(tok).prompt(rec) for rec in records]  # the documented prompt is MedQA's
    assert prompts[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    base.eval()
    plain_base = [_plain_letter_probs(base, tok, p, LETTERS[:4]) for p in prompts]
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    plain = [_plain_letter_probs(model, tok, p, LETTERS[:4], cal["temperature"]) for p in prompts]
    raw = [_plain_letter_probs(model, tok, p, LETTERS[:4]) for p in prompts]

    for rec, p, r, b in zip(records, plain, raw, plain_base, strict=True):
        np.testing.assert_allclose(evald[rec.id], p, atol=1e-5, rtol=0, err_msg=rec.id)
        assert np.abs(r - b).max() > 1e-3  # the adapter changes the answer probabilities: the check is not vacuous
    scorer = Answerer.from_config(RunConfig(model=ModelConfig(adapter=str(adapter), device="cpu")))
    assert scorer.temperature == cal["temperature"]
    for got, want in zip(scorer.score(records), plain, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for got, want in zip(scorer.score(records, raw=True), raw, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if temperature is not None:  # calibration.json's temperature is applied: the scaled and raw ones differ
        assert max(np.abs(p - r).max() for p, r in zip(plain, raw)) > 1e-3


# ----------------------------------------------------------------------------- thinking mode (issue 17.2)

REASONED = "<think>\nC5-C6, posterior cord: the axillary nerve.\n</think>\n\nAnswer: B"


def _thinking_answer(model, tok, text, **kw):
    s = Script(model, tok, explanation=text)  # letter scoring prefers A (logits 3, 1, 0.5, 0)
    try:
        a = Answerer(model, tok)
        snaps = list(a.answer_stream(QUESTION, OPTIONS, threshold=0.5, thinking=True, **kw))
        prompt = s.prompts[-1]
    finally:
        s.remove()
    return a, snaps, prompt


def test_thinking_answer_streams_the_reasoning_then_answers_with_its_letter(qwen):
    """The reasoning streams through the one stop rule; the answer is the letter of its final line; the confidence
    is letter scoring's calibrated probability of that letter, flagged by the one abstention rule; the
    disagreement with letter scoring is said."""
    from medqa.datasets import MCQRecord
    from medqa.inference import reasoning_ids

    model, tok = qwen
    a, snaps, prompt = _thinking_answer(model, tok, REASONED, max_new_tokens=64)
    rec = MCQRecord(id="predict", question=QUESTION, options=OPTIONS, answer=0)
    assert prompt == reasoning_ids(a.fmt, rec)  # the reasoning prompt, not the letter or explanation one
    first, last = snaps[0], snaps[-1]
    assert first.letter == "A" and first.thinking["status"] == "reasoning" and not first.done
    assert all(not s.done for s in snaps[:-1]) and last.done and len(snaps) > 3
    assert last.explanation == REASONED and last.stop_reason == "end_of_turn"
    t = last.thinking
    assert (t["letter"], t["scored_letter"], t["agrees"], t["cut_off"]) == ("B", "A", False, False)
    assert t["reasoning"] == "C5-C6, posterior cord: the axillary nerve." and t["final_line"] == "Answer: B"
    assert t["tokens"] == last.generated_tokens > 0
    # batched evaluation generates the same text from the same prompt
    s = Script(model, tok, explanation=REASONED)
    try:
        batched = a.reason([rec], max_new_tokens=64)
        probs = a.score([rec])[0]
    finally:
        s.remove()
    assert (last.letter, last.index, last.option) == ("B", 1, OPTIONS[1])
    assert last.confidence == pytest.approx(probs[1], abs=1e-6) and last.probabilities == first.probabilities
    assert probs[0] > probs[1] and first.confidence == pytest.approx(probs[0], abs=1e-6)
    assert last.low_confidence and last.abstention.startswith("The chosen option (B) has only 11%")
    assert "disagree" in t["note"] and "A (" in t["note"]
    assert batched[0].text == last.explanation and batched[0].tokens == t["tokens"] and not batched[0].cut_off


def test_thinking_without_a_final_line_or_cut_off_abstains_on_letter_scorings_answer(qwen):
    model, tok = qwen
    _, snaps, _ = _thinking_answer(model, tok, "I am not sure about this one.", max_new_tokens=64)
    last = snaps[-1]
    assert last.thinking["letter"] is None and last.thinking["agrees"] is None and not last.thinking["cut_off"]
    assert last.letter == "A" and last.low_confidence and "no parseable final 'Answer: X' line" in last.abstention
    _, snaps, _ = _thinking_answer(model, tok, REASONED, max_new_tokens=5)
    last = snaps[-1]
    assert last.thinking["cut_off"] and last.thinking["tokens"] == 5 and last.stop_reason == "max_new_tokens"
    assert last.letter == "A" and last.low_confidence and "cut off at 5 tokens" in last.abstention


def test_thinking_mode_agreeing_with_letter_scoring_keeps_its_confidence(qwen):
    model, tok = qwen
    a, snaps, _ = _thinking_answer(model, tok, REASONED.replace("Answer: B", "Answer: A"), max_new_tokens=64)
    last, first = snaps[-1], snaps[0]
    assert last.letter == "A" and last.thinking["agrees"] is True and last.confidence == first.confidence
    assert last.low_confidence == first.low_confidence is False and last.abstention is None
    assert "letter scoring's choice too" in last.thinking["note"]
    assert last.to_dict()["thinking"]["letter"] == "A"
    assert a.answer(QUESTION, OPTIONS, explain=False, thinking=True).thinking is None  # no generation: no reasoning
