"""`inspect_records` statistics, the PNG histogram and the `medqa data inspect` command."""

import argparse
import json

import pytest
from conftest import MEDMCQA_VALIDATION, mcq_row, write_jsonl

from medqa.datasets import MCQRecord, load_medmcqa
from medqa.errors import DataError
from medqa.inspect import add_data_parser, add_inspect_parser, inspect_main, inspect_records


def rec(i, answer=0, **kw) -> MCQRecord:
    return MCQRecord(id=kw.pop("id", f"r{i}"), question=kw.pop("question", f"Question {i} about the kidney?"),
                     options=kw.pop("options", [f"a{i}", f"b{i}", f"c{i}", f"d{i}"]), answer=answer, **kw)


@pytest.fixture
def splits():
    train = [rec(i, answer=i % 3, subject="Physiology" if i % 2 else "Anatomy", explanation="why" if i < 6 else None,
                 choice_type="single") for i in range(12)]
    train.append(rec(0, id="dup", subject="Anatomy"))  # exact duplicate of r0
    test = [rec(100 + i, answer=3, subject="Anatomy") for i in range(4)] + [rec(5, id="leak", subject="Surgery",
                                                                               answer=2)]
    return {"train": train, "test": test}


def test_counts_letters_baselines_and_coverage(splits):
    s = inspect_records(splits)
    assert s["n"] == 18 and s["splits"] == {"train": 13, "test": 5}
    assert s["subjects"] == {"Anatomy": 11, "Physiology": 6, "Surgery": 1}
    assert s["by_split_subject"]["test"] == {"Anatomy": 4, "Surgery": 1}
    assert s["gold_letters"] == {"A": 5, "B": 4, "C": 5, "D": 4}
    assert s["majority_letter"] == "A" and s["majority_baseline"] == round(5 / 18, 4)
    assert s["uniform_baseline"] == 0.25 and s["options_per_question"] == {"4": 18}
    assert s["with_explanation"] == 6 and s["explanation_coverage"] == round(6 / 18, 4)
    assert s["choice_types"] == {"single": 12, "(none)": 6}
    assert s["duplicates"]["exact"] == 2 and s["duplicates_by_split"]["train"]["exact"] == 1  # + the leaked copy
    assert s["leakage"] == {"train~test": {"records_in_train": 1, "records_in_test": 1}}
    assert s["cross_subject_duplicates"] == 1 and s["cross_subject_examples"][0]["subjects"] == ["Physiology", "Surgery"]
    assert s["chars"]["question"]["max"] == len("Question 100 about the kidney?")
    assert "tokens" not in s and json.dumps(s)  # JSON-serialisable


def test_eval_leakage_and_single_list():
    data = [rec(i) for i in range(5)]
    s = inspect_records(data, eval_records=[rec(2, id="e2"), rec(50)])
    assert s["splits"] == {"all": 5} and s["leakage"]["eval"]["records_in_data"] == 1
    assert s["leakage"]["eval"]["examples"] == [("r2", "e2")]
    assert inspect_records([])["n"] == 0


def test_token_lengths_and_png(tmp_path, qwen_tokenizer, splits):
    png = tmp_path / "out" / "lengths.png"
    s = inspect_records(splits, tokenizer=qwen_tokenizer, png_path=png, tokenizer_name="qwen")
    t = s["tokens"]
    assert t["tokenizer"] == "qwen" and t["prompt"]["n"] == 18
    assert 0 < t["prompt"]["p50"] <= t["prompt"]["p90"] <= t["prompt"]["p99"] <= t["prompt"]["max"]
    assert t["full"]["p50"] > t["prompt"]["p50"] and t["full_over"]["512"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and s["png"] == str(png)
    assert [p.name for p in png.parent.iterdir()] == ["lengths.png"]  # no temp file left behind
    s2 = inspect_records(splits, png_path=png)  # without a tokenizer: character lengths
    assert "tokens" not in s2 and png.stat().st_size > 0


def _parser():
    p = argparse.ArgumentParser(prog="medqa")
    sub = p.add_subparsers(dest="command", required=True)
    add_data_parser(sub)
    return p


def test_command_json_and_text(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [mcq_row(i, cop=i % 4) for i in range(8)])
    ns = _parser().parse_args(["data", "inspect", "--dataset", "medmcqa", "--data", str(path), "--json",
                               "--png", str(tmp_path / "h.png")])
    assert ns.command == "data" and ns.data_command == "inspect"
    assert inspect_main(ns) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 8 and out["load"]["kept"] == 8 and out["gold_letters"] == {"A": 2, "B": 2, "C": 2, "D": 2}
    assert (tmp_path / "h.png").is_file()
    ns = _parser().parse_args(["data", "inspect", "--dataset", "medmcqa", "--data", str(path), "--option", "cop_base=0",
                               "--eval-data", str(path)])
    assert inspect_main(ns) == 0
    text = capsys.readouterr().out
    assert "8 questions" in text and "majority baseline: 25.0%" in text and "leakage eval: records_in_data 8" in text


def test_command_generic_options_and_errors(tmp_path, capsys):
    path = write_jsonl(tmp_path / "g.jsonl", [{"q": f"Q{i}?", "o": ["x", "y", "z"], "g": i % 3} for i in range(6)])
    sub = argparse.ArgumentParser().add_subparsers(dest="data_command")
    p = add_inspect_parser(sub)
    ns = p.parse_args(["--dataset", "jsonl", "--data", str(path), "--option", "question=q", "--option", "options=o",
                       "--option", "answer=g", "--option", "answer_format=index0", "--json"])
    assert inspect_main(ns) == 0
    assert json.loads(capsys.readouterr().out)["options_per_question"] == {"3": 6}
    ns = p.parse_args(["--dataset", "jsonl", "--data", str(path), "--option", "nonsense"])
    with pytest.raises(DataError, match="KEY=VALUE"):
        inspect_main(ns)


@pytest.mark.skipif(not MEDMCQA_VALIDATION.is_file(), reason="../shared/data not present")
def test_real_medmcqa_validation():
    records, _ = load_medmcqa(str(MEDMCQA_VALIDATION))
    s = inspect_records(records)
    assert s["n"] == 4183 and s["gold_letters"] == {"A": 1348, "B": 1085, "C": 925, "D": 825}
    assert s["majority_baseline"] == 0.3223 and s["explanation_coverage"] == 0.0


def test_command_takes_a_config_and_dotted_flags(tmp_path, capsys):
    """`medqa data inspect` reads the same YAML and `--data.*` flags as train and eval (one parser)."""
    import yaml

    path = write_jsonl(tmp_path / "d.jsonl", [mcq_row(i, cop=i % 4) for i in range(8)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "medmcqa", "path": str(path), "limit": 5}}))
    ns = _parser().parse_args(["data", "inspect", "--config", str(cfg), "--json"])
    assert inspect_main(ns) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5
    ns = _parser().parse_args(["data", "inspect", "--config", str(cfg), "--data.limit", "3", "--json"])
    assert inspect_main(ns) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    ns = _parser().parse_args(["data", "inspect", "--config", str(cfg), "--print-config"])
    with pytest.raises(SystemExit):
        inspect_main(ns)
    assert yaml.safe_load(capsys.readouterr().out)["data"]["limit"] == 5
