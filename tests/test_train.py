import json

import pytest
import torch
import yaml

from medqa.config import build_config
from medqa.data import load_demo
from medqa.errors import DataError
from medqa.format import PromptFormat
from medqa.modeling import apply_lora, load_model
from medqa.train import PadCollator, build_features, train


def test_pad_collator_masks_padding():
    batch = PadCollator(pad_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [5], "labels": [5]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_build_features_counts_what_it_cuts(qwen_tokenizer):
    fmt = PromptFormat(qwen_tokenizer)
    feats, stats = build_features(fmt, load_demo()[:5], max_length=130)
    assert stats["examples"] + stats["dropped_too_long"] == 5
    assert stats["truncated"] >= 1
    assert all(len(f["input_ids"]) <= 130 for f in feats)
    with pytest.raises(DataError, match="max_length"):
        build_features(fmt, load_demo()[:2], max_length=16)


def test_train_writes_a_complete_run_directory(qwen_dir, tmp_path):
    cfg = build_config(None, {
        "model.name": str(qwen_dir), "out": str(tmp_path / "run"),
        "train.max_steps": 4, "train.batch_size": 2, "train.grad_accum": 2, "train.lr": 1e-2,
        "train.logging_steps": 1, "train.save_steps": 2,
    })
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    summary = train(cfg, model, tok, load_demo()[:16], progress=False)
    run = tmp_path / "run"
    assert summary["steps"] == 4
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "tokenizer_config.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs if "loss" in entry] == [1, 2, 3, 4]
    assert all("learning_rate" in entry and "grad_norm" in entry for entry in logs if "loss" in entry)
    assert json.loads((run / "train_summary.json").read_text())["data"]["examples"] == 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed  # the adapter learned something


def test_training_lowers_the_loss_on_what_it_sees(qwen_dir, tmp_path):
    cfg = build_config(None, {
        "model.name": str(qwen_dir), "out": str(tmp_path / "run"),
        "train.max_steps": 12, "train.batch_size": 4, "train.grad_accum": 1, "train.lr": 3e-2,
        "train.logging_steps": 1, "train.warmup_ratio": 0.0, "lora.r": 16, "lora.alpha": 512,
        "lora.target_modules": "all-linear", "lora.dropout": 0.0,
    })
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    records = load_demo()[:4]
    feats, _ = build_features(PromptFormat(tok), records, cfg.train.max_length)
    batch = PadCollator(tok.pad_token_id)(feats)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**batch).loss)

    before = loss()
    train(cfg, model, tok, records, progress=False)
    # a random tiny model sits near log(vocab) = 11.9; the adapter must move it down measurably
    assert loss() < before - 0.05


def _tiny_run(qwen_dir, out, **over):
    ov = {"model.name": str(qwen_dir), "out": str(out), "train.max_steps": 4, "train.batch_size": 2,
          "train.grad_accum": 1, "train.logging_steps": 1, "train.save_steps": 2, "train.save_total_limit": 10,
          "train.report_to": []}
    ov.update(over)
    cfg = build_config(None, ov)
    model, tok = load_model(cfg.model)
    return cfg, apply_lora(model, cfg.lora), tok


