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


# ----------------------------------------------------------------------------- the Space on its own (issue 16.4c)

_NO_INDEX = ("Could not fetch URL", "NewConnectionError", "Temporary failure in name resolution",
             "Failed to establish a new connection", "Network is unreachable", "ConnectTimeoutError",
             "Max retries exceeded", "No route to host")


def _pip_install(python: Path, args: list[str], log: Path) -> None:
    """`python -m pip install ARGS`; skips only when no package index answers, fails on anything else."""
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-input", *args], capture_output=True, text=True,
                          timeout=1800)
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        if any(m in proc.stdout + proc.stderr for m in _NO_INDEX):
            pytest.skip(f"pip cannot reach a package index: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 600) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_space_starts_from_its_own_requirements_and_answers(qwen_dir, tmp_path_factory, tmp_path):
    """Issue 16.4c: a Space exported from an adapter `medqa train` saved starts in a fresh venv holding nothing but
    its requirements.txt, plus gradio at the README's `sdk_version` (Spaces install gradio from that header, not
    from requirements.txt). torch is held to the build this test runs on (a constraints file) so that pip never
    pulls a multi-GB accelerator build. The app answers through `gradio_client` (the `/answer` endpoint of
    `serve.build_demo`) with the probabilities MedQA computes for that adapter, and a real Chromium shows the
    disclaimer and the confidence. Takes a few minutes (the venv installs torch, transformers and gradio)."""
    import socket
    import time

    import torch
    from gradio_client import Client
    from ship_runs import trained_run

    from medqa.config import RunConfig
    from medqa.inference import DISCLAIMER, Answerer

    t0 = time.monotonic()
    run = trained_run(qwen_dir, tmp_path_factory)  # the real `medqa train`
    out = space.space_export(tmp_path / "space", adapter=str(run / "adapter"))
    sdk = _front_matter(out / "README.md")["sdk_version"]
    reqs = [r for r in (out / "requirements.txt").read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert reqs and not any(r.startswith("gradio") for r in reqs)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")  # this build (here: the local CPU wheel), never CUDA's
    _pip_install(python, ["-r", str(out / "requirements.txt"), f"gradio=={sdk}", "-c", str(constraints)],
                 tmp_path / "pip.log")
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    assert "medqa" not in listed and f"gradio=={sdk}" in listed and f"torch=={torch.__version__}".lower() in listed
    installed = time.monotonic()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "GRADIO_", "MEDQA_"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1")  # the Space ships its model and adapter: it needs no Hub
    log = tmp_path / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(python), "app.py"], cwd=out, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(proc, url, log)
        started = time.monotonic()
        question = "Which nerve supplies the deltoid muscle?"
        options = ["Axillary nerve", "Radial nerve", "Musculocutaneous nerve", "Ulnar nerve"]
        r = Client(url, verbose=False, analytics_enabled=False, download_files=False).predict(
            question, options, api_name="/answer")
        assert r["letter"] in "ABCD" and r["answer"] == options["ABCD".index(r["letter"])]
        assert set(r["probabilities"]) == set("ABCD") and abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert 0.25 <= r["confidence"] <= 1 and r["confidence"] == max(r["probabilities"].values())
        assert r["disclaimer"] == DISCLAIMER and r["done"] and r["protocol"] == "chat"
        # the Space serves the trained adapter on its base under the adapter's protocol: MedQA's own scores
        local = Answerer.from_config(RunConfig(model=ModelConfig(adapter=str(run / "adapter"), device="cpu")))
        want = local.answer(question, options, explain=False)
        for k in "ABCD":
            assert abs(r["probabilities"][k] - want.probabilities[k]) <= 1e-5, (r["probabilities"], want.probabilities)
        answered = time.monotonic()
        _space_in_chromium(url, question, options, r)
        browsed = time.monotonic()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    print(f"\nSpace test timings: install {installed - t0:.0f} s, start {started - installed:.0f} s, "
          f"answer {answered - started:.0f} s, browser {browsed - answered:.0f} s, total {browsed - t0:.0f} s")


def _space_in_chromium(url: str, question: str, options: list[str], api_result: dict) -> None:
    """The page, in a real Chromium: the disclaimer, then a question answered with a visible confidence."""
    import re

    from test_serve import chromium_page

    with chromium_page(timeout_ms=120_000) as (page, expect):
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator("#mq-disclaimer")).to_be_visible()
        expect(page.locator("#mq-disclaimer")).to_contain_text("not medical advice")
        page.locator("#question textarea").fill(question)
        for letter, text in zip("abcd", options):
            page.locator(f"#option-{letter} textarea, #option-{letter} input").first.fill(text)
        page.get_by_role("button", name="Answer", exact=True).click()
        expect(page.locator("#answer-card .mq-card")).to_have_attribute("data-state", "done")
        expect(page.locator("#answer-card .mq-letter")).to_have_text(api_result["letter"])
        badge = page.locator("#answer-card .mq-badge")
        expect(badge).to_be_visible()
        expect(badge).to_have_text(re.compile(r"^(Low|Moderate|High) confidence: \d{1,3}%$"))
        assert badge.inner_text().endswith(f": {api_result['confidence']:.0%}")
        expect(page.locator("#answer-card .mq-disclaimer")).to_be_visible()
        expect(page.locator("#answer-card .mq-disclaimer")).to_have_text(api_result["disclaimer"])
