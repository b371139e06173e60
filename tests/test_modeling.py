import numpy as np
import pytest
import torch

from medqa.config import LoraSettings, ModelConfig
from medqa.data import load_demo
from medqa.errors import ModelError
from medqa.evaluate import score_records
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