def test_last_complete_checkpoint_skips_torn_and_corrupt_ones(qwen_dir, tmp_path, capsys):
    from medqa.train import last_complete_checkpoint

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run")
    train(cfg, model, tok, load_demo()[:8], progress=False)
    cks = tmp_path / "run" / "checkpoints"
    assert last_complete_checkpoint(cks) == cks / "checkpoint-4"
    damage = {
        "adapter truncated": lambda d: (d / "adapter_model.safetensors").write_bytes(
            (d / "adapter_model.safetensors").read_bytes()[:-100]),
        "optimizer garbled": lambda d: (d / "optimizer.pt").write_bytes(b"\x00garbage" * 50),
        "state missing": lambda d: (d / "trainer_state.json").unlink(),
        "state not json": lambda d: (d / "trainer_state.json").write_text("{not json"),
    }
    import shutil

    pristine = tmp_path / "pristine"
    shutil.copytree(cks / "checkpoint-4", pristine)
    for name, hurt in damage.items():
        shutil.rmtree(cks / "checkpoint-4")
        shutil.copytree(pristine, cks / "checkpoint-4")
        hurt(cks / "checkpoint-4")
        assert last_complete_checkpoint(cks) == cks / "checkpoint-2", name
        assert "skipping incomplete or corrupt checkpoint" in capsys.readouterr().out, name
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_resume_falls_back_past_a_corrupt_checkpoint(qwen_dir, tmp_path):
    from safetensors.torch import load_file

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "ref")
    train(cfg, model, tok, load_demo()[:8], progress=False)
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run", **{"train.max_steps": 4})
    train(cfg, model, tok, load_demo()[:8], progress=False)
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"torn")
    import shutil

    shutil.rmtree(run / "adapter")
    cfg, model, tok = _tiny_run(qwen_dir, run, **{"train.resume": True})
    summary = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert summary["steps"] == 4
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_padding_free_and_target_only_losses_equal_the_plain_loss(qwen_dir, qwen_tokenizer):
    from medqa.train import FlatCollator, target_only_loss

    cfg, model, tok = _tiny_run(qwen_dir, "unused", **{"model.attn_implementation": "sdpa", "lora.dropout": 0.0})
    model.train()
    feats, _ = build_features(PromptFormat(tok), load_demo()[:4], 512)
    padded, flat = PadCollator(tok.pad_token_id)(feats), FlatCollator()(feats)
    assert flat["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))
    with torch.no_grad():
        ref = float(model(**padded, use_cache=False).loss)
        singles = [float(model(**PadCollator(tok.pad_token_id)([f]), use_cache=False).loss) for f in feats]
        n = [sum(1 for x in f["labels"][1:] if x != -100) for f in feats]
        assert ref == pytest.approx(sum(s * k for s, k in zip(singles, n)) / sum(n), abs=1e-5)
        # examples in one padding-free row do not see each other (the default use_cache=True would let them)
        assert float(model(**flat).loss) == pytest.approx(ref, abs=1e-5)
        assert float(target_only_loss(model, padded)) == pytest.approx(ref, abs=1e-5)
        assert float(target_only_loss(model, flat)) == pytest.approx(ref, abs=1e-5)
        # the shared system-prompt prefix run once for the batch, the rows continuing from its cache
        assert float(target_only_loss(model, padded, share_prefix=True)) == pytest.approx(ref, abs=1e-5)
    # and the gradients agree
    def grads(fn):
        model.zero_grad()
        fn().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    g_ref = grads(lambda: model(**padded, use_cache=False).loss)
    for new in (lambda: target_only_loss(model, flat), lambda: target_only_loss(model, padded, share_prefix=True)):
        g_new = grads(new)
        assert all(torch.allclose(g_ref[k], g_new[k], atol=1e-6, rtol=1e-4) for k in g_ref)


def test_shared_prefix_length():
    from medqa.train import shared_prefix_length

    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 9, 0], [1, 2, 3, 4, 0]])
    assert shared_prefix_length(ids, first_kept=10) == 3
    assert shared_prefix_length(ids, first_kept=2) == 2  # never past the first position whose logits count
    assert shared_prefix_length(ids[:1], first_kept=10) == 0
    same = torch.tensor([[1, 2, 3], [1, 2, 3]])
    assert shared_prefix_length(same, first_kept=10) == 2  # each row keeps a token of its own


def test_common_prefix_stops_before_targets_and_needs_sixteen_tokens():
    from medqa.train import common_prefix

    def f(ids, first_target):
        return {"input_ids": ids, "labels": [-100] * first_target + ids[first_target:]}

    base = list(range(40))
    # token 40 is the first target: its logits come from position 39, which the prefix must not include
    assert common_prefix([f(base + [1, 2], 41), f(base + [3], 40)]) == base[:39]
    assert common_prefix([f(base + [1, 2], 41), f(base + [3], 20)]) == base[:19]  # before a target is predicted
    assert common_prefix([f(base[:20] + [7] + base[21:], 41), f(base, 39)]) == base[:20]
    assert common_prefix([f(base[:10] + [7] + base[11:], 41), f(base, 39)]) == []  # too short to pay
    assert common_prefix([f(base, 39)]) == []
    assert common_prefix([f(base, 40), f(base, 40)]) == base[:39]  # each example keeps a token of its own


