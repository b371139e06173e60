"""Checkpoints and the run folder: which checkpoint a resume continues (complete, readable, written by
the same run), the one-run-per-folder rule, and the atomic adapter save."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from medqa.config import RunConfig
from medqa.errors import ConfigError
from medqa.io import atomic_write_text
from medqa.modeling import resolve_protocol


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` whose files are all there and readable; an incomplete or corrupt
    newer one (a kill during saving, a torn file) is reported and skipped."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ck in found:
        problem = _checkpoint_problem(ck)
        if problem is None:
            return ck
        print(f"medqa: skipping incomplete or corrupt checkpoint {ck} ({problem})", flush=True)
    return None


def _checkpoint_problem(ck: Path) -> str | None:
    missing = [f for f in CHECKPOINT_FILES if not (ck / f).is_file() or (ck / f).stat().st_size == 0]
    if missing:
        return "missing: " + ", ".join(missing)
    try:
        json.loads((ck / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json unreadable"
    try:  # the header and every tensor's byte range must be intact
        from safetensors import safe_open

        with safe_open(str(ck / "adapter_model.safetensors"), framework="pt") as f:
            for k in f.keys():
                f.get_slice(k)
    except Exception as e:  # noqa: BLE001 - any failure to open means a damaged file
        return f"adapter_model.safetensors unreadable: {type(e).__name__}"
    for name in ("optimizer.pt", "scheduler.pt"):
        try:
            torch.load(ck / name, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            return f"{name} unreadable: {type(e).__name__}"
    return None


RUN_FILE = "medqa_run.json"  # in every checkpoint: the identity of the run that wrote it
# what a run writes into OUT; --overwrite removes exactly these (anything else in OUT is left alone)
RUN_OUTPUTS = ("checkpoints", "best", "adapter", "eval_before", "eval_after", "tensorboard", "metrics.jsonl",
               "config.yaml", "train_summary.json", "run_summary.json", "train_report.md", "train_curves.png",
               "quickstart.md", "completions.jsonl")
# settings a resumed run may change: how long it runs (train longer), how it reports, and how it computes
# the same gradients (e.g. gradient checkpointing after running out of memory)
_NOT_IDENTITY = {"train": {"resume", "overwrite", "report_to", "memory_check", "logging_steps", "save_steps",
                           "save_total_limit", "max_steps", "epochs", "eval_steps", "keep_best",
                           "early_stopping_patience", "gradient_checkpointing", "torch_compile", "lean_activations",
                           "shared_prefix", "target_only_logits", "kernels"},
                 # GRPO: how completions are generated (vLLM or not) and how many are logged
                 "grpo": {"use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "log_completions"}}


def run_identity(cfg: RunConfig) -> dict[str, Any]:
    """What makes two runs the same training run: the model, adapter settings, data (evaluation sets too:
    they decide which questions are removed from training), training settings and prompt protocol; with
    the sha256 of that. Output folder, logging and tracking settings are not part of it."""
    import hashlib

    tree = cfg.model_dump(mode="json", exclude={"out", "hardware", "eval"})
    for section, keys in _NOT_IDENTITY.items():
        for k in keys:
            tree[section].pop(k, None)
    if tree["train"].get("method") == "sft":  # an SFT run is identified as before GRPO existed (resumable)
        tree["train"].pop("method")
        tree.pop("grpo", None)
    tree["eval"] = {"protocol": resolve_protocol(cfg)}
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()
    return {"config_sha256": digest, "config": tree}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def check_checkpoint_belongs(ck: Path, identity: dict[str, Any]) -> None:
    """A resume continues only a checkpoint written by the same run (same config_sha256)."""
    f = ck / RUN_FILE
    if not f.is_file():
        raise ConfigError(f"{ck} was not written by this run (it has no {RUN_FILE}: an older MedQA or another tool); "
                          "refusing to resume from it. Train into a new --out, or pass --overwrite to start over")
    theirs = json.loads(f.read_text(encoding="utf-8"))
    if theirs.get("config_sha256") != identity["config_sha256"]:
        diff = _differences(theirs.get("config", {}), identity["config"])
        raise ConfigError(f"{ck} belongs to another run (config differs: {'; '.join(diff[:6]) or 'unknown'}); "
                          "refusing to resume it with this config. Resume with the run's own config "
                          f"({ck.parent.parent / 'config.yaml'}), train into a new --out, or pass --overwrite")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """A run never mixes with an earlier one: a non-empty OUT is refused unless `resume` (continue it) or
    `overwrite` (its MedQA outputs are removed first; other files are left alone). Returns what was removed."""
    if resume and overwrite:
        raise ConfigError("train.resume and train.overwrite exclude each other: continue the run, or replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a run folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or resume:
        return []
    if not overwrite:
        shown = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "")
        raise ConfigError(f"{out} already holds files ({shown}); pass --resume to continue that run, --overwrite "
                          "to replace its outputs, or choose a new --out")
    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def save_adapter(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any] | None = None) -> Path:
    """Save the adapter (and tokenizer) into a temporary folder beside `dest`, then swap it in: `dest` is
    the old complete adapter or the new complete one, never a half-written one (a full disk, a kill).

    `meta` ({"base_model": ..., "protocol": ...}) is written as `medqa_adapter.json` with the adapter, so
    that predict, the demo and a Space load the right base model with the protocol it was trained with."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if meta is not None:
            from medqa.modeling import write_adapter_meta

            write_adapter_meta(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest



def resume_point(out: Path, resume: bool, identity: dict[str, Any]) -> tuple[Path | None, int]:
    """The checkpoint a run continues from (None for a fresh run) and its step. A fresh run starts a new
    metrics.jsonl; a resumed one keeps the lines of the steps already done (dropping any logged after that
    checkpoint). A save interrupted by a kill leaves only OUT/checkpoints/.staging, removed here."""
    metrics_path = out / "metrics.jsonl"
    shutil.rmtree(out / "checkpoints" / ".staging", ignore_errors=True)  # a save interrupted by a kill
    resume_from = last_complete_checkpoint(out / "checkpoints") if resume else None
    if resume_from is not None:
        check_checkpoint_belongs(resume_from, identity)  # never another run's adapter and optimizer
    start_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"] if resume_from else 0
    if resume_from is None:
        metrics_path.unlink(missing_ok=True)
    else:  # keep the log of the steps already done, drop anything logged after that checkpoint
        kept = [x for x in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if x.strip() and json.loads(x).get("step", 0) <= start_step]
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))
        print(f"medqa: resuming from {resume_from} (step {start_step})", flush=True)
    return resume_from, start_step
