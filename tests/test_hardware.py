"""Device selection per process (torchrun / accelerate launch), sharded loading paths, the memory check's device."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from medqa.errors import ConfigError
from medqa.hardware import Hardware, select_device, sharded_engine


def test_select_device_follows_local_rank_and_device_count():
    gpus = {"cuda": 4, "mps": 0, "xpu": 0}
    assert select_device("auto", gpus) == "cuda:0"
    assert [select_device("auto", gpus, rank, 4) for rank in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert select_device("cuda", gpus, 2, 4) == "cuda:2"
    assert select_device("cuda:3", gpus) == "cuda:3"
    assert select_device("cuda:1", gpus, 1, 2) == "cuda:1"  # its own GPU, named
    with pytest.raises(ConfigError, match="each process uses the GPU of its LOCAL_RANK"):
        select_device("cuda:0", gpus, 1, 2)
    with pytest.raises(ConfigError, match="LOCAL_RANK 4 but only 4"):
        select_device("auto", gpus, 4, 8)
    with pytest.raises(ConfigError, match="not available"):
        select_device("cuda:7", gpus)
    assert select_device("auto", {"cuda": 0, "mps": 1}) == "mps"
    assert select_device("auto", {"cuda": 0, "xpu": 2}, 1, 2) == "xpu:1"
    assert select_device("auto", {}) == "cpu" and select_device("cpu", gpus, 3, 4) == "cpu"
    with pytest.raises(ConfigError, match="not available"):
        select_device("cuda", {"cuda": 0})
    with pytest.raises(ConfigError, match="unknown device"):
        select_device("tpu", gpus)


def test_sharded_engine_from_accelerates_launch_variables(monkeypatch):
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(k, raising=False)
    assert sharded_engine() is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert sharded_engine() is None  # ZeRO-2 keeps whole parameters on every GPU
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert sharded_engine() == "deepspeed-zero3"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharded_engine() == "fsdp"


_RANK_SCRIPT = textwrap.dedent("""
    import json, os, torch
    # a CPU machine posing as one with 2 GPUs: the device probe is faked, the selection logic is real
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2
    torch.cuda.get_device_name = lambda i=0: f"Fake GPU {i}"
    torch.cuda.is_bf16_supported = lambda including_emulation=True: True
    asked = []
    torch.cuda.mem_get_info = lambda device=None: (asked.append(str(device)) or (80 * 2**30, 96 * 2**30))
    from medqa.hardware import detect
    from medqa.training import available_memory
    torch.distributed.init_process_group("gloo")  # the two ranks really run side by side
    hw = detect("auto")
    free = available_memory(hw)
    print("RESULT " + json.dumps({"rank": int(os.environ["LOCAL_RANK"]), "device": hw.device,
                                  "memory_device": asked, "free": free}), flush=True)
    torch.distributed.destroy_process_group()
""")


def test_each_rank_picks_its_own_gpu_and_checks_its_memory(tmp_path):
    """Issue 14.2: under torchrun every rank loaded onto cuda:0 and checked cuda:0's memory."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), str(script)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    decoder, got, at = json.JSONDecoder(), [], r.stdout.find("RESULT ")
    while at >= 0:  # the two ranks' lines may interleave on one line of the shared stdout
        obj, end = decoder.raw_decode(r.stdout, at + len("RESULT "))
        got.append(obj)
        at = r.stdout.find("RESULT ", end)
    got.sort(key=lambda x: x["rank"])
    assert [g["device"] for g in got] == ["cuda:0", "cuda:1"]
    assert [g["memory_device"] for g in got] == [["cuda:0"], ["cuda:1"]]


def test_zero3_arguments_exist_before_the_model_loads(monkeypatch, tmp_path):
    """ZeRO-3: Transformers partitions the model while loading only if TrainingArguments (which register the
    DeepSpeed config) were created first; run_train creates them before load_model."""
    import medqa.recipes.lora_sft as recipes
    import medqa.training.trainer as train_mod
    from medqa.config import build_config
    from conftest import mcq_row, write_jsonl

    order = []
    monkeypatch.setattr("medqa.hardware.sharded_engine", lambda: "deepspeed-zero3")

    class Args:
        def __init__(self, **kw):
            order.append(("TrainingArguments", kw["bf16"], kw["fp16"]))

    monkeypatch.setattr(train_mod, "_arguments_class", lambda: Args)

    def load_model(*a, **k):
        order.append("load_model")
        raise RuntimeError("stop here")

    monkeypatch.setattr(recipes, "load_model", load_model)
    data = write_jsonl(tmp_path / "d.jsonl", [mcq_row(i) for i in range(12)])
    cfg = build_config(overrides={"data.path": str(data), "out": str(tmp_path / "run"), "model.dtype": "bfloat16"})
    with pytest.raises(RuntimeError, match="stop here"):
        recipes.run_train(cfg, progress=False)
    assert order == [("TrainingArguments", True, False), "load_model"]
    monkeypatch.setattr("medqa.hardware.sharded_engine", lambda: None)
    assert train_mod.zero3_loading(cfg, None) is None