def test_step_prefix_gives_the_gradients_of_running_it_in_every_micro_batch(qwen_dir):
    """The system prompt run once per optimizer step: the accumulated gradients equal the plain path's."""
    from medqa.train import StepPrefix, common_prefix, target_only_loss

    cfg = build_config(None, {"model.name": str(qwen_dir), "lora.dropout": 0.0})
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    model.train()
    feats, _ = build_features(PromptFormat(tok), load_demo()[:7], 512)
    prefix = common_prefix(feats)
    assert len(prefix) >= 16
    collate = PadCollator(tok.pad_token_id)
    micro = [collate(feats[:3]), collate(feats[3:4]), collate(feats[4:])]  # 1-row micro-batches use it too
    n = sum(int((b["labels"] != -100).sum()) for b in micro)

    def step(**kw):
        model.zero_grad(set_to_none=True)
        work, total = {}, 0.0
        for i, b in enumerate(micro):
            extra = {"last_in_step": i == len(micro) - 1, "step": 0} if "step_prefix" in kw else {}
            loss = target_only_loss(model, b, n, work=work, **kw, **extra)
            loss.backward()
            total += float(loss.detach())
        return total, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}, work

    plain, g0, w0 = step()
    sp = StepPrefix(prefix)
    once, g1, w1 = step(step_prefix=sp)
    assert once == pytest.approx(plain, rel=1e-5)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7), k
    assert w1["positions"] == w0["positions"] - (7 - 1) * len(prefix)  # the prefix ran once for 7 rows
    assert sp.kv is None and sp.leaves is None  # nothing outlives the step


def test_balanced_batching_keeps_examples_per_step_and_lowers_the_largest_micro_batch(qwen_dir, tmp_path,
                                                                                     monkeypatch):
    import medqa.train as mt

    shapes: list[tuple[int, int]] = []
    call = mt.PadCollator.__call__
    monkeypatch.setattr(mt.PadCollator, "__call__", lambda self, b: _record(shapes, call(self, b)))
    runs = {}
    for batching in ("balanced", "length_grouped"):
        shapes.clear()
        cfg, model, tok = _tiny_run(qwen_dir, tmp_path / batching, **{
            "train.batching": batching, "train.max_steps": -1, "train.epochs": 1, "train.batch_size": 2,
            "train.grad_accum": 4, "model.attn_implementation": "sdpa", "train.calibration_size": 0})
        records = [r.model_copy(update={"question": " ".join([r.question] * (1 + 3 * (i % 4 == 0)))})
                   for i, r in enumerate(load_demo()[:32])]  # a quarter of the questions 4 times as long
        summary = train(cfg, model, tok, records, progress=False)
        assert summary["batching"] == batching and summary["steps"] == 4
        runs[batching] = list(shapes)
    balanced = runs["balanced"]
    assert len(balanced) == 16
    assert [sum(r for r, _ in balanced[i:i + 4]) for i in range(0, 16, 4)] == [8, 8, 8, 8]
    assert len({r for r, _ in balanced}) > 1  # rows vary with length
    assert max(r * w for r, w in balanced) <= max(r * w for r, w in runs["length_grouped"])


def _record(shapes, batch):
    shapes.append(tuple(batch["input_ids"].shape))
    return batch


_SHARES: dict[str, float] = {}  # non-padding share per batching mode, compared across the parametrised runs


