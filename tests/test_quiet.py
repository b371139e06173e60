"""Quiet by default: library warnings and loading bars go to the log; MedQA's answer, messages and errors stay."""

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def adapter(qwen_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("quiet") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(qwen_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


def _predict(qwen_dir, adapter, tmp_path, *extra):
    env = {**os.environ, "MEDQA_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": ""}
    env.pop("MEDQA_VERBOSE", None)
    cmd = [sys.executable, "-m", "medqa.cli", "predict", "--model", str(qwen_dir), "--adapter", str(adapter),
           "-q", "Which nerve supplies the deltoid muscle?", "-o", "Radial", "-o", "Axillary", "--no-explain",
           "--device", "cpu", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_predict_prints_the_answer_and_nothing_from_the_libraries(qwen_dir, adapter, tmp_path):
    loud = _predict(qwen_dir, adapter, tmp_path, "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr  # what the user saw before: the libraries' own output

    quiet = _predict(qwen_dir, adapter, tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "Answer:" in quiet.stdout and "study aid" in quiet.stdout
    assert quiet.stderr.strip() == "", quiet.stderr
    assert "Loading weights" not in quiet.stdout
    assert (tmp_path / "cache" / "logs" / "medqa.log").is_file()


def test_library_warnings_land_in_the_log(tmp_path):
    code = ("import warnings, logging; from medqa import quiet; quiet.configure(libraries=False); "
            "warnings.warn('is_gradient_checkpointing is deprecated', FutureWarning); "
            "logging.getLogger('peft.tuners').warning('a library message'); print(quiet.records_logged())")
    env = {**os.environ, "MEDQA_CACHE": str(tmp_path)}
    env.pop("MEDQA_VERBOSE", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip() == "2", (r.stdout, r.stderr)
    log = (tmp_path / "logs" / "medqa.log").read_text()
    assert "is_gradient_checkpointing" in log and "a library message" in log


def test_an_error_still_prints_and_names_the_log(qwen_dir, tmp_path):
    env = {**os.environ, "MEDQA_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "medqa.cli", "eval", "--model", str(qwen_dir), "--data",
                        str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "missing.jsonl" in r.stderr
