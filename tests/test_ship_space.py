"""medqa.ship.space: the Hugging Face Spaces folder (`medqa space export`), whose app serves one Answerer."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import THRESHOLD_CAL, make_adapter

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")

from medqa.config import ModelConfig  # noqa: E402
from medqa.errors import ConfigError, ModelError  # noqa: E402
from medqa.modeling import load_model  # noqa: E402
from medqa.ship import space  # noqa: E402


def _sub(add):
    parser = argparse.ArgumentParser(prog="medqa")
    add(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def lm_eval_adapter(qwen_dir, tmp_path_factory):
    return make_adapter(qwen_dir, tmp_path_factory.mktemp("space-adapter") / "adapter", protocol="lm-eval",
                        calibration=THRESHOLD_CAL)


# ----------------------------------------------------------------------------- Spaces export


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, qwen_dir):
    from medqa.config import LoraSettings
    from medqa.modeling import apply_lora

    model, _ = load_model(ModelConfig(name=str(qwen_dir), device="cpu"))
    out = tmp_path_factory.mktemp("adapter")
    apply_lora(model, LoraSettings(r=2, alpha=4)).save_pretrained(out)
    return out


def _front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_space_export_local_model_and_adapter(qwen_dir, adapter_dir, tmp_path):
    out = tmp_path / "space"
    ns = _sub(space.add_space_parser).parse_args(["space", "export", str(out), "--model", str(qwen_dir),
                                                  "--adapter", str(adapter_dir)])
    messages = []
    assert space.space_main(ns, echo=messages.append) == 0 and str(out) in messages[0]
    for f in ("app.py", "requirements.txt", "README.md", ".gitattributes", "medqa/serve.py", "medqa/predict.py",
              "medqa/resources/demo_questions.jsonl", "adapter/adapter_config.json",
              "adapter/adapter_model.safetensors", "model/model.safetensors", "model/config.json"):
        assert (out / f).is_file(), f
    assert not list(out.rglob("__pycache__"))
    assert "Answerer.from_config(" in (out / "app.py").read_text()  # the Space answers through the one path
    meta = _front_matter(out / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__ and meta["app_file"] == "app.py"
    assert meta["title"] and len(meta["short_description"]) <= 60
    assert "not medical advice" in (out / "README.md").read_text()
    reqs = (out / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("transformers") for r in reqs) and not any(r.startswith("gradio") for r in reqs)
    # the folder runs on its own: its vendored medqa builds the demo (without launching it)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    proc = subprocess.run(
        [sys.executable, "-c", "import app, medqa; print(type(app.demo).__name__, medqa.__file__)"],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, where = proc.stdout.split()[-2:]
    assert kind == "Blocks" and Path(where).resolve().is_relative_to(out.resolve())


def test_space_export_default_model_ships_the_gguf(tmp_path):
    from medqa.modeling import default_gguf

    try:
        gguf = default_gguf()
    except ModelError as e:
        pytest.skip(str(e))
    out = space.space_export(tmp_path / "s")
    assert (out / "model" / gguf.name).stat().st_size == gguf.stat().st_size
    assert "gguf" in (out / "requirements.txt").read_text()
    assert f"model/{gguf.name}" in (out / "app.py").read_text()
    assert _front_matter(out / "README.md")["models"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_space_export_refuses_bad_input(tmp_path, qwen_dir):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        space.space_export(tmp_path / "full", str(qwen_dir))
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        space.space_export(tmp_path / "new", str(qwen_dir), adapter=str(tmp_path))
    out = space.space_export(tmp_path / "full", str(qwen_dir), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "app.py").is_file()


def test_space_export_without_model_ships_the_adapters_base(lm_eval_adapter, qwen_dir, plain_dir, tmp_path):
    """Issue 4: `space export --adapter` alone ships the base the adapter was trained on, never SmolLM2
    with a foreign adapter; an explicit disagreeing --model is refused unless forced."""
    out = space.space_export(tmp_path / "space", adapter=str(lm_eval_adapter))
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "qwen3"
    assert not list((out / "model").glob("*.gguf"))
    for f in ("adapter/medqa_adapter.json", "adapter/calibration.json"):
        assert (out / f).is_file(), f
    with pytest.raises(ModelError, match="--force-base"):
        space.space_export(tmp_path / "other", str(plain_dir), adapter=str(lm_eval_adapter))
    assert not (tmp_path / "other").exists()
    ns = _sub(space.add_space_parser).parse_args(["space", "export", str(tmp_path / "other"), "--model", str(plain_dir),
                                                  "--adapter", str(lm_eval_adapter), "--force-base"])
    assert space.space_main(ns, echo=lambda s: None) == 0 and (tmp_path / "other" / "model" / "config.json").is_file()


# ----------------------------------------------------------------------------- --force is not destructive


def test_space_export_force_checks_its_inputs_before_touching_the_folder(tmp_path, qwen_dir):
    """Issue 6: a wrong --adapter (or model) with --force leaves the target folder untouched."""
    out = tmp_path / "space"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        space.space_export(out, str(qwen_dir), adapter=str(tmp_path / "no-such-adapter"), overwrite=True)
    with pytest.raises(ModelError, match="GGUF file not found"):
        space.space_export(out, str(tmp_path / "missing.gguf"), overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]


def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model:\n  name: x\n")
    (folder / "run_summary.json").write_text("{}")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    return folder


def test_space_export_never_replaces_a_run_an_adapter_or_checkpoints(tmp_path, qwen_dir, adapter_dir):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="run"):
        space.space_export(run, str(qwen_dir), overwrite=True)
    assert (run / "config.yaml").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ConfigError, match="checkpoint"):
        space.space_export(ckpt, str(qwen_dir), overwrite=True)
    assert (ckpt / "checkpoint-5").is_dir()
    copy = tmp_path / "adapter-copy"
    shutil.copytree(adapter_dir, copy)
    with pytest.raises(ConfigError, match="adapter"):
        space.space_export(copy, str(qwen_dir), overwrite=True)
    assert (copy / "adapter_config.json").is_file()
    # the output can be neither the adapter it ships, nor inside it, nor a folder holding it
    with pytest.raises(ConfigError):
        space.space_export(copy / "space", str(qwen_dir), adapter=str(copy))
    with pytest.raises(ConfigError):
        space.space_export(tmp_path, str(qwen_dir), adapter=str(copy), overwrite=True)
    assert (copy / "adapter_config.json").is_file() and not (copy / "space").exists()


def test_space_export_force_replaces_a_previous_space_atomically(tmp_path, qwen_dir, adapter_dir, monkeypatch):
    out = space.space_export(tmp_path / "space", str(qwen_dir), adapter=str(adapter_dir))
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "stale.txt").write_text("old")

    def broken(*a, **k):
        raise RuntimeError("disk trouble")

    real = space._space_readme
    monkeypatch.setattr(space, "_space_readme", broken)
    with pytest.raises(RuntimeError, match="disk trouble"):
        space.space_export(out, str(qwen_dir), adapter=str(adapter_dir), overwrite=True)
    assert (out / "app.py").is_file() and (out / "stale.txt").is_file() and (out / ".git" / "HEAD").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # no staging folder left behind
    monkeypatch.setattr(space, "_space_readme", real)
    space.space_export(out, str(qwen_dir), overwrite=True)
    assert (out / "app.py").is_file() and not (out / "stale.txt").exists() and not (out / "adapter").exists()
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"  # the Space's git checkout is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]