# ----------------------------------------------------------------------------- kernels (issue 16.2)

CPU = Hardware("cpu", "cpu", "CPU", "float32", False, False)
CUDA = Hardware("cuda", "cuda:0", "Fake H100", "bfloat16", True, True)
CUDA_FP16 = Hardware("cuda", "cuda:0", "Fake T4", "float16", False, True)
ROCM = Hardware("rocm", "cuda:0", "Fake MI300X", "bfloat16", True, True)
MPS = Hardware("mps", "mps", "Apple MPS", "float16", False, True)
BOTH = {"liger_kernel": "0.8.5", "flash_attn": "2.7.4.post1"}
NONE = {"liger_kernel": None, "flash_attn": None}


@pytest.mark.parametrize("hw,model_type,installed,path,attention,batching", [
    (CPU, "llama", BOTH, "lean", "sdpa", "balanced"),  # the packages change nothing on a CPU
    (MPS, "llama", BOTH, "lean", "sdpa", "balanced"),
    (CUDA, "llama", NONE, "lean", "sdpa", "balanced"),
    (CUDA, "llama", BOTH, "liger", "flash_attention_2", "padding_free"),
    (CUDA, "qwen3", {"liger_kernel": "0.8.5", "flash_attn": None}, "liger", "sdpa", "balanced"),
    (CUDA, "gpt2", BOTH, "lean", "flash_attention_2", "padding_free"),  # no Liger kernels for gpt2
    (CUDA, "llama", {"liger_kernel": "0.4.2", "flash_attn": "2.1.0"}, "lean", "sdpa", "balanced"),  # too old
    (CUDA_FP16, "mistral", BOTH, "liger", "flash_attention_2", "padding_free"),
    (ROCM, "qwen3", BOTH, "liger", "flash_attention_2", "padding_free"),
    (ROCM, "qwen3", NONE, "lean", "sdpa", "balanced"),
])
def test_training_kernels_and_arguments_per_backend(tmp_path, hw, model_type, installed, path, attention, batching):
    from transformers import TrainingArguments

    from medqa.config import build_config
    from medqa.kernels import training_kernels
    from medqa.training.trainer import training_kwargs

    plan = training_kernels(hw, model_type, installed=installed)
    assert (plan.path, plan.attention, plan.batching, plan.use_liger_kernel) == (path, attention, batching,
                                                                                  path == "liger")
    tc = build_config().train
    kw = training_kwargs(tc, tmp_path, hw.dtype, hw, plan.batching, [], False, plan)
    assert (kw["bf16"], kw["fp16"], kw["use_cpu"]) == (hw.dtype == "bfloat16", hw.dtype == "float16", hw is CPU)
    assert kw.get("use_liger_kernel", False) is (path == "liger")
    if path == "liger":  # target-only logits: MedQA runs Liger's fused loss itself, Liger patches the rest
        assert kw["liger_kernel_config"] == {"fused_linear_cross_entropy": False, "cross_entropy": False}
        whole = training_kwargs(tc.model_copy(update={"target_only_logits": False}), tmp_path, hw.dtype, hw,
                                plan.batching, [], False, plan)
        assert whole["liger_kernel_config"]["fused_linear_cross_entropy"] is True  # Liger's own forward computes it
        args = TrainingArguments(**{**kw, "bf16": False, "fp16": False, "use_cpu": True})  # real argument names
        assert args.use_liger_kernel and args.liger_kernel_config == kw["liger_kernel_config"]
    else:
        assert "liger_kernel_config" not in kw


