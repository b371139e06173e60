"""Shipping a run: merged export (verified), model card, push folder, offline and token safety."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import mcq_row, write_jsonl

from medqa import hub
from medqa.cli import main as cli_main
from medqa.errors import ConfigError, MedQAError, ModelError
from medqa.evaluate import DISCLAIMER

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789abcdef"
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "calibration.json", "chat_template.jinja",
                 "medqa_adapter.json", "tokenizer.json", "tokenizer_config.json"]


def _strengthen(adapter_dir: Path, scale: float = 0.5) -> None:
    """One training step leaves LoRA's B ~ 0; make the adapter change the model measurably."""
    import torch
    from safetensors.torch import load_file, save_file

    f = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(f))
    g = torch.Generator().manual_seed(0)
    for k, v in tensors.items():
        if "lora_B" in k:
            tensors[k] = torch.randn(v.shape, generator=g) * scale
    save_file(tensors, str(f), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def run_dir(qwen_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub-run")
    data = write_jsonl(root / "small.jsonl", [mcq_row(i, cop=i % 4) for i in range(6)])
    run = root / "run"
    rc = cli_main(["train", "--model", str(qwen_dir), "--data", str(data), "--out", str(run),
                   "--train.max_steps", "1", "--train.batch_size", "2", "--train.grad_accum", "1",
                   "--eval-data", str(data), "--eval_data.limit", "3"])
    assert rc == 0
    _strengthen(run / "adapter")
    meta = run / "adapter" / "medqa_adapter.json"
    if not meta.exists():  # what train() writes through save_adapter(meta=...)
        meta.write_text(json.dumps({"base_model": str(qwen_dir), "protocol": "chat", "medqa_version": "0.1.0"}))
    return run


def _probs(model_dir_or_cfg, tokenizer, n=4):
    from medqa.data import load_demo
    from medqa.evaluate import score_records
    from medqa.format import PromptFormat

    return score_records(model_dir_or_cfg, PromptFormat(tokenizer), load_demo()[:n], progress=False)


# ----------------------------------------------------------------------------- export


def test_export_merged_matches_base_plus_adapter(run_dir, qwen_dir, tmp_path):
    import numpy as np

    from medqa.config import ModelConfig
    from medqa.modeling import load_model

    out = tmp_path / "merged"
    lines = []
    res = hub.export_merged(run_dir, out, shard_size="10MB", echo=lines.append)
    # sharded safetensors, tokenizer, generation config, provenance; no pickle, no temp folders left
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) >= 2
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", hub.EXPORT_INFO):
        assert f in files, f
    assert not [f for f in files if f.endswith((".bin", ".pt"))]
    assert sorted(res.files) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert res.dtype == "float32" and res.tolerance == 1e-4 and res.max_abs_diff <= 1e-4
    assert lines[-1].startswith("verified: max |Δp| = ") and "≤ 1e-04" in lines[-1]
    info = json.loads((out / hub.EXPORT_INFO).read_text())
    assert info["verification"]["max_abs_diff"] == res.max_abs_diff and str(run_dir) not in json.dumps(info)

    # independently: merged == base + adapter, and != base (the check is not vacuous)
    merged, tok = load_model(ModelConfig(name=str(out), dtype="float32", device="cpu"))
    peft, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(run_dir / "adapter"), dtype="float32", device="cpu"))
    base, _ = load_model(ModelConfig(name=str(qwen_dir), dtype="float32", device="cpu"))
    pm, pp, pb = _probs(merged, tok), _probs(peft, tok), _probs(base, tok)
    assert max(np.abs(a - b).max() for a, b in zip(pm, pp)) <= 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(pm, pb)) > 1e-3


