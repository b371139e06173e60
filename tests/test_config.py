from pathlib import Path

import pytest

from medqa.config import RunConfig, build_config, config_fields, parse_value
from medqa.errors import ConfigError
from medqa.recipes import quickstart_config_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = build_config(path)
    assert isinstance(cfg, RunConfig)


def test_reference_recipe_values():
    cfg = build_config(CONFIGS / "qwen3-1.7b-medmcqa.yaml")
    assert cfg.model.name == "Qwen/Qwen3-1.7B"
    assert cfg.data.path == "openlifescienceai/medmcqa" and cfg.data.train_size == 2000
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.lr) == (2, 4, 4, 2e-4)
    assert cfg.train.scheduler == "cosine" and cfg.train.warmup_ratio == 0.05
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])


def test_grpo_recipe_continues_the_sft_recipes_adapter():
    """Issue 17.4: the GPU GRPO recipe starts from the SFT recipe's output adapter, on another draw of MedMCQA."""
    sft = build_config(CONFIGS / "qwen3-1.7b-medmcqa.yaml")
    cfg = build_config(CONFIGS / "qwen3-1.7b-medmcqa-grpo.yaml")
    assert cfg.train.method == "grpo" and sft.train.method == "sft"
    assert cfg.model.name == sft.model.name == "Qwen/Qwen3-1.7B"
    assert cfg.model.adapter == f"{sft.out}/adapter" and cfg.lora == sft.lora
    assert cfg.data.path == sft.data.path and cfg.data.split == "train" and cfg.data.seed != sft.data.seed
    assert cfg.eval_data == sft.eval_data  # the same evaluation questions: `medqa compare` pairs them
    g = cfg.grpo
    assert g.thinking and g.use_vllm == "auto" and g.num_generations == 8 and g.max_completion_length == 1024
    assert (cfg.train.batch_size * cfg.train.grad_accum) % g.num_generations == 0
    assert cfg.train.gradient_checkpointing and cfg.model.dtype == "auto"


def test_quickstart_config_is_the_packaged_one():
    assert (CONFIGS / "quickstart.yaml").read_text() == quickstart_config_path().read_text()


def test_overrides_win_and_are_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.1\n  epochs: 3\nmodel:\n  name: x\n")
    cfg = build_config(f, {"train.lr": parse_value("2e-5"), "lora.target_modules": parse_value("all-linear")})
    assert cfg.train.lr == 2e-5 and cfg.train.epochs == 3 and cfg.model.name == "x"
    assert cfg.lora.target_modules == "all-linear"
    assert build_config(None, {"lora.target_modules": parse_value("[q_proj, k_proj]")}).lora.target_modules == ["q_proj", "k_proj"]


def test_unknown_key_and_wrong_type_are_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: invalid config: unknown key 'train.lrr'"):
        build_config(f)
    with pytest.raises(ConfigError, match=r"'train.batch_size'"):
        build_config(None, {"train.batch_size": "four"})
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(f)
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(f)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "missing.yaml")


def test_every_field_is_reachable_as_a_flag():
    names = {n for n, _ in config_fields()}
    assert {"train.lr", "lora.r", "data.on_bad_rows", "model.trust_remote_code", "eval.protocol", "out"} <= names


def test_thinking_needs_generate_and_gets_its_own_token_default():
    """Issue 17.2: eval.thinking without eval.generate is an error; max_new_tokens unset is 96 for answer +
    explanation and 1024 with thinking, written into the resolved config; a value given wins."""
    assert build_config().eval.max_new_tokens == 96
    assert build_config(overrides={"eval.generate": True}).eval.max_new_tokens == 96
    cfg = build_config(overrides={"eval.generate": True, "eval.thinking": True})
    assert cfg.eval.thinking and cfg.eval.max_new_tokens == 1024
    assert build_config(overrides={"eval.generate": True, "eval.thinking": "false"}).eval.max_new_tokens == 96
    assert build_config(overrides={"eval.generate": True, "eval.thinking": True,
                                   "eval.max_new_tokens": 256}).eval.max_new_tokens == 256
    with pytest.raises(ConfigError, match=r"'eval': eval.thinking needs eval.generate true") as e:
        build_config(overrides={"eval.thinking": True})
    assert "{" not in str(e.value)  # the section is not dumped into the message
    with pytest.raises(ConfigError, match="'eval.max_new_tokens'"):
        build_config(overrides={"eval.generate": True, "eval.thinking": True, "eval.max_new_tokens": 0})
