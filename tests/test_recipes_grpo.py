"""medqa.recipes.grpo / medqa.training.grpo: GRPO through TRL's GRPOTrainer, end to end on tiny models.

The rewards test scripts the completions (TRL's generation step returns fixed texts; everything else - the
prompts' columns, the reward functions, advantages, loss, optimizer, logs - runs for real), so the logged
rewards can be checked against what the strict parser says about each completion and the question's gold
letter. The slow test runs real sampling in a `medqa train --method grpo` process, kills it after a
checkpoint, resumes it, and reloads the adapter it saves.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from medqa.config import ModelConfig, build_config
from medqa.errors import ConfigError
from medqa.reasoning import parse_final_answer

# The completions of one generation batch: two questions x four samples. The first question's four are well
# formed and name A, B, C, D (exactly one is right); the second's four are unparseable, one of them a reasoning
# block that was never closed (cut off) although its last line names a letter: wrong, whatever the gold letter.
SCRIPT = [
    "<think>\nThe deltoid is supplied by C5-C6.\n</think>\n\nAnswer: A",
    "Reasoning in plain text.\nAnswer: B",
    "<think>\nC fits.\n</think>\nFinal answer: (C)",
    "Short reasoning.\nThe answer is D.",
    "<think>\nreasoning that was cut off\nAnswer: A",
    "Answer: B\nbecause of the nerve roots",
    "A",
    "It is one of two.\nAnswer: C or D",
]


def _grpo_cfg(model_dir, out, **over):
    ov = {"model.name": str(model_dir), "out": str(out), "train.method": "grpo", "data.dataset": "demo",
          "data.limit": 24, "train.max_steps": 2, "train.batch_size": 8, "train.grad_accum": 1,
          "train.logging_steps": 1, "train.save_steps": 100, "train.report_to": [], "train.calibration_size": 4,
          "train.lr": 1e-2, "train.warmup_ratio": 0.0, "grpo.num_generations": 4, "grpo.max_completion_length": 24,
          "grpo.log_completions": 8}
    ov.update(over)
    return build_config(None, ov)


def _script_generation(monkeypatch):
    """TRL's generation step returns SCRIPT (tokenized, each ended by EOS) for every generation batch."""
    from trl import GRPOTrainer

    def scripted(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        assert len(prompt_ids) == len(SCRIPT)
        eos = self._tokenizer.eos_token_id
        return [self._tokenizer.encode(t, add_special_tokens=False) + [eos] for t in SCRIPT], None

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", scripted)


def test_rewards_are_computed_from_the_parsed_letters(llama_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from medqa.modeling import apply_lora, load_model
    from medqa.recipes.grpo import GRPORecipe
    from medqa.training import save_adapter

    # start from an existing adapter (as from an SFT run): it is continued, and recorded
    base, tok = load_model(ModelConfig(name=str(llama_dir)))
    init = save_adapter(apply_lora(base, build_config(None, {}).lora), tok, tmp_path / "sft" / "adapter",
                        meta={"base_model": str(llama_dir), "protocol": "chat"})

    _script_generation(monkeypatch)
    cfg = _grpo_cfg(llama_dir, tmp_path / "run", **{"model.name": None, "model.adapter": str(init),
                                                    "train.eval_size": 4, "train.eval_steps": 1})
    recipe = GRPORecipe(cfg, progress=False)
    result = recipe.run()
    out = tmp_path / "run"
    gold = {r.id: r.answer for r in recipe.records}  # the augmented questions the prompts were built from
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8
    for row in rows:
        assert row["completion"] in SCRIPT  # decoded with its reasoning tags
        parsed = parse_final_answer(row["completion"], 4)
        right = parsed.index is not None and parsed.index == gold[row["id"]]
        assert row["rewards"]["correct_reward"] == float(right), row
        assert row["rewards"]["format_reward"] == float(parsed.well_formed), row
        assert row["gold"] == "ABCD"[gold[row["id"]]]
    for step in (1, 2):
        mine = [r for r in rows if r["step"] == step]
        assert sum(r["rewards"]["correct_reward"] for r in mine) == 1.0  # one right letter of A-D, none by default
        assert sorted(r["completion"] for r in mine) == sorted(SCRIPT)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:  # TRL's logged means: each reward function on its own, and the weighted total
        assert m["rewards/correct_reward/mean"] == pytest.approx(1 / 8)
        assert m["rewards/format_reward/mean"] == pytest.approx(4 / 8)
        assert m["reward"] == pytest.approx(1 / 8 + 0.2 * 4 / 8)
        assert m["seconds_per_step"] > 0
    held = [m for m in metrics if "eval_accuracy" in m]  # letter scoring of held-out questions, on its own lines
    assert [m["step"] for m in held] == [1, 2] and not any("reward" in m for m in held)
    summary = result["train"]
    assert [h["step"] for h in summary["best"]["history"]] == [1, 2] and (out / "best" / "best.json").is_file()
    assert summary["steps"] == 2 and summary["method"] == "grpo" and summary["init_adapter"] == str(init)
    assert [c["correct"] for c in summary["reward_curve"]] == pytest.approx([0.125, 0.125])
    assert summary["generation"]["backend"] == "transformers"
    balance = result["letter_balance"]["after augmentation"]
    assert max(balance.values()) - min(balance.values()) <= 1  # option-order augmentation spreads the gold letters
    assert "correct_reward" in (out / "train_report.md").read_text() and (out / "train_curves.png").is_file()
    # the adapter it started from was trained (rewards differed within the group, so the gradient is not zero)
    before = load_file(init / "adapter_model.safetensors")
    after = load_file(out / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((out / "adapter" / "medqa_adapter.json").read_text())
    assert meta["method"] == "grpo" and meta["base_model"] == str(llama_dir)
    assert (out / "adapter" / "calibration.json").is_file() and "calibration" in result


def test_rewards_are_logged_every_few_steps_and_at_the_end(llama_dir, tmp_path, monkeypatch):
    """logging_steps 2 over 3 steps: a line at step 2 (steps 1-2) and the end-of-training line (step 3) both carry
    the rewards and seconds per step; completions are written once per logged step. With a KL penalty (beta > 0)
    the KL to the starting adapter is logged, and TRL's frozen reference copy is not saved with the adapter."""
    from medqa.recipes import run_grpo

    _script_generation(monkeypatch)
    cfg = _grpo_cfg(llama_dir, tmp_path / "run", **{"train.max_steps": 3, "train.logging_steps": 2,
                                                    "train.calibration_size": 0, "grpo.beta": 0.04})
    summary = run_grpo(cfg, progress=False)["train"]
    assert [c["step"] for c in summary["reward_curve"]] == [2, 3]
    assert all(c["correct"] == pytest.approx(1 / 8) and c["seconds"] > 0 and "kl" in c for c in summary["reward_curve"])
    adapter = tmp_path / "run" / "adapter"
    assert not (adapter / "ref").exists() and json.loads((adapter / "adapter_config.json").read_text())
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert steps == [2] * 8 + [3] * 8


def test_completions_keep_their_reasoning_tags_when_the_tokenizer_calls_them_special(qwen_tokenizer):
    """TRL decodes completions without special tokens; where <think> is one (as in this tokenizer), an unclosed
    block would lose its tag and its last line would read as an answer. MedQA decodes keeping the tags."""
    from medqa.training.grpo import decode_completion as completion_text

    tok = qwen_tokenizer
    assert tok.added_tokens_decoder[tok.convert_tokens_to_ids("<think>")].special
    for text in SCRIPT:
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        assert completion_text(tok, ids) == text
        assert parse_final_answer(tok.decode(ids, skip_special_tokens=True), 4).cut_off is False  # TRL's decode
    assert parse_final_answer(completion_text(tok, tok.encode(SCRIPT[4])), 4).cut_off


def test_the_trainer_hands_the_rewards_completions_with_their_tags(qwen_tokenizer, monkeypatch):
    """MedQAGRPOTrainer replaces TRL's decoded completions (tags stripped) by `decode_completion`'s."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    from medqa.training.grpo import MedQAGRPOTrainer

    tok = qwen_tokenizer
    ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in SCRIPT]
    trl_text = [tok.decode(i, skip_special_tokens=True) for i in ids]
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: ([[1]] * 8, ids, None, trl_text, None, {},
                                                                         None, []))
    trainer = MedQAGRPOTrainer.__new__(MedQAGRPOTrainer)  # only what _generate reads
    trainer._tokenizer, trainer._metrics = tok, {"train": defaultdict(list)}
    trainer.model = SimpleNamespace(training=True)
    out = trainer._generate(["p"] * 8)
    assert out[3] == SCRIPT and trl_text != SCRIPT
    assert len(trainer._metrics["train"]["generate_seconds"]) == 1


def test_thinking_prompts_for_qwen3_and_plain_ones_otherwise(qwen_tokenizer):
    from medqa.datasets import load_demo
    from medqa.training.grpo import prompt_rows

    records = load_demo()[:12]
    rows, stats = prompt_rows(qwen_tokenizer, records, thinking=True, max_length=512)
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")  # the model opens its <think> block itself
    assert [(r["answer_index"], r["n_options"], r["id"]) for r in rows] == [(r.answer, 4, r.id) for r in records]
    off, _ = prompt_rows(qwen_tokenizer, records, thinking=False, max_length=512)
    assert off[0]["prompt"].endswith("<think>\n\n</think>\n\n")  # Qwen3's switch: an empty block, then the answer
    longest = stats["prompt_tokens_p50_max"][1]
    short, stats = prompt_rows(qwen_tokenizer, records, thinking=True, max_length=longest - 1)
    assert stats["dropped_too_long"] >= 1 and len(short) == 12 - stats["dropped_too_long"]
    assert all(len(qwen_tokenizer(r["prompt"])["input_ids"]) < longest for r in short)


def test_run_identity_of_grpo_and_of_sft_runs():
    """GRPO settings that change training are part of the run identity (a resume refuses another run's
    checkpoint); how completions are generated and logged are not; an SFT run's identity has no GRPO part."""
    from medqa.training import run_identity

    grpo = run_identity(build_config(None, {"train.method": "grpo"}))
    assert grpo["config"]["train"]["method"] == "grpo" and "num_generations" in grpo["config"]["grpo"]
    same = run_identity(build_config(None, {"train.method": "grpo", "grpo.use_vllm": True, "grpo.log_completions": 0}))
    other = run_identity(build_config(None, {"train.method": "grpo", "grpo.num_generations": 8}))
    assert same["config_sha256"] == grpo["config_sha256"] != other["config_sha256"]
    sft = run_identity(build_config(None, {"grpo.num_generations": 8}))
    assert "grpo" not in sft["config"] and "method" not in sft["config"]["train"]
    assert sft["config_sha256"] == run_identity(build_config(None, {}))["config_sha256"]


def test_grpo_flags_and_aliases(tmp_path, capsys):
    from medqa.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--method", "grpo", "--init-adapter", "runs/sft/adapter", "--num_generations", "8",
              "--beta", "0.04", "--grpo.use_vllm", "false", "--print-config"])
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["method"] == "grpo" and cfg["model"]["adapter"] == "runs/sft/adapter"
    assert cfg["grpo"]["num_generations"] == 8 and cfg["grpo"]["beta"] == 0.04 and cfg["grpo"]["use_vllm"] is False


def test_a_batch_that_cannot_hold_whole_groups_fails_before_the_model_loads(tmp_path, monkeypatch):
    import medqa.recipes.lora_sft
    from medqa.recipes import run_train

    monkeypatch.setattr(medqa.recipes.lora_sft, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg = _grpo_cfg("unused", tmp_path / "run", **{"train.batch_size": 6, "grpo.num_generations": 4})
    with pytest.raises(ConfigError, match="multiple of grpo.num_generations"):
        run_train(cfg)  # train.method grpo: run_train runs the GRPO recipe


def test_use_vllm_auto_needs_vllm_and_a_gpu(monkeypatch):
    import importlib.util

    from medqa.hardware import Hardware
    from medqa.training.grpo import use_vllm

    cpu = Hardware(backend="cpu", device="cpu", name="CPU", dtype="float32", bf16=False, fp16=False)
    gpu = Hardware(backend="cuda", device="cuda:0", name="H100", dtype="bfloat16", bf16=True, fp16=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    assert use_vllm("auto", gpu) and not use_vllm("auto", cpu) and not use_vllm(False, gpu) and use_vllm(True, cpu)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    assert not use_vllm("auto", gpu)


def _grpo_cmd(model_dir, out, steps):
    return [sys.executable, "-m", "medqa.cli", "train", "--method", "grpo", "--model", str(model_dir),
            "--dataset", "demo", "--limit", "24", "--out", str(out), "--train.max_steps", str(steps),
            "--train.save_steps", "2", "--train.batch_size", "4", "--train.grad_accum", "1",
            "--train.logging_steps", "1", "--train.save_total_limit", "10", "--train.calibration_size", "0",
            "--train.report_to", "[]", "--grpo.num_generations", "2", "--grpo.max_completion_length", "12"]


@pytest.mark.slow
def test_grpo_resumes_after_a_kill_and_its_adapter_reloads(llama_dir, tmp_path):
    """A real GRPO process (sampling with the tiny model) is killed (SIGKILL) after its second checkpoint;
    `--resume` continues from that checkpoint, logs every step once, and the saved adapter reloads."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from medqa.modeling import load_model

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen(_grpo_cmd(llama_dir, run, 8), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (run / "checkpoints" / "checkpoint-4").is_dir():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err[-2000:]}"
    assert not (run / "adapter").exists()
    resumed = subprocess.run(_grpo_cmd(llama_dir, run, 8) + ["--resume"], capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "GRPO step 8" in resumed.stdout
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 8 and summary["resumed_from_step"] >= 4
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if "reward" in json.loads(x)]
    assert steps == list(range(1, 9))  # every step logged once: the killed run's later lines were dropped
    assert {json.loads(x)["step"] for x in (run / "completions.jsonl").read_text().splitlines()} == set(range(1, 9))
    model, _ = load_model(ModelConfig(adapter=str(run / "adapter")))  # its base from medqa_adapter.json
    assert isinstance(model, PeftModel)
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) > 0
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "").endswith(key.split("base_model.model.")[-1])]
        assert len(match) == 1 and torch.equal(match[0], value), key