@pytest.mark.parametrize("batching", ["padded", "length_grouped", "padding_free"])
def test_batching_modes_train_and_report_their_padding(qwen_dir, tmp_path, batching):
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / batching, **{
        "train.batching": batching, "train.max_steps": -1, "train.epochs": 1, "train.batch_size": 4,
        "model.attn_implementation": "sdpa"})
    records = load_demo()[:48]
    summary = train(cfg, model, tok, records, progress=False)
    assert summary["batching"] == batching
    assert summary["steps"] == 12 and summary["examples_per_second"] > 0
    share = summary["non_padding_share"]
    logs = [json.loads(x) for x in (tmp_path / batching / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < e["non_padding_share"] <= 1 for e in logs if "loss" in e)
    assert any("tokens_per_second" in e for e in logs)
    if batching == "padding_free":
        assert share == 1.0
    else:
        _SHARES[batching] = share
        assert 0.5 < share < 1.0
    if batching == "length_grouped" and "padded" in _SHARES:
        assert share > _SHARES["padded"]  # grouping by length wastes fewer slots than random order


def test_gradient_checkpointing_trains_with_the_default_options(qwen_dir, tmp_path):
    from medqa.train import target_only_loss

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "gc", **{"train.gradient_checkpointing": True,
                                                               "lora.dropout": 0.0})
    summary = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert summary["steps"] == 4 and summary["gradient_checkpointing"] and not summary["shared_prefix"]
    # asked to share a prefix while checkpointing (no cache in training), the loss falls back to the plain path
    model.train()
    batch = PadCollator(tok.pad_token_id)(build_features(PromptFormat(tok), load_demo()[:2], 512)[0])
    plain = target_only_loss(model, batch)
    assert float(target_only_loss(model, batch, share_prefix=True)) == pytest.approx(float(plain), abs=1e-5)


def test_batching_auto_picks_padding_free_only_for_flash_attention():
    from types import SimpleNamespace

    from medqa.train import resolve_batching

    def m(impl):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl))

    assert resolve_batching("auto", m("flash_attention_2")) == "padding_free"
    assert resolve_batching("auto", m("sdpa")) == "balanced"
    assert resolve_batching("auto", m("eager")) == "balanced"
    assert resolve_batching("padded", m("flash_attention_2")) == "padded"


