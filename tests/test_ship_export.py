"""medqa.ship.export: the merged export (verified against base + adapter) and the output-folder rules."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from ship_runs import copy_run as _copy_run
from ship_runs import parse as _parse
from ship_runs import probs as _probs
from ship_runs import trained_run
from test_predict import THRESHOLD_CAL

from medqa.errors import ConfigError, ModelError
from medqa.ship import export


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def run_dir(qwen_dir, tmp_path_factory) -> Path:
    return trained_run(qwen_dir, tmp_path_factory)


def test_export_merged_matches_base_plus_adapter(run_dir, qwen_dir, tmp_path):
    import numpy as np

    from medqa.config import ModelConfig
    from medqa.modeling import load_model

    out = tmp_path / "merged"
    lines = []
    res = export.export_merged(run_dir, out, shard_size="10MB", echo=lines.append)
    # sharded safetensors, tokenizer, generation config, provenance; no pickle, no temp folders left
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) >= 2
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", export.EXPORT_INFO):
        assert f in files, f
    assert not [f for f in files if f.endswith((".bin", ".pt"))]
    assert sorted(res.files) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert res.dtype == "float32" and res.tolerance == 1e-4 and res.max_abs_diff <= 1e-4
    assert lines[-1].startswith("verified: max |Δp| = ") and "≤ 1e-04" in lines[-1]
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["verification"]["max_abs_diff"] == res.max_abs_diff and str(run_dir) not in json.dumps(info)

    # independently: merged == base + adapter, and != base (the check is not vacuous)
    merged, tok = load_model(ModelConfig(name=str(out), dtype="float32", device="cpu"))
    peft, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(run_dir / "adapter"), dtype="float32", device="cpu"))
    base, _ = load_model(ModelConfig(name=str(qwen_dir), dtype="float32", device="cpu"))
    pm, pp, pb = _probs(merged, tok), _probs(peft, tok), _probs(base, tok)
    assert max(np.abs(a - b).max() for a, b in zip(pm, pp)) <= 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(pm, pb)) > 1e-3


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _is_pickle(f: Path) -> bool:
    """A pickle by name, or by content: a raw pickle stream (protocol 2+) or torch.save's zip archive. A
    .safetensors file must parse as safetensors (its 8-byte header length could look like a pickle opcode)."""
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            return not list(st.keys())
    head = f.read_bytes()[:4]
    return f.suffix in _PICKLE_SUFFIXES or (head[:1] == b"\x80" and 2 <= head[1] <= 5) or head == b"PK\x03\x04"


def test_merged_export_loads_in_plain_transformers(run_dir, qwen_dir, tmp_path):
    """Issue 16.4b: the merged folder loads with plain `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`
    (no missing or unexpected weights, the chat template included, no pickle anywhere) and gives the letter
    probabilities of base + adapter loaded with plain PEFT (float32: merge rounding only, within 1e-4)."""
    import numpy as np
    import torch
    from peft import PeftModel
    from test_inference import _plain_letter_probs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqa.datasets import LETTERS, load_demo
    from medqa.format import messages

    out = tmp_path / "merged"
    export.export_merged(run_dir, out, shard_size="10MB", echo=None)
    assert [f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file() and _is_pickle(f)] == []
    assert any(f.suffix == ".safetensors" for f in out.iterdir())

    merged, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info  # every weight found, none left over
    assert merged.dtype == torch.float32 and merged.config.model_type == "qwen3"
    tok = AutoTokenizer.from_pretrained(str(out))
    adapter_tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    assert tok.chat_template and tok.chat_template == adapter_tok.chat_template

    records = load_demo()[:6]

    def render(t, rec):
        return t.apply_chat_template(messages(rec), tokenize=False, add_generation_prompt=True, enable_thinking=False)

    prompts = [render(tok, rec) for rec in records]
    assert prompts == [render(adapter_tok, rec) for rec in records]
    letters = [LETTERS[: len(rec.options)] for rec in records]
    merged.eval()
    got = [_plain_letter_probs(merged, tok, p, L) for p, L in zip(prompts, letters)]
    base = AutoModelForCausalLM.from_pretrained(str(qwen_dir)).eval()
    plain_base = [_plain_letter_probs(base, adapter_tok, p, L) for p, L in zip(prompts, letters)]
    peft = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    want = [_plain_letter_probs(peft, adapter_tok, p, L) for p, L in zip(prompts, letters)]
    assert max(np.abs(a - b).max() for a, b in zip(got, want)) <= 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(got, plain_base)) > 1e-3  # the adapter was merged in


def test_export_fails_loudly_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    import torch

    real = export._merge

    def broken(model, dtype):
        m = real(model, dtype)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "q_proj" in name:
                    p.add_(torch.randn_like(p))
        return m

    monkeypatch.setattr(export, "_merge", broken)
    out = tmp_path / "merged"
    with pytest.raises(export.ExportError, match=r"max \|Δp\| = .* > tolerance 1e-04"):
        export.export_merged(run_dir, out, echo=None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_pickle_base_and_nonempty_out(run_dir, qwen_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(qwen_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelError, match="pickle"):
        export.export_merged(run_dir, tmp_path / "m", base_model=str(pickled), echo=None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export.export_merged(run_dir, tmp_path / "full", echo=None)


def test_export_cli_requires_merge(run_dir, tmp_path):
    ns = _parse(export.add_export_parser, ["export", str(run_dir), "--out", str(tmp_path / "m")])
    with pytest.raises(ConfigError, match="--merge"):
        export.export_main(ns)


def test_merged_export_keeps_calibration_and_predict_applies_it(run_dir, tmp_path):
    """Issue 4: the merged folder carries calibration.json and medqa_adapter.json; `medqa predict --model
    MERGED` applies that temperature and threshold and shows the guarantee."""
    import io

    from medqa.calibrate import guarantee_text
    from medqa.predict import add_predict_parser, predict_main

    run = _copy_run(run_dir, tmp_path / "run", {**THRESHOLD_CAL, "temperature": 2.0})
    out = tmp_path / "merged"
    export.export_merged(run, out, echo=None)
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


def test_export_never_replaces_the_run_even_with_force(run_dir, tmp_path):
    """Issue 6: `medqa export RUN --merge --out RUN --force` used to replace the run folder."""
    run = _copy_run(run_dir, tmp_path / "work" / "run")
    before = _snapshot(run)
    for out in (run, run / "adapter", run / "merged", tmp_path / "work"):
        with pytest.raises(ConfigError) as e:
            export.export_merged(run, out, overwrite=True, echo=None)
        assert "run" in str(e.value) or "adapter" in str(e.value), str(e.value)
        assert _snapshot(run) == before
    other = _copy_run(run_dir, tmp_path / "other-run")
    with pytest.raises(ConfigError, match="training run"):
        export.export_merged(run, other, overwrite=True, echo=None)
    assert (other / "config.yaml").is_file() and (other / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(ConfigError, match="run"):
        export.export_main(_parse(export.add_export_parser, ["export", str(run), "--merge", "--out", str(run), "--force"]))
    assert _snapshot(run) == before


def test_export_force_replaces_a_previous_export(run_dir, tmp_path):
    out = tmp_path / "merged"
    export.export_merged(run_dir, out, echo=None)
    (out / "stale.txt").write_text("old")
    export.export_merged(run_dir, out, overwrite=True, echo=None)
    assert not (out / "stale.txt").exists() and (out / export.EXPORT_INFO).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ----------------------------------------------------------------------------- flags: the one config parser


def test_export_and_push_flags_come_from_the_config_parser(tmp_path):
    """`--config`, `--model`, `--device` and every `--model.*` field, plus the older `--base`, `--allow-pickle`,
    `--trust-remote-code` spellings, all resolve through `medqa.flags` into one set of loading options."""
    from medqa.ship.push import add_push_parser

    ns = _parse(export.add_export_parser, ["export", "RUN", "--merge", "--out", "X"])
    assert export.model_options(ns) == dict(base_model=None, revision=None, device="cpu", allow_pickle=False,
                                            trust_remote_code=False)
    ns = _parse(export.add_export_parser, ["export", "RUN", "--merge", "--out", "X", "--base", "some/base",
                                           "--allow-pickle", "--trust-remote-code", "--device", "cuda:1"])
    assert export.model_options(ns) == dict(base_model="some/base", revision=None, device="cuda:1", allow_pickle=True,
                                            trust_remote_code=True)
    conf = tmp_path / "c.yaml"
    conf.write_text("model:\n  name: from/yaml\n  device: mps\n  revision: v1\n")
    ns = _parse(add_push_parser, ["push", "RUN", "--repo", "a/b", "--config", str(conf), "--model.trust_remote_code",
                                  "true", "--model.allow_pickle", "true", "--model", "from/flag"])
    assert export.model_options(ns) == dict(base_model="from/flag", revision="v1", device="mps", allow_pickle=True,
                                            trust_remote_code=True)


def test_staged_folder_swaps_in_or_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with export.staged_folder(out) as folder:
        folder.mkdir()
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        with export.staged_folder(out) as folder:
            folder.mkdir()
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
