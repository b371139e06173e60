import json
import subprocess
import sys

import pytest
from conftest import mcq_row, write_jsonl

from medqa.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medqa.cli", *args], capture_output=True, text=True, timeout=600)


def test_eval_contract(qwen_dir, small_jsonl, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(qwen_dir), "--dataset", "medmcqa", "--data", str(small_jsonl),
               "--limit", "10", "--out", str(out), "--eval.batch_size", "4"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 10 and s["model"] == str(qwen_dir) and s["protocol"] == "chat-template"
    assert 0 <= s["ci95"][0] <= s["accuracy"] <= s["ci95"][1] <= 1
    assert "majority_baseline" in s
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 10 and all(len(p["probs"]) == 4 for p in preds)
    assert "study aid" in capsys.readouterr().out


def test_train_then_eval_with_adapter(qwen_dir, small_jsonl, tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--model", str(qwen_dir), "--data", str(small_jsonl), "--out", str(run),
               "--train.max_steps", "2", "--train.batch_size", "2", "--train.grad_accum", "1",
               "--data.subset", "train", "--data.train_size", "8",
               "--eval-data", str(small_jsonl), "--eval_data.subset", "heldout", "--eval_data.train_size", "8"])
    assert rc == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    after = json.loads((run / "eval_after" / "summary.json").read_text())
    assert after["n"] == 4
    rc = main(["eval", "--model", str(qwen_dir), "--adapter", str(run / "adapter"), "--data", str(small_jsonl),
               "--out", str(tmp_path / "ev")])
    assert rc == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["adapter"] == str(run / "adapter")


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--model", "MODEL", "--data", "DATA_BAD", "--out", "OUT"], "bad.jsonl, row 2, field 'opb': missing value"),
        (["eval", "--model", "MODEL", "--data", "/nonexistent/x.jsonl", "--out", "OUT"], "file not found"),
        (["eval", "--model", "MODEL", "--data", "DATA_OK", "--train.batch_size", "zero"], "'train.batch_size'"),
        (["eval", "--model", "/nonexistent/model.gguf", "--data", "DATA_OK"], "GGUF file not found"),
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
    ],
)
def test_errors_are_one_line_and_non_zero(qwen_dir, tmp_path, args, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [mcq_row(0), mcq_row(1, opb=None)])
    ok = write_jsonl(tmp_path / "ok.jsonl", [mcq_row(0)])
    subst = {"MODEL": str(qwen_dir), "DATA_BAD": str(bad), "DATA_OK": str(ok), "OUT": str(tmp_path / "o")}
    proc = run_cli(*[subst.get(a, a) for a in args])
    assert proc.returncode != 0
    err_lines = [x for x in proc.stderr.splitlines() if x.startswith("medqa:")]
    assert len(err_lines) == 1 and message in err_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_skip_bad_rows_from_the_command_line(qwen_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [mcq_row(0), mcq_row(1, opb=None), mcq_row(2, cop=3)])
    rc = main(["eval", "--model", str(qwen_dir), "--data", str(bad), "--data.on_bad_rows", "skip",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n"] == 2 and s["load_report"]["skipped"] == 1