def test_eval_during_training_keeps_the_best_adapter_and_stops_early(qwen_dir, tmp_path):
    from safetensors.torch import load_file

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run", **{
        "train.max_steps": 30, "train.eval_steps": 1, "train.early_stopping_patience": 2, "train.lr": 5e-2,
        "lora.alpha": 256, "train.report_to": ["tensorboard"]})
    demo = load_demo()
    summary = train(cfg, model, tok, demo[:16], progress=False, eval_records=demo[100:112])
    run = tmp_path / "run"
    best = summary["best"]
    hist = best["history"]
    accs = [h["eval_accuracy"] for h in hist]
    assert best["accuracy"] == max(accs) and best["kept"]
    assert best["step"] == next(h["step"] for h in hist if h["eval_accuracy"] == max(accs))
    # stopped after two evaluations without improvement, before max_steps
    assert summary["steps"] < 30 and len(hist) == summary["steps"]
    assert all(a <= best["accuracy"] for a in accs[-2:]) and hist[-1]["step"] - best["step"] == 2
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    kept = load_file(run / "best" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], kept[k]) for k in saved)  # the saved adapter is the best one
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs if "eval_accuracy" in e] == [h["step"] for h in hist]
    assert (run / "train_curves.png").stat().st_size > 5000
    assert "best held-out accuracy" in (run / "train_report.md").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_memory_check_fails_early_with_advice(qwen_dir, tmp_path, monkeypatch):
    from medqa import train as train_mod
    from medqa.errors import ModelError

    monkeypatch.setattr(train_mod, "available_memory", lambda hw: 2**20)
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "run")
    with pytest.raises(ModelError, match="gradient_checkpointing true.*load_in_4bit"):
        train(cfg, model, tok, load_demo()[:8], progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training started


def test_memory_estimate_grows_with_what_costs_memory(qwen_dir):
    from medqa.train import estimate_memory

    _, model, _ = _tiny_run(qwen_dir, "unused")
    base = estimate_memory(model, 4, 256, 256, False, 4)
    assert estimate_memory(model, 8, 256, 256, False, 4)["activations"] == 2 * base["activations"]
    assert estimate_memory(model, 4, 256, 256, True, 4)["activations"] < base["activations"]
    assert estimate_memory(model, 4, 256, 256, False, 4, lean=True)["activations"] < 0.7 * base["activations"]
    assert estimate_memory(model, 4, 256, 32, False, 4)["logits"] == base["logits"] // 8
    assert base["weights"] == sum(p.numel() * 4 for p in model.parameters())


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


def test_qlora_on_cpu_is_a_clear_error(qwen_dir):
    from medqa.errors import ModelError

    cfg = build_config(None, {"model.name": str(qwen_dir), "model.load_in_4bit": True})
    with pytest.raises(ModelError, match="load_in_4bit needs a CUDA, ROCm or XPU GPU"):
        load_model(cfg.model)


def test_training_arguments_follow_the_config(tmp_path):
    from medqa.hardware import detect
    from medqa.train import _training_kwargs

    cfg = build_config(None, {"train.torch_compile": True, "train.gradient_checkpointing": True,
                              "train.neftune_alpha": 5})
    kw = _training_kwargs(cfg.train, tmp_path, "float32", detect("cpu"), "length_grouped", ["tensorboard"], False)
    assert kw["torch_compile"] and kw["activation_checkpointing"] and kw["neftune_noise_alpha"] == 5
    assert kw["train_sampling_strategy"] == "group_by_length" and kw["report_to"] == ["tensorboard"]


def _train_cmd(qwen_dir, out, steps=24):
    import sys

    return [sys.executable, "-m", "medqa.cli", "train", "--model", str(qwen_dir), "--dataset", "demo",
            "--data.train_size", "48", "--out", str(out), "--train.max_steps", str(steps), "--train.save_steps", "4",
            "--train.batch_size", "4", "--train.grad_accum", "1", "--train.calibration_size", "0",
            "--train.save_total_limit", "50", "--train.logging_steps", "1", "--train.report_to", "[]"]


@pytest.mark.slow
def test_kill_9_at_three_random_points_then_resume_reaches_the_same_adapter(qwen_dir, tmp_path):
    """A real training process is killed (SIGKILL) three times at random points of its run (during steps
    or while a checkpoint is written); each kill loses no completed checkpoint, and `--resume` after the
    last one finishes with an adapter bitwise equal to an uninterrupted run's."""
    import os
    import random
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    from medqa.train import _checkpoint_problem

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_train_cmd(qwen_dir, tmp_path / "ref"), capture_output=True, text=True, timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"

    def step_now() -> int:
        if not metrics.is_file():
            return 0
        lines = [x for x in metrics.read_text().splitlines() if '"loss"' in x]
        return json.loads(lines[-1])["step"] if lines else 0

    def complete() -> set:
        cks = run / "checkpoints"
        return {p.name for p in cks.glob("checkpoint-*") if _checkpoint_problem(p) is None} if cks.is_dir() else set()

    # three random steps of the 24, far enough apart (>= 5) that a resumed run, which first repeats the
    # steps after its checkpoint, is never killed on the strength of the previous run's log lines
    t1 = rng.randint(2, 6)
    t2 = rng.randint(t1 + 5, 14)
    targets = [t1, t2, rng.randint(t2 + 5, 21)]
    kills = []
    for k, target in enumerate(targets):
        cmd = _train_cmd(qwen_dir, run) + (["--resume"] if k else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and step_now() < target and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # and a random moment inside the step (or its checkpoint)
        before = complete()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(step_now())
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the run ended before kill {k + 1}"
        assert before <= complete(), f"seed {seed}: a completed checkpoint was lost"
        every = {p.name for p in (run / "checkpoints").glob("checkpoint-*")} if (run / "checkpoints").is_dir() else set()
        assert every == complete(), f"seed {seed}: a checkpoint folder is incomplete (saving is not atomic)"
    assert not (run / "adapter").exists()
    resumed = subprocess.run(_train_cmd(qwen_dir, run) + ["--resume"], capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"seed {seed}, kills at steps {kills}: {key} differs"
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 25)), f"seed {seed}"  # every step logged once, none lost, none twice


@pytest.mark.slow
def test_full_disk_is_a_clear_error_and_keeps_earlier_outputs(qwen_dir, tmp_path):
    """The output directory is a small tmpfs (or, where mounting is not allowed, a file-size limit):
    a run that runs out of space stops with one clear line; a finished run beside it is untouched, no
    half-written file stands where a complete one is expected, and `--resume` finishes once there is room."""
    import hashlib
    import os
    import resource
    import signal
    import subprocess

    from medqa.train import last_complete_checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        first = subprocess.run(_train_cmd(qwen_dir, disk / "first", steps=4), capture_output=True, text=True,
                               timeout=600, env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (disk / "first").rglob("*") if p.is_file()}
        limit = None
        if mounted:  # leave about 300 kB: enough to start, not enough for the checkpoints
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            (disk / "filler").write_bytes(b"\0" * max(0, free - 300_000))
        else:
            limit = 40_000  # bytes per file: the optimizer state of a checkpoint does not fit

        def preexec():
            if limit:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        full = subprocess.run(_train_cmd(qwen_dir, disk / "second"), capture_output=True, text=True, timeout=600,
                              env=env, preexec_fn=preexec)
        assert full.returncode != 0
        errors = [x for x in full.stderr.splitlines() if x.startswith("medqa: error")]  # a line of its own
        assert len(errors) == 1 and errors[0].startswith("medqa: error: writing failed, the disk is full"), \
            full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        assert {p: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (disk / "first").rglob("*") if p.is_file()} == digest  # the finished run is intact
        second = disk / "second"
        for f in second.rglob("*.json"):  # written atomically: complete or absent
            json.loads(f.read_text())
        assert not list(second.rglob("*.tmp*"))
        ck = last_complete_checkpoint(second / "checkpoints")
        if mounted:
            (disk / "filler").unlink()
        resumed = subprocess.run(_train_cmd(qwen_dir, second) + ["--resume"], capture_output=True, text=True,
                                 timeout=600, env=env)
        usage = subprocess.run(["du", "-a", str(disk)], capture_output=True, text=True).stdout
        assert resumed.returncode == 0, resumed.stderr[-600:] + usage
        assert (ck is None) or f"resuming from {ck}" in resumed.stdout
        assert (second / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


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


def test_hardware_env_is_set_before_torch_starts(tmp_path):
    """`hardware.env` reaches torch: the thread count and a ROCm variable, seen by `medqa doctor`."""
    import subprocess
    import sys

    cfg = tmp_path / "hw.yaml"
    cfg.write_text("hardware:\n  env: {OMP_NUM_THREADS: 1, HIP_VISIBLE_DEVICES: '0'}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "HIP_VISIBLE_DEVICES")}
    p = subprocess.run([sys.executable, "-m", "medqa.cli", "doctor", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["env"]["HIP_VISIBLE_DEVICES"] == "0"
    assert report["devices"][0]["threads"] == 1  # OMP_NUM_THREADS was in place when torch started
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware:\n  envs: {}\n")
    p = subprocess.run([sys.executable, "-m", "medqa.cli", "doctor", "--config", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "unknown key 'hardware.envs'" in p.stderr


def test_length_grouped_order_is_seeded_per_epoch_not_global():
    from medqa.train import _seeded_length_sampler

    lengths = [(i * 37) % 101 + 10 for i in range(1024)]
    a, b = _seeded_length_sampler(8, lengths, seed=3), _seeded_length_sampler(8, lengths, seed=3)
    first = list(a)
    torch.manual_seed(999)  # the global RNG does not matter
    assert list(b) == first and sorted(first) == list(range(1024))
    a.set_epoch(1)
    assert list(a) != first
    batches = [first[i:i + 8] for i in range(0, 1024, 8)]
    spread = [max(lengths[j] for j in bt) - min(lengths[j] for j in bt) for bt in batches]
    assert sum(spread) / len(spread) < 10  # similar lengths batched together (random order: ~75)


# ----------------------------------------------------------------------------- reusing a run folder (issue 14.5)

def _cli_train(qwen_dir, data, run, *extra):
    from medqa.cli import main

    return main(["train", "--model", str(qwen_dir), "--data", str(data), "--out", str(run),
                 "--train.max_steps", "2", "--train.batch_size", "2", "--train.grad_accum", "1",
                 "--train.save_steps", "1", "--train.report_to", "[]", "--train.calibration_size", "0", *extra])


def test_a_fresh_run_into_a_used_folder_is_refused_and_deletes_nothing(qwen_dir, small_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.eval_size", "2", "--train.eval_steps", "1") == 0
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert (run / "metrics.jsonl").is_file() and (run / "best" / "best.json").is_file()
    capsys.readouterr()
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    after = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing deleted, nothing rewritten


def test_overwrite_replaces_the_earlier_run_and_leaves_other_files(qwen_dir, small_jsonl, tmp_path):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run, "--train.max_steps", "3") == 0
    assert (run / "checkpoints" / "checkpoint-3").is_dir()
    (run / "my_notes.txt").write_text("mine")
    assert _cli_train(qwen_dir, small_jsonl, run, "--overwrite") == 0
    # the earlier run's checkpoint-3 is gone, so a later --resume cannot pick it up
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (run / "my_notes.txt").read_text() == "mine"
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2


def test_resume_refuses_another_runs_checkpoint(qwen_dir, small_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli_train(qwen_dir, small_jsonl, run) == 0
    ck = run / "checkpoints" / "checkpoint-2"
    assert json.loads((ck / "medqa_run.json").read_text())["config_sha256"]
    capsys.readouterr()
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume", "--train.lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "train.lr: 0.0002 -> 0.001" in err
    (ck / "medqa_run.json").unlink()  # e.g. written by an older MedQA or copied from elsewhere
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume") == 2
    assert "was not written by this run" in capsys.readouterr().err
    # the same config resumes (training longer is allowed)
    (run / "checkpoints" / "checkpoint-2" / "medqa_run.json").write_text(
        json.dumps(__import__("medqa.train", fromlist=["run_identity"]).run_identity(
            build_config(None, {"model.name": str(qwen_dir), "data.path": str(small_jsonl), "out": str(run),
                                "train.max_steps": 2, "train.batch_size": 2, "train.grad_accum": 1,
                                "train.save_steps": 1, "train.report_to": [], "train.calibration_size": 0}))))
    assert _cli_train(qwen_dir, small_jsonl, run, "--resume", "--train.max_steps", "3") == 0
    assert json.loads((run / "train_summary.json").read_text())["resumed_from_step"] == 2


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    from medqa.errors import ConfigError
    from medqa.train import prepare_run_dir

    with pytest.raises(ConfigError, match="exclude each other"):
        prepare_run_dir(tmp_path, resume=True, overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_dir(tmp_path / "f", resume=False, overwrite=False)
    assert prepare_run_dir(tmp_path / "new", resume=False, overwrite=False) == []


def test_early_stopping_state_is_trimmed_to_the_resume_step(tmp_path, capsys):
    from medqa.train import HeldOutEval

    hist = [{"step": 5, "eval_accuracy": 0.4}, {"step": 10, "eval_accuracy": 0.5}, {"step": 15, "eval_accuracy": 0.45},
            {"step": 20, "eval_accuracy": 0.6}, {"step": 25, "eval_accuracy": 0.55}, {"step": 30, "eval_accuracy": 0.5}]
    best = tmp_path / "best"
    (best / "adapter").mkdir(parents=True)
    (best / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    saved = {"step": 20, "accuracy": 0.6, "evals_since_best": 2, "history": hist}
    (best / "best.json").write_text(json.dumps(saved))
    # resumed at step 25: best stays step 20, one evaluation since (not two), history cut after 25
    h = HeldOutEval(None, [], 1, 5, tmp_path, patience=2, resume_step=25)
    assert h.state == {"step": 20, "accuracy": 0.6, "evals_since_best": 1, "history": hist[:5]}
    assert (best / "adapter").is_dir()
    # resumed at step 15: the saved best (step 20) lies in the redone future: its state and adapter go
    h = HeldOutEval(None, [], 1, 5, tmp_path, patience=2, resume_step=15)
    assert h.state == {"step": 10, "accuracy": 0.5, "evals_since_best": 1, "history": hist[:3]}
    assert not (best / "adapter").exists() and "discarded" in capsys.readouterr().out
