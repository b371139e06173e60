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
