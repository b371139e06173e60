"""medqa.training.trainer: MedQATrainer's arguments, LoRA variants, multi-process runs, launch configs."""

import json

import pytest
import torch
from training_runs import tiny_run as _tiny_run

from medqa.config import build_config
from medqa.datasets import load_demo
from medqa.training import train


def test_training_arguments_follow_the_config(tmp_path):
    from medqa.hardware import detect
    from medqa.training.trainer import training_kwargs as _training_kwargs

    cfg = build_config(None, {"train.torch_compile": True, "train.gradient_checkpointing": True,
                              "train.neftune_alpha": 5})
    kw = _training_kwargs(cfg.train, tmp_path, "float32", detect("cpu"), "length_grouped", ["tensorboard"], False)
    assert kw["torch_compile"] and kw["activation_checkpointing"] and kw["neftune_noise_alpha"] == 5
    assert kw["train_sampling_strategy"] == "group_by_length" and kw["report_to"] == ["tensorboard"]


def test_dora_rslora_and_neftune_options(qwen_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    from medqa.config import LoraSettings

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "dora", **{"lora.use_dora": True, "lora.use_rslora": True,
                                                               "lora.r": 4, "lora.alpha": 8})
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_magnitude_vector" in n for n in names)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # rsLoRA: alpha / sqrt(r)
    assert train(cfg, model, tok, load_demo()[:8], progress=False)["steps"] == 4
    assert LoraSettings().use_dora is False

    def adapter(alpha):
        c, m, t = _tiny_run(qwen_dir, tmp_path / f"neft{alpha}", **{"train.neftune_alpha": alpha})
        train(c, m, t, load_demo()[:8], progress=False)
        return {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}

    plain, noisy = adapter(None), adapter(5.0)
    assert any(not torch.equal(plain[k], noisy[k]) for k in plain)  # the noise reached the gradients