def test_export_fails_loudly_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    import torch

    real = hub._merge

    def broken(model, dtype):
        m = real(model, dtype)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "q_proj" in name:
                    p.add_(torch.randn_like(p))
        return m

    monkeypatch.setattr(hub, "_merge", broken)
    out = tmp_path / "merged"
    with pytest.raises(hub.ExportError, match=r"max \|Δp\| = .* > tolerance 1e-04"):
        hub.export_merged(run_dir, out, echo=None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_pickle_base_and_nonempty_out(run_dir, qwen_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(qwen_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelError, match="pickle"):
        hub.export_merged(run_dir, tmp_path / "m", base_model=str(pickled), echo=None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        hub.export_merged(run_dir, tmp_path / "full", echo=None)


def test_export_cli_requires_merge(run_dir, tmp_path):
    ns = _parse(hub.add_export_parser, ["export", str(run_dir), "--out", str(tmp_path / "m")])
    with pytest.raises(ConfigError, match="--merge"):
        hub.export_main(ns)


# ----------------------------------------------------------------------------- model card


def test_model_card_metadata_and_content(run_dir):
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    summary = json.loads((run_dir / "eval_after" / "summary.json").read_text())
    card = hub.build_model_card(run_dir, "someone/tiny-medqa")
    results = hub.check_card(card, expected=[("medmcqa", summary["accuracy"])])
    assert len(results) == 1 and results[0].task_type == "multiple-choice" and results[0].metric_type == "accuracy"

    text = str(card)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "peft" and "base_model" not in meta  # a local base has no Hub id
    name, again = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-medqa" and again[0].metric_value == pytest.approx(summary["accuracy"], abs=1e-4)
    assert ModelCard(text).data.to_dict() == card.data.to_dict()

    body = text.split("---\n", 2)[2]
    assert body.index(DISCLAIMER) < body.index("## Evaluation")  # prominent: before any result
    lo, hi = summary["ci95"]
    assert f"{lo:.1%}–{hi:.1%}" in body and f"{summary['majority_baseline']:.1%}" in body
    assert "letter scoring" in body and "95 % Wilson" in body
    assert "r=8, alpha=16" in body and "Hardware: CPU" in body and "transformers " in body and "peft " in body
    assert "## Intended use" in body and "## Limitations" in body

    readme = run_dir.parent / "README_card.md"
    readme.write_text(text, encoding="utf-8")
    assert metadata_load(readme)["model-index"] == meta["model-index"]


def test_model_card_for_the_offline_default_base(tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = "smollm2-135m-instruct"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    card = hub.build_model_card(run, "someone/x")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "Q4_1 GGUF" in str(card)


# ----------------------------------------------------------------------------- push


def test_push_dry_run_adapter_folder(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "upload"
    rc = cli_main_push(["push", str(run_dir), "--repo", "someone/tiny-medqa", "--private", "--dry-run", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ADAPTER_FILES
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "README.md").stat().st_mode & 0o777 == 0o666 & ~mask  # not left owner-only by the temp dir
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and DISCLAIMER in card
    printed = capsys.readouterr().out
    assert "private model repo someone/tiny-medqa" in printed and all(f in printed for f in ADAPTER_FILES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    _assert_no_token(tmp_path, printed)


def test_push_dry_run_merged_and_space(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    merged = tmp_path / "merged"
    hub.export_merged(run_dir, merged, echo=None)
    lines: list[str] = []
    res = hub.push(run_dir, "someone/tiny-medqa-merged", what="merged", dry_run_dir=tmp_path / "m",
                   merged_dir=merged, echo=lines.append)
    assert res["files"] == sorted(["README.md", "config.json", "generation_config.json", "model.safetensors",
                                   "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                   hub.EXPORT_INFO, "calibration.json", "medqa_adapter.json"])
    card = (tmp_path / "m" / "README.md").read_text()
    assert "library_name: transformers" in card and "Merge check" in card
    pytest.importorskip("medqa.serve")
    res = hub.push(run_dir, "someone/tiny-medqa-space", space=True, dry_run_dir=tmp_path / "s", echo=lines.append)
    assert res["repo_type"] == "space"
    for f in ("app.py", "requirements.txt", "README.md", "adapter/adapter_model.safetensors", "model/model.safetensors"):
        assert f in res["files"], f
    assert "sdk: gradio" in (tmp_path / "s" / "README.md").read_text()
    _assert_no_token(tmp_path, "\n".join(lines))


def test_push_offline_is_one_clear_error(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # connection refused at once
    rc = cli_main_push(["push", str(run_dir), "--repo", "someone/tiny-medqa"])
    err = capsys.readouterr()
    assert rc == 2
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0] and "--dry-run DIR" in lines[0]
    with pytest.raises(hub.HubUnreachableError):
        hub.push(run_dir, "someone/tiny-medqa", echo=lambda s: None)
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnreachableError, match="HF_HUB_OFFLINE"):
        hub.push(run_dir, "someone/tiny-medqa", echo=lambda s: None)
    _assert_no_token(tmp_path, err.out + err.err)


def test_push_masks_the_token_in_hub_errors(run_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    class Resp:
        status_code = 500

    class Boom(Exception):
        response = Resp()

    def whoami(self, *a, **k):
        raise Boom(f"server said: bad header Authorization: Bearer {FAKE_TOKEN}")

    monkeypatch.setattr(HfApi, "whoami", whoami)
    with pytest.raises(hub.HubError) as e:
        hub.push(run_dir, "someone/tiny-medqa", echo=print)
    assert FAKE_TOKEN not in str(e.value) and "hf_***" in str(e.value)

    def unauthorized(self, *a, **k):
        Resp.status_code = 401
        raise Boom("401 Client Error")

    monkeypatch.setattr(HfApi, "whoami", unauthorized)
    with pytest.raises(hub.HubError, match="rejected the token"):
        hub.push(run_dir, "someone/tiny-medqa", echo=print)
    _assert_no_token(tmp_path, "".join(capsys.readouterr()))


def test_push_uploads_through_hfapi(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    calls = {}
    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "someone"})

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw, self.token == FAKE_TOKEN)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        calls["upload"] = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls["upload_kw"] = kw
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    res = hub.push(run_dir, "someone/tiny-medqa", private=True, echo=lambda s: None)
    assert calls["create"] == ("someone/tiny-medqa", {"repo_type": "model", "private": True, "exist_ok": True}, True)
    assert calls["upload"] == ADAPTER_FILES and res["files"] == ADAPTER_FILES
    assert calls["upload_kw"]["repo_type"] == "model"


def test_push_refuses_bad_repo_and_pickle_adapter(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="USER/NAME"):
        hub.push(run_dir, "not a repo", dry_run_dir=tmp_path / "x")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "adapter" / "adapter_model.safetensors").rename(run / "adapter" / "adapter_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        hub.push(run, "someone/x", dry_run_dir=tmp_path / "y")
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- helpers


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def cli_main_push(argv):
    """`medqa push ...` through cli.main when it is wired, else through hub.main (same one-line errors)."""
    from medqa import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return cli_main(argv) if "push" in sub.choices else hub.main(argv)


def _assert_no_token(root: Path, text: str) -> None:
    assert FAKE_TOKEN not in text
    for f in root.rglob("*"):
        if f.is_file():
            assert FAKE_TOKEN.encode() not in f.read_bytes(), f


def test_errors_are_medqa_errors():
    assert issubclass(hub.HubUnreachableError, hub.HubError) and issubclass(hub.HubError, MedQAError)
    assert issubclass(hub.ExportError, MedQAError)


# ----------------------------------------------------------------------------- the merged export keeps the calibration

from test_predict import ABSTAIN_ALL_CAL, THRESHOLD_CAL  # noqa: E402


def _copy_run(run_dir: Path, dest: Path, calibration: dict | None = None) -> Path:
    shutil.copytree(run_dir, dest)
    if calibration is not None:
        (dest / "adapter" / "calibration.json").write_text(json.dumps(calibration))
    return dest


def test_merged_export_keeps_calibration_and_predict_applies_it(run_dir, tmp_path):
    """Issue 4: the merged folder carries calibration.json and medqa_adapter.json; `medqa predict --model
    MERGED` applies that temperature and threshold and shows the guarantee."""
    import io

    from medqa.calibrate import guarantee_text
    from medqa.predict import add_predict_parser, predict_main

    run = _copy_run(run_dir, tmp_path / "run", {**THRESHOLD_CAL, "temperature": 2.0})
    out = tmp_path / "merged"
    hub.export_merged(run, out, echo=None)
    assert json.loads((out / "calibration.json").read_text())["temperature"] == 2.0
    assert json.loads((out / "medqa_adapter.json").read_text())["protocol"] == "chat"
    parser = argparse.ArgumentParser()
    add_predict_parser(parser.add_subparsers(dest="command"))
    buf = io.StringIO()
    ns = parser.parse_args(["predict", "--model", str(out), "--device", "cpu", "-q", "Which nerve?", "-o", "Axillary",
                            "-o", "Radial", "--json", "--no-explain"])
    assert predict_main(ns, stdout=buf) == 0
    row = json.loads(buf.getvalue())
    assert row["threshold"] == 0.3 and row["guarantee"]["text"] == guarantee_text(THRESHOLD_CAL)


# ----------------------------------------------------------------------------- --force never replaces a run


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


def test_export_never_replaces_the_run_even_with_force(run_dir, tmp_path):
    """Issue 6: `medqa export RUN --merge --out RUN --force` used to replace the run folder."""
    run = _copy_run(run_dir, tmp_path / "work" / "run")
    before = _snapshot(run)
    for out in (run, run / "adapter", run / "merged", tmp_path / "work"):
        with pytest.raises(ConfigError) as e:
            hub.export_merged(run, out, overwrite=True, echo=None)
        assert "run" in str(e.value) or "adapter" in str(e.value), str(e.value)
        assert _snapshot(run) == before
    other = _copy_run(run_dir, tmp_path / "other-run")
    with pytest.raises(ConfigError, match="training run"):
        hub.export_merged(run, other, overwrite=True, echo=None)
    assert (other / "config.yaml").is_file() and (other / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(ConfigError, match="run"):
        hub.export_main(_parse(hub.add_export_parser, ["export", str(run), "--merge", "--out", str(run), "--force"]))
    assert _snapshot(run) == before


def test_export_force_replaces_a_previous_export(run_dir, tmp_path):
    out = tmp_path / "merged"
    hub.export_merged(run_dir, out, echo=None)
    (out / "stale.txt").write_text("old")
    hub.export_merged(run_dir, out, overwrite=True, echo=None)
    assert not (out / "stale.txt").exists() and (out / hub.EXPORT_INFO).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ----------------------------------------------------------------------------- model card


def test_model_card_names_the_hub_base_never_a_local_path(run_dir, qwen_dir, tmp_path):
    """Issue 11: the usage snippet printed the training machine's base-model path."""
    text = str(hub.build_model_card(run_dir, "someone/x"))
    assert str(qwen_dir) not in text and "BASE_MODEL" in text
    # a run on the offline default (model.name left to the adapter, which recorded the cache path)
    run = _copy_run(run_dir, tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    conf = json.loads((run / "adapter" / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = "/home/someone/.cache/medqa/models/smollm2-135m-instruct"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(conf))
    (run / "adapter" / "medqa_adapter.json").unlink()
    card = hub.build_model_card(run, "someone/x")
    text = str(card)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model == hub_id and f"[`{hub_id}`](https://huggingface.co/{hub_id})" in text
    assert f'from_pretrained("{hub_id}")' in text and f"--model {hub_id}" in text
    assert ".cache" not in text and "/home/someone" not in text and "Q4_1 GGUF" in text


def test_model_card_states_the_objective_that_was_used(run_dir, tmp_path):
    """Issue 11: the card said prompt tokens were masked even with train.completion_only_loss false."""
    text = str(hub.build_model_card(run_dir, "someone/x"))
    objective = next(line for line in text.splitlines() if line.startswith("- Objective"))
    assert "completion-only" in objective and "prompt tokens are masked" in objective and "`chat`" in objective
    run = _copy_run(run_dir, tmp_path / "run")
    for name, key in (("config.yaml", None), ("train_summary.json", "completion_only_loss")):
        if key is None:
            cfg = yaml.safe_load((run / name).read_text())
            cfg["train"]["completion_only_loss"] = False
            (run / name).write_text(yaml.safe_dump(cfg))
        else:
            ts = json.loads((run / name).read_text())
            ts[key] = False
            (run / name).write_text(json.dumps(ts))
    text = str(hub.build_model_card(run, "someone/x"))
    objective = next(line for line in text.splitlines() if line.startswith("- Objective"))
    assert "every token" in objective and "prompt" in objective and "masked" not in objective


def test_model_card_states_the_abstention_guarantee(run_dir, tmp_path):
    """Issue 12: the card says what the abstention rule guarantees (level, n, bound), or that all is flagged."""
    from medqa.calibrate import guarantee_text

    run = _copy_run(run_dir, tmp_path / "run", THRESHOLD_CAL)
    assert guarantee_text(THRESHOLD_CAL) in str(hub.build_model_card(run, "someone/x"))
    run2 = _copy_run(run_dir, tmp_path / "run2", ABSTAIN_ALL_CAL)
    text = str(hub.build_model_card(run2, "someone/x"))
    assert guarantee_text(ABSTAIN_ALL_CAL) in text
