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


def test_train_removes_eval_questions_from_training(qwen_dir, small_jsonl, tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--model", str(qwen_dir), "--data", str(small_jsonl), "--out", str(run),
               "--train.max_steps", "1", "--eval-data", str(small_jsonl), "--eval_data.limit", "3"])
    assert rc == 0
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["leakage"]["removed"] == 3 and summary["train"]["data"]["examples"] == 9


def _format_files(tmp_path):
    """One small file per supported format, each in its original release layout."""
    usmle = write_jsonl(tmp_path / "US_qbank.jsonl", [
        {"question": f"USMLE stem {i}?", "options": {"A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}", "E": f"e{i}"},
         "answer": f"c{i}", "answer_idx": "C", "meta_info": "step1"} for i in range(3)])
    mmlu = tmp_path / "anatomy_test.csv"
    mmlu.write_text("".join(f'"Anatomy question {i}?",w{i},x{i},y{i},z{i},B\n' for i in range(3)))
    pqa = tmp_path / "ori_pqal.json"
    pqa.write_text(json.dumps({str(100 + i): {
        "QUESTION": f"Does treatment {i} help?", "CONTEXTS": [f"Background {i}.", f"Results {i}."],
        "LABELS": ["BACKGROUND", "RESULTS"], "final_decision": ["yes", "no", "maybe"][i],
        "LONG_ANSWER": f"Answer {i}."} for i in range(3)}))
    generic = tmp_path / "bank.csv"
    generic.write_text("q,o1,o2,o3,ans\nWhich one?,x,y,z,2\nAnd this?,p,q,r,1\n")
    return {
        "medqa-usmle": [str(usmle)],
        "mmlu": [str(mmlu), "--data.subjects", "anatomy"],
        "pubmedqa": [str(pqa)],
        "csv": [str(generic), "--data.loader_options",
                "{question: q, options: [o1, o2, o3], answer: ans, answer_format: index1}"],
    }


def test_every_format_loads_by_name_in_eval(qwen_dir, tmp_path):
    for name, (path, *extra) in _format_files(tmp_path).items():
        out = tmp_path / f"ev-{name}"
        rc = main(["eval", "--model", str(qwen_dir), "--dataset", name, "--data", path, "--out", str(out), *extra])
        assert rc == 0, name
        s = json.loads((out / "summary.json").read_text())
        assert s["n"] in (2, 3), name


