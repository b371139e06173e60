"""medqa.ship.push: the upload folder, --dry-run, offline and token safety, Hub errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ship_runs import ADAPTER_FILES, FAKE_TOKEN, trained_run
from ship_runs import assert_no_token as _assert_no_token

from medqa.cli import main as cli_main
from medqa.errors import ConfigError, MedQAError, ModelError
from medqa.inference import DISCLAIMER
from medqa.ship import export, push
from medqa.ship.run import EXPORT_INFO, HubError, HubUnreachableError


@pytest.fixture(scope="module")
def run_dir(qwen_dir, tmp_path_factory) -> Path:
    return trained_run(qwen_dir, tmp_path_factory)


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
    export.export_merged(run_dir, merged, echo=None)
    lines: list[str] = []
    res = push.push(run_dir, "someone/tiny-medqa-merged", what="merged", dry_run_dir=tmp_path / "m",
                   merged_dir=merged, echo=lines.append)
    assert res["files"] == sorted(["README.md", "config.json", "generation_config.json", "model.safetensors",
                                   "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                   EXPORT_INFO, "calibration.json", "medqa_adapter.json"])
    card = (tmp_path / "m" / "README.md").read_text()
    assert "library_name: transformers" in card and "Merge check" in card
    pytest.importorskip("medqa.serve")
    res = push.push(run_dir, "someone/tiny-medqa-space", space=True, dry_run_dir=tmp_path / "s", echo=lines.append)
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
    with pytest.raises(HubUnreachableError):
        push.push(run_dir, "someone/tiny-medqa", echo=lambda s: None)
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        push.push(run_dir, "someone/tiny-medqa", echo=lambda s: None)
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
    with pytest.raises(HubError) as e:
        push.push(run_dir, "someone/tiny-medqa", echo=print)
    assert FAKE_TOKEN not in str(e.value) and "hf_***" in str(e.value)

    def unauthorized(self, *a, **k):
        Resp.status_code = 401
        raise Boom("401 Client Error")

    monkeypatch.setattr(HfApi, "whoami", unauthorized)
    with pytest.raises(HubError, match="rejected the token"):
        push.push(run_dir, "someone/tiny-medqa", echo=print)
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
    res = push.push(run_dir, "someone/tiny-medqa", private=True, echo=lambda s: None)
    assert calls["create"] == ("someone/tiny-medqa", {"repo_type": "model", "private": True, "exist_ok": True}, True)
    assert calls["upload"] == ADAPTER_FILES and res["files"] == ADAPTER_FILES
    assert calls["upload_kw"]["repo_type"] == "model"


def test_push_refuses_bad_repo_and_pickle_adapter(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="USER/NAME"):
        push.push(run_dir, "not a repo", dry_run_dir=tmp_path / "x")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "adapter" / "adapter_model.safetensors").rename(run / "adapter" / "adapter_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        push.push(run, "someone/x", dry_run_dir=tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_errors_are_medqa_errors():
    assert issubclass(HubUnreachableError, HubError) and issubclass(HubError, MedQAError)
    assert issubclass(export.ExportError, MedQAError)


def cli_main_push(argv):
    """`medqa push ...` through cli.main (one-line errors)."""
    return cli_main(argv)