def test_training_kernels_choices_and_clear_errors():
    from medqa.kernels import training_kernels

    assert training_kernels(CUDA, "llama", "float32", installed=BOTH).attention == "sdpa"  # FA2 has no fp32
    assert training_kernels(CUDA, "llama", installed=BOTH, attn_implementation="eager").batching == "balanced"
    assert training_kernels(CUDA, "llama", installed=BOTH, requested="lean").path == "lean"
    assert training_kernels(CUDA, "llama", installed=BOTH, requested="plain").use_liger_kernel is False
    assert training_kernels(CPU, "llama", installed=NONE, lean=False).path == "plain"
    assert training_kernels(CUDA, "llama", installed=BOTH, lean=False).path == "liger"
    assert training_kernels(ROCM, "llama", installed=BOTH, requested="liger").path == "liger"
    with pytest.raises(ConfigError, match=r'liger: liger-kernel is not installed; pip install "medqa\[liger\]"'):
        training_kernels(CUDA, "llama", installed=NONE, requested="liger")
    with pytest.raises(ConfigError, match=r"older than 0.8.0; pip install"):
        training_kernels(CUDA, "llama", installed={"liger_kernel": "0.5.10", "flash_attn": None}, requested="liger")
    with pytest.raises(ConfigError, match="no kernels for model type 'gpt2'; set train.kernels auto or lean"):
        training_kernels(CUDA, "gpt2", installed=BOTH, requested="liger")
    with pytest.raises(ConfigError, match="need a CUDA or ROCm GPU; this run is on cpu"):
        training_kernels(CPU, "llama", installed=BOTH, requested="liger")
    with pytest.raises(ConfigError, match="need a CUDA or ROCm GPU; this run is on mps"):
        training_kernels(MPS, "llama", installed=BOTH, requested="liger")


def test_kernels_config_flag_and_probe(monkeypatch):
    import importlib.util

    from medqa.config import build_config
    from medqa.kernels import installed_kernels

    assert build_config().train.kernels == "auto"
    assert build_config(overrides={"train.kernels": "liger"}).train.kernels == "liger"
    with pytest.raises(ConfigError, match="train.kernels"):
        build_config(overrides={"train.kernels": "triton"})
    import importlib.metadata as md

    def version(dist):
        if dist in ("liger-kernel", "flash-attn"):
            return {"liger-kernel": "0.8.5", "flash-attn": "2.7.4.post1"}[dist]
        raise md.PackageNotFoundError(dist)

    monkeypatch.setattr(md, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("liger_kernel", "flash_attn")
                        else None)
    assert installed_kernels() == BOTH
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert installed_kernels() == NONE  # nothing importable: nothing reported, whatever metadata says


@pytest.mark.parametrize("installed", [BOTH, NONE])
def test_doctor_reports_kernels_and_the_training_path(monkeypatch, installed):
    import medqa.hardware as hardware
    import medqa.kernels as kernels

    monkeypatch.setattr(hardware, "detect", lambda device="auto": CUDA)
    monkeypatch.setattr(kernels, "installed_kernels", lambda: dict(installed))
    r = hardware.doctor()
    assert r["kernels"] == installed
    assert r["attention"]["flash_attention_2"] is (installed is BOTH)
    t = r["training_path"]
    assert (t["model"], t["model_type"]) == ("smollm2-135m-instruct", "llama")
    if installed is BOTH:
        assert (t["path"], t["attention"], t["batching"], t["use_liger_kernel"]) == (
            "liger", "flash_attention_2", "padding_free", True)
        assert not [a for a in r["advice"] if "liger" in a or "flash-attn" in a]
    else:
        assert (t["path"], t["attention"], t["batching"], t["use_liger_kernel"]) == ("lean", "sdpa", "balanced", False)
        assert any('pip install "medqa[liger]"' in a for a in r["advice"])
        assert any("flash-attn is not installed" in a for a in r["advice"])
    text = hardware.format_doctor(r)
    if installed is BOTH:
        assert "kernels: liger-kernel 0.8.5, flash-attn 2.7.4.post1" in text
        assert "kernels liger (Liger's Triton kernels" in text and "padding-free batching" in text
    else:
        assert "kernels: liger-kernel not installed, flash-attn not installed" in text
        assert "kernels lean (MedQA's lean autograd: liger-kernel is not installed)" in text
        assert "attention sdpa, padded (balanced) batching" in text
    monkeypatch.setattr(hardware, "detect", lambda device="auto": CPU)
    cpu = hardware.doctor()
    assert cpu["training_path"]["path"] == "lean" and not [a for a in cpu["advice"] if "liger" in a]