def test_mixture_training_and_several_eval_sets(qwen_dir, small_jsonl, tmp_path):
    files = _format_files(tmp_path)
    run = tmp_path / "run"
    mixture = (f"[{{dataset: medmcqa, path: '{small_jsonl}', weight: 3}}, "
               f"{{dataset: medqa-usmle, path: '{files['medqa-usmle'][0]}', weight: 1}}]")
    eval_sets = (f"{{medmcqa: {{dataset: medmcqa, path: '{small_jsonl}', limit: 4}}, "
                 f"pubmedqa: {{dataset: pubmedqa, path: '{files['pubmedqa'][0]}'}}}}")
    rc = main(["train", "--model", str(qwen_dir), "--out", str(run), "--train.max_steps", "1",
               "--mixture", mixture, "--mixture_total", "8", "--eval_sets", eval_sets])
    assert rc == 0
    summary = json.loads((run / "run_summary.json").read_text())
    drawn = {k: v["drawn"] for k, v in summary["mixture"]["datasets"].items()}
    assert drawn == {"0:medmcqa": 6, "1:medqa-usmle": 2}
    assert summary["leakage"]["by_eval"]["medmcqa"] >= 1  # the 4 evaluation questions never train
    after = json.loads((run / "eval_after" / "summary.json").read_text())
    assert after["n"] == 7 and set(after["per_dataset"]) == {"medmcqa", "pubmedqa"}
    assert after["accuracy"] == pytest.approx(
        sum(v["accuracy"] * v["n"] for v in after["per_dataset"].values()) / 7)
    rows = [json.loads(x) for x in (run / "eval_after" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and {r["dataset"] for r in rows} == {"medmcqa", "pubmedqa"}
    assert len(rows[-1]["probs"]) == 3  # yes / no / maybe


def test_two_process_eval_gives_the_single_process_report(qwen_dir, small_jsonl, tmp_path):
    import os

    common = ["eval", "--model", str(qwen_dir), "--data", str(small_jsonl), "--eval.batch_size", "3",
              "--eval.permutations", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "medqa.cli", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "medqa.cli", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2 and s1["processes"] == 1
    for key in ("n", "correct", "accuracy", "ci95", "pred_letter_distribution", "robustness"):
        assert s1[key] == pytest.approx(s2[key]) if key != "robustness" else s1[key]["consistency"] == s2[key]["consistency"]
    p1 = [json.loads(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    p2 = [json.loads(x) for x in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in p1] == [r["id"] for r in p2]
    for a, b in zip(p1, p2):
        assert a["pred"] == b["pred"]
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)


def test_few_shot_from_the_command_line(qwen_dir, small_jsonl, tmp_path):
    out = tmp_path / "fs"
    rc = main(["eval", "--model", str(qwen_dir), "--data", str(small_jsonl), "--data.limit", "4", "--out", str(out),
               "--eval.few_shot", "3", "--eval.few_shot_data.path", str(small_jsonl)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["few_shot"]["k"] == 3
    assert not set(s["few_shot"]["ids"]) & {"q0", "q1", "q2", "q3"}  # never an evaluated question
    rc = main(["eval", "--model", str(qwen_dir), "--data", str(small_jsonl), "--out", str(out), "--eval.few_shot", "2"])
    assert rc == 2


def test_training_augments_calibrates_and_reports_selective_answering(qwen_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [mcq_row(i, cop=0) for i in range(40)])  # every gold is A
    run = tmp_path / "run"
    rc = main(["train", "--model", str(qwen_dir), "--data", str(data), "--out", str(run), "--train.max_steps", "1",
               "--data.subset", "train", "--data.train_size", "30", "--train.calibration_size", "6",
               "--eval-data", str(data), "--eval_data.subset", "heldout", "--eval_data.train_size", "30"])
    assert rc == 0
    r = json.loads((run / "run_summary.json").read_text())
    assert r["augmentation"]["gold_before"] == {"A": 24}
    assert set(r["augmentation"]["gold_after"].values()) == {6}  # A-D six each: the letter prior is gone
    cal = json.loads((run / "adapter" / "calibration.json").read_text())
    assert cal["n"] == 6 and cal["temperature"] > 0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert r["train"]["data"]["examples"] == 24
    after = json.loads((run / "eval_after" / "summary.json").read_text())
    assert after["calibration"]["temperature"] == pytest.approx(cal["temperature"])
    assert set(after["selective"]["accuracy_at_coverage"]) == {"100%", "80%", "50%"}
    assert (run / "eval_after" / "risk_coverage.png").is_file()
    # the saved calibration is applied when the adapter is evaluated later
    rc = main(["eval", "--model", str(qwen_dir), "--adapter", str(run / "adapter"), "--data", str(data),
               "--data.subset", "heldout", "--data.train_size", "30", "--out", str(tmp_path / "ev")])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert ev["calibration"]["temperature"] == pytest.approx(cal["temperature"])
    assert ev["accuracy"] == pytest.approx(after["accuracy"])


def test_eval_on_several_sets_from_the_command_line(qwen_dir, small_jsonl, tmp_path, capsys):
    sets = f"{{a: {{dataset: medmcqa, path: '{small_jsonl}', limit: 5}}, b: {{dataset: demo, limit: 3}}}}"
    rc = main(["eval", "--model", str(qwen_dir), "--eval_sets", sets, "--out", str(tmp_path / "ev")])
    assert rc == 0
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["n"] == 8 and set(s["per_dataset"]) == {"a", "b"}
    assert "2 datasets, size-weighted" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert (tmp_path / "ev" / "a" / "summary.json").is_file() and (tmp_path / "ev" / "b" / "report.md").is_file()


@pytest.mark.slow
def test_a_token_in_the_environment_never_reaches_logs_or_run_files(qwen_dir, tmp_path):
    """HF_TOKEN (and the older name) set to a fake token: train and eval print and write nothing of it."""
    import os
    import subprocess
    import sys

    fake = "hf_FAKEtoken0123456789abcdefSECRET"
    env = {**os.environ, "HF_TOKEN": fake, "HUGGING_FACE_HUB_TOKEN": fake, "OMP_NUM_THREADS": "1"}
    runs = [["train", "--model", str(qwen_dir), "--dataset", "demo", "--data.train_size", "8",
             "--out", str(tmp_path / "train"), "--train.max_steps", "2", "--train.save_steps", "1",
             "--train.calibration_size", "2", "--train.eval_size", "2", "--train.eval_steps", "1",
             "--eval-data", "demo", "--eval_data.subset", "heldout", "--eval_data.train_size", "190"],
            ["eval", "--model", str(qwen_dir), "--adapter", str(tmp_path / "train" / "adapter"), "--dataset", "demo",
             "--limit", "4", "--out", str(tmp_path / "eval")]]
    for args in runs:
        p = subprocess.run([sys.executable, "-m", "medqa.cli", *args], capture_output=True, text=True, env=env,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        assert fake not in p.stdout and fake not in p.stderr
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) > 20  # checkpoints, TensorBoard events, reports, adapters
    for f in files:
        assert fake.encode() not in f.read_bytes(), f


def _subcommands() -> list[list[str]]:
    import argparse

    from medqa.cli import build_parser

    out = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if path:
            out.append(path)
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, [*path, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize("command", _subcommands(), ids=" ".join)
def test_every_subcommand_help_exits_zero(command, capsys):
    """Issue 14.0: `medqa train --help` crashed on a '%' in a field's description (argparse formats help)."""
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: medqa" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["eval", "train"])
def test_help_lists_every_config_field_with_its_default(command, capsys):
    from medqa.config import config_fields

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from medqa.flags import SHORTCUTS

    shortcut = {dest: f"--{flag}" for flag, (dest, _) in SHORTCUTS.items()}
    for dotted, info in config_fields():
        flag = f"--{dotted}"
        assert flag in text or shortcut.get(dotted, flag) in text, dotted
        if dotted in shortcut and shortcut[dotted] in text and flag not in text:
            flag = shortcut[dotted]
        chunk = text[text.rindex(flag + " "):][:400]  # the options list, after the usage line
        assert "default:" in chunk, (dotted, chunk[:120])
        assert chunk.split("VALUE", 1)[1].strip()[:1] != "(", (dotted, "no description")


@pytest.mark.parametrize("command", ["eval", "train"])
@pytest.mark.parametrize("bad", ["/etc/passwd", "wrong-format"])
def test_bad_data_fails_before_the_model_loads(command, bad, tmp_path, monkeypatch, capsys):
    """Issue 14.13: a bad data file was reported only after the (slow) model load."""
    import medqa.recipes.evaluation
    import medqa.recipes.lora_sft

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was read")

    for module in (medqa.recipes.evaluation, medqa.recipes.lora_sft):  # the recipes' own load_model
        monkeypatch.setattr(module, "load_model", no_model)
    path = "/etc/passwd" if bad == "/etc/passwd" else str(write_jsonl(tmp_path / "pubmed.jsonl", [
        {"QUESTION": "Is it?", "CONTEXTS": ["x"], "final_decision": "yes"}]))
    args = [command, "--dataset", "medmcqa", "--data", path, "--out", str(tmp_path / "o")]
    if command == "train":
        args += ["--eval-data", path]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "before the data was read" not in err and path in err


def test_transformers_and_trl_names_are_aliases_in_yaml_and_flags(tmp_path, capsys):
    """Issue 15.4: an Axolotl / TRL user's names work (top level or in the train section) and --print-config
    shows what they resolved to; the same setting twice with different values is an error."""
    import yaml

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("base_model: Qwen/Qwen3-1.7B\nlearning_rate: 1.0e-4\nlora_r: 16\n"
                        "train: {gradient_accumulation_steps: 8, num_train_epochs: 3, per_device_train_batch_size: 2}\n"
                        "output_dir: runs/x\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(cfg_file), "--print-config", "--lr_scheduler_type", "linear",
              "--train.max_seq_length", "256"])
    assert e.value.code == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert got["model"]["name"] == "Qwen/Qwen3-1.7B" and got["out"] == "runs/x" and got["lora"]["r"] == 16
    assert {k: got["train"][k] for k in ("lr", "grad_accum", "epochs", "batch_size", "scheduler", "max_length")} == {
        "lr": 1e-4, "grad_accum": 8, "epochs": 3.0, "batch_size": 2, "scheduler": "linear", "max_length": 256}
    rc = main(["train", "--config", str(cfg_file), "--print-config", "--train.lr", "3e-4", "--learning_rate", "1e-3"])
    assert rc == 2 and "name the same setting" in capsys.readouterr().err
    cfg_file.write_text("learning_rate: 1.0e-4\ntrain: {lr: 2.0e-4}\n")
    assert main(["eval", "--config", str(cfg_file), "--print-config"]) == 2
    assert "'learning_rate' (0.0001) and 'train.lr' (0.0002)" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["train"], ["quickstart"], ["doctor"]])
def test_print_config_prints_the_resolved_yaml(command, capsys):
    import yaml

    with pytest.raises(SystemExit) as e:
        rc = main([*command, "--print-config", "--train.lr", "5e-4"] if command != ["doctor"] else
                  [*command, "--print-config"])
        raise SystemExit(rc)
    assert e.value.code == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert set(got) >= {"model", "lora", "data", "train", "eval", "out"}
    if command != ["doctor"]:
        assert got["train"]["lr"] == 5e-4


def test_eval_without_out_makes_a_new_folder_each_time(qwen_dir, small_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", str(qwen_dir), "--dataset", "medmcqa", "--data", str(small_jsonl), "--limit", "3"]
    assert main(args) == 0 and main(args) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("eval-") for r in runs), runs  # same second: a -2 suffix
    for r in runs:
        assert (tmp_path / "runs" / r / "results.json").is_file()
    assert f"written to runs/{runs[0]}" in " ".join(capsys.readouterr().out.split())


def test_new_run_dir_never_names_an_existing_folder(tmp_path, monkeypatch):
    from medqa.io import new_run_dir

    first = new_run_dir("eval", tmp_path)
    (tmp_path / first).mkdir(parents=True)
    second = new_run_dir("eval", tmp_path)
    assert second != first and not (tmp_path / second).exists()
    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks of one launch agree: the launcher's start time, no suffix
    assert new_run_dir("eval", tmp_path) == new_run_dir("eval", tmp_path)


def test_resume_without_out_is_a_clear_error(qwen_dir, small_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--model", str(qwen_dir), "--data", str(small_jsonl), "--resume"])
    assert rc == 2 and "--out RUN" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_fetch_default_is_a_command(capsys):
    from medqa.cli import build_parser

    assert build_parser().parse_args(["fetch-default"]).command == "fetch-default"


def test_eval_thinking_mode_end_to_end(qwen_dir, small_jsonl, tmp_path, capsys):
    """Issue 17.2: `medqa eval --eval.generate true --eval.thinking true` reports thinking-mode accuracy beside
    the one-pass letter score, per question and in summary.json, report.md and on the console."""
    from medqa.reasoning import parse_final_answer

    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(qwen_dir), "--dataset", "medmcqa", "--data", str(small_jsonl), "--limit", "3",
               "--eval.generate", "true", "--eval.thinking", "true", "--eval.max_new_tokens", "12", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    t = s["thinking"]
    assert s["n"] == t["n"] == 3 and t["max_new_tokens"] == 12 and "generative" not in s
    assert t["letter_scoring"]["accuracy"] == s["accuracy"] and t["letter_scoring"]["ci95"] == s["ci95"]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        assert {"generated", "reasoning", "final_line", "generated_pred", "generated_correct", "generated_tokens",
                "cut_off"} <= set(r)
        assert r["generated_pred"] == parse_final_answer(r["generated"], 4).letter
    assert t["unparseable"] == sum(r["generated_pred"] is None for r in rows)
    assert t["cut_off"] == sum(r["cut_off"] for r in rows) and t["tokens"]["max"] <= 12
    assert "## Thinking mode" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "thinking mode: accuracy" in printed and "cut off at 12 tokens" in printed


def test_eval_thinking_needs_generate(qwen_dir, small_jsonl, tmp_path, capsys):
    rc = main(["eval", "--model", str(qwen_dir), "--data", str(small_jsonl), "--eval.thinking", "true",
               "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "eval.thinking needs eval.generate true" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()
