"""Device selection per process (torchrun / accelerate launch), sharded loading paths, the memory check's device."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from medqa.errors import ConfigError
from medqa.hardware import select_device, sharded_engine


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