@pytest.mark.slow
@pytest.mark.parametrize("batching,accum", [("padded", 1), ("auto", 2)])
def test_two_process_ddp_matches_one_process(qwen_dir, tmp_path, batching, accum):
    """torchrun with 2 CPU processes (gloo), batch 2 x accumulation `accum` each, equals 1 process with
    batch 2 x accumulation 2 x `accum`: the same examples per optimizer step, the same loss curve and the
    same adapter (fp32 tolerance). `auto`: balanced micro-batches (rank-aware) and the prompt prefix run
    once per optimizer step, its gradient added in the synchronised backward pass."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    def args(out, accum):
        return ["-m", "medqa.cli", "train", "--model", str(qwen_dir), "--dataset", "demo", "--data.train_size", "32",
                "--out", str(out), "--train.max_steps", "6", "--train.batch_size", "2", "--train.grad_accum", str(accum),
                "--train.batching", batching, "--train.calibration_size", "0", "--train.logging_steps", "1",
                "--train.lr", "1e-2", "--lora.dropout", "0", "--train.report_to", "[]", "--train.save_steps", "3"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args(tmp_path / "one", 2 * accum)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), *args(tmp_path / "two", accum)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"steps": 6') == 1  # rank 0 reports, rank 1 stays quiet

    def curve(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    c1, c2 = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(c1) == len(c2) == 6
    assert c1 == pytest.approx(c2, rel=2e-3)
    assert c1[-1] < c1[0]
    s2 = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert s2["processes"] == 2
    if batching == "auto":
        assert s2["batching"] == "balanced" and s2["step_prefix_tokens"] >= 16
    cks = tmp_path / "two" / "checkpoints"  # atomic checkpoints under 2 ranks: each rank's RNG state inside
    assert sorted(p.name for p in cks.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (cks / "checkpoint-6").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not (cks / ".staging").exists()
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), k


def test_accelerate_launch_configs_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    got = {f.stem: load_config_from_file(str(f)) for f in folder.glob("*.yaml")}
    assert set(got) == {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "multi_node"}
    assert got["ddp"].distributed_type == "MULTI_GPU"
    assert got["fsdp"].distributed_type == "FSDP" and got["fsdp"].fsdp_config["fsdp_version"] == 2
    assert got["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert got["deepspeed_zero3"].deepspeed_config["zero_stage"] == 3
    assert got["multi_node"].num_machines == 2 and got["multi_node"].num_processes == 16
    assert all(c.mixed_precision == "no" for c in got.values())  # the model is loaded in bf16/fp16 by MedQA


def _fake_liger(monkeypatch, calls):
    """liger-kernel as far as MedQA uses it, on the CPU: its fused linear-cross-entropy by PyTorch's maths."""
    import importlib.machinery
    import sys
    import types

    def liger_fused_linear_cross_entropy(h, w, target, ignore_index=-100, reduction="mean", **kw):
        calls.append((tuple(h.shape), reduction, ignore_index))
        return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w).float(), target,
                                                 ignore_index=ignore_index, reduction=reduction)

    for name in ("liger_kernel", "liger_kernel.transformers", "liger_kernel.transformers.functional"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["liger_kernel.transformers.functional"].liger_fused_linear_cross_entropy = \
        liger_fused_linear_cross_entropy


def test_liger_path_runs_liger_fused_loss_on_target_positions(qwen_dir, tmp_path, monkeypatch):
    """Issue 16.2 on a CPU with the device and package probes faked: the liger path sets the Trainer's
    use_liger_kernel (with Liger's loss-computing forward off), never applies MedQA's lean patches, computes
    the loss through Liger's fused linear-cross-entropy on the target positions only, and gives the lean
    path's loss curve."""
    import transformers.trainer

    import medqa.kernels as kernels
    import medqa.training.memory as memory
    from medqa.hardware import Hardware

    over = {"lora.dropout": 0.0, "train.lr": 1e-2}
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "lean", **over)
    lean = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert lean["kernels"]["path"] == "lean" and lean["kernels"]["fused_loss"] == "lean"
    assert lean["kernels"]["use_liger_kernel"] is False and lean["lean_activations"]["swiglu_mlp"] == 2

    calls, applied = [], []
    _fake_liger(monkeypatch, calls)
    monkeypatch.setattr(kernels, "installed_kernels", lambda: {"liger_kernel": "0.8.5", "flash_attn": None})
    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", lambda m, config: applied.append(config))
    monkeypatch.setattr(memory, "available_memory", lambda hw: 2**40)
    gpu = Hardware("cuda", "cpu", "Fake GPU", "float32", False, False)  # fp32: the same maths as the CPU run
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "liger", **over, **{"train.kernels": "liger"})
    s = train(cfg, model, tok, load_demo()[:8], hw=gpu, progress=False)
    assert applied == [{"fused_linear_cross_entropy": False, "cross_entropy": False}]
    assert s["kernels"]["path"] == "liger" and s["kernels"]["use_liger_kernel"] is True
    assert s["kernels"]["fused_loss"] == "liger" and s["kernels"]["attention"] == "sdpa"
    assert s["lean_activations"] == {"fused_head": False}  # nothing of medqa.lean patched
    assert len(calls) == s["steps"] * cfg.train.grad_accum and {c[1:] for c in calls} == {("sum", -100)}
    assert sum(c[0][0] for c in calls) == s["computed"]["logit_positions"]  # target positions only
    assert s["train_loss"] == pytest.approx(lean["train_loss"], rel=1e-4)
    assert "- kernels: liger, attention sdpa, fused head and loss: liger" in \
        (tmp_path / "liger" / "train_report.md").read_text()


def test_plain_kernels_patch_nothing(qwen_dir, tmp_path):
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "plain", **{"train.kernels": "plain"})
    s = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert s["kernels"]["path"] == "plain" and s["kernels"]["fused_loss"] is None
    assert s["lean_activations"] == {"fused_head": False}  # nothing of medqa.lean patched


def test_tracking_auto_uses_tensorboard_only_when_installed(monkeypatch, capsys):
    import importlib.util

    from medqa.training import trainer

    real = importlib.util.find_spec
    assert trainer.installed_trackers(["auto"]) == ["tensorboard"]  # the dev extra installs it
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    assert trainer.installed_trackers(["auto"]) == [] and capsys.readouterr().out == ""  # silently: optional
    assert trainer.installed_trackers(["tensorboard"]) == []
    assert "not installed" in capsys.readouterr().out  # asked for by name: said
