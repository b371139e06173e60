"""Reliability: every loader and the config under thousands of generated bad rows and files.

CI runs a fixed (derandomized) set of examples so that it is reproducible; explore new ones with
`MEDQA_FUZZ_EXPLORE=1 MEDQA_FUZZ_EXAMPLES=20000 pytest tests/test_reliability.py`.

Rows are built from each format's valid layout and then broken (missing keys, wrong types, empty,
huge and odd-Unicode strings), files are broken too (truncated, wrong encodings, NUL bytes, BOM,
binary garbage). Only MedQA's documented errors may come out, naming the file (and, for a row, the
row and the field).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqa.config import DataConfig, RunConfig, build_config, config_fields
from medqa.datasets import MCQRecord, load_dataset_config
from medqa.errors import ConfigError, DataError

ODD = ["", " ", "\u200b", "\u202eevil", "é\u0301", "😀" * 3, "\x00", "\ud800", "a\nb\r\nc", "\t", "ℌ𝔢𝔩𝔩𝔬", "ﬁ"]
COUNTS = {"files": 0, "rows": 0, "records": 0, "errors": 0}


def _leaf(rng: random.Random):
    kind = rng.randrange(10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 7, 2**40, 1.5, float("nan"), float("inf")])
    if kind == 2:
        return rng.choice(ODD)
    if kind == 3:
        return "x" * rng.choice([2_001, 50_000])  # huge
    if kind == 4:
        return [rng.choice(ODD), 1]
    if kind == 5:
        return {"nested": rng.choice(ODD)}
    return "".join(rng.choice("abcdefgh é\u00e9ß ") for _ in range(rng.randrange(1, 30)))


def _break_row(row: dict, rng: random.Random) -> dict:
    row = dict(row)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):  # about a third stay valid
        key = rng.choice(list(row) + ["extra"])
        if rng.random() < 0.3:
            row.pop(key, None)
        else:
            row[key] = _leaf(rng)
    return row


def _medmcqa(i: int) -> dict:
    return {"id": f"m{i}", "question": f"Which nerve {i}?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
            "cop": i % 4, "choice_type": "single", "exp": "why", "subject_name": "Anatomy", "topic_name": None}


def _usmle(i: int) -> dict:
    return {"question": f"A patient {i}?", "answer": "bee", "answer_idx": "B", "meta_info": "step1",
            "options": {"A": "ay", "B": "bee", "C": "sea", "D": "dee"}}


def _pubmed(i: int) -> dict:
    return {"QUESTION": f"Does {i} help?", "CONTEXTS": ["ctx one", "ctx two"], "LABELS": ["BACKGROUND", "RESULTS"],
            "final_decision": ["yes", "no", "maybe"][i % 3], "LONG_ANSWER": "because"}


def _generic(i: int) -> dict:
    return {"q": f"Question {i}?", "o1": "one", "o2": "two", "o3": "three", "ans": "B"}


GENERIC_MAP = {"question": "q", "options": ["o1", "o2", "o3"], "answer": "ans"}


def _write(fmt: str, rows: list, d: Path, rng: random.Random) -> tuple[Path, DataConfig]:
    if fmt == "medmcqa":
        p = d / "medmcqa.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        cfg = DataConfig(dataset="medmcqa", path=str(p), cop_base="0")
    elif fmt == "medqa-usmle":
        p = d / "usmle.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        cfg = DataConfig(dataset="medqa-usmle", path=str(p))
    elif fmt == "pubmedqa":
        p = d / "ori_pqal.json"
        text = json.dumps({str(10_000 + i): r for i, r in enumerate(rows)})
        cfg = DataConfig(dataset="pubmedqa", path=str(p))
    elif fmt == "jsonl":
        p = d / "bank.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        cfg = DataConfig(dataset="jsonl", path=str(p), loader_options=GENERIC_MAP)
    elif fmt == "csv":
        p = d / "bank.csv"
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["q", "o1", "o2", "o3", "ans"])
        for r in rows:
            w.writerow([_cell(r.get(k)) for k in ("q", "o1", "o2", "o3", "ans")])
        text = buf.getvalue()
        cfg = DataConfig(dataset="csv", path=str(p), loader_options=GENERIC_MAP)
    elif fmt == "predict":  # questions for `medqa predict --input`
        p = d / "questions.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        cfg = None
    else:  # mmlu: header-less CSV, subject from the file name
        p = d / "anatomy_test.csv"
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in rows:
            w.writerow([_cell(r.get(k)) for k in ("q", "o1", "o2", "o3", "o4", "ans")])
        text = buf.getvalue()
        cfg = DataConfig(dataset="mmlu", path=str(p))
    p.write_bytes(_break_file(text, rng))
    return p, cfg


def _cell(v) -> str:
    return "" if v is None else str(v).replace("\x00", "")


def _break_file(text: str, rng: random.Random) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    kind = rng.randrange(10)
    if kind == 0:
        return data[: rng.randrange(len(data) + 1)]  # truncated
    if kind == 1:
        return text.encode("latin-1", "replace")  # wrong encoding
    if kind == 2:
        return text.encode("utf-16", "surrogatepass")
    if kind == 3:
        i = rng.randrange(len(data) + 1)
        return data[:i] + b"\x00\x00" + data[i:]
    if kind == 4:
        return b"\xef\xbb\xbf" + data  # BOM
    if kind == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))  # garbage
    return data


# a row broken as a whole (or the first row showing the file is another format) names no single field
WHOLE_ROW = re.compile(r"not valid JSON|expected \d+ columns|not a JSON object|expected a JSON object|not an? .+ file")
LOADERS = ["medmcqa", "medqa-usmle", "pubmedqa", "jsonl", "csv", "mmlu", "predict"]


def _rows(fmt: str, n: int, rng: random.Random) -> list:
    make = {"medmcqa": _medmcqa, "medqa-usmle": _usmle, "pubmedqa": _pubmed, "jsonl": _generic, "csv": _generic,
            "predict": lambda i: {"id": i, "question": f"Q{i}?", "options": ["a", "b", "c"]},
            "mmlu": lambda i: {"q": f"Q{i}?", "o1": "a", "o2": "b", "o3": "c", "o4": "d", "ans": "ABCD"[i % 4]}}[fmt]
    return [_break_row(make(i), rng) for i in range(n)]


@settings(max_examples=int(os.environ.get("MEDQA_FUZZ_EXAMPLES", 1000)), deadline=None,
          derandomize=not os.environ.get("MEDQA_FUZZ_EXPLORE"), suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(LOADERS), seed=st.integers(0, 2**32 - 1), n=st.integers(0, 80),
       mode=st.sampled_from(["error", "skip"]))
def test_every_loader_survives_generated_files(fmt, seed, n, mode):
    rng = random.Random(seed)
    rows = _rows(fmt, n, rng)
    with tempfile.TemporaryDirectory() as d:
        path, cfg = _write(fmt, rows, Path(d), rng)
        COUNTS["files"] += 1
        COUNTS["rows"] += n
        try:
            if cfg is None:
                from medqa.predict import read_questions

                questions = read_questions(str(path))
                assert all(q["question"] and 2 <= len(q["options"]) <= 5 for q in questions)
                COUNTS["records"] += len(questions)
                return
            records, report = load_dataset_config(cfg.model_copy(update={"on_bad_rows": mode}), default_split="test")
        except DataError as e:
            COUNTS["errors"] += 1
            assert path.name in str(e) or str(path) in e.source, str(e)
            if e.row is not None and e.field is None:  # a row broken as a whole says how
                assert WHOLE_ROW.search(e.message), str(e)
            return
    COUNTS["records"] += len(records)
    for r in records:
        assert isinstance(r, MCQRecord)
        assert 2 <= len(r.options) <= 5 and 0 <= r.answer < len(r.options)
        assert r.question.strip() and all(isinstance(o, str) and o.strip() for o in r.options)
        r.question.encode("utf-8")  # no lone surrogate reaches the tokenizer


def test_fuzzing_covered_thousands_of_rows():
    """Runs after the fuzz test above (same module): the figure the README quotes is a floor."""
    if COUNTS["files"] == 0:
        pytest.skip("run together with test_every_loader_survives_generated_files")
    assert COUNTS["files"] >= 1000 and COUNTS["rows"] >= 25_000, COUNTS
    assert COUNTS["records"] > 0 and COUNTS["errors"] > 0, COUNTS  # both outcomes were exercised


FIELDS = [name for name, _ in config_fields()]
config_leaf = (st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True)
               | st.text(max_size=8) | st.lists(st.text(max_size=3), max_size=2))
config_key = st.sampled_from(FIELDS) | st.sampled_from(["train.lrr", "model.nme", "extra", "data.path.x", "eval..x"])


@settings(max_examples=1500, deadline=None, derandomize=not os.environ.get("MEDQA_FUZZ_EXPLORE"))
@given(over=st.dictionaries(config_key, config_leaf, max_size=4))
def test_any_config_override_is_a_config_or_a_named_error(over):
    try:
        cfg = build_config(None, over)
    except ConfigError as e:
        msg = str(e)
        assert "invalid config" in msg
        assert any(k.split(".")[0] in msg for k in over), msg  # the offending key is named
        return
    assert isinstance(cfg, RunConfig)


@settings(max_examples=300, deadline=None, derandomize=not os.environ.get("MEDQA_FUZZ_EXPLORE"))
@given(doc=st.recursive(config_leaf, lambda c: st.dictionaries(st.sampled_from(
    ["model", "train", "lora", "data", "eval", "hardware", "x", "lr", "name", "env"]), c, max_size=3), max_leaves=8),
       raw=st.binary(max_size=40))
def test_any_config_file_is_a_config_or_a_named_error(doc, raw):
    with tempfile.TemporaryDirectory() as d:
        for content in (yaml.safe_dump(doc).encode(), raw):
            p = Path(d) / "c.yaml"
            p.write_bytes(content)
            try:
                build_config(p)
            except ConfigError as e:
                assert str(p) in str(e), str(e)
