"""A verified merged export, and the output-folder safety rules every shipped folder follows.

    medqa export RUN_DIR --merge --out DIR [--model BASE] [--device cpu] [--config FILE] [--model.* ...]

`export_merged` loads the base model and the LoRA adapter in float32, merges them (`merge_and_unload`),
casts the result to the base model's dtype and saves sharded safetensors, the tokenizer and the generation
config. It then reloads the saved folder and checks that it gives the same option probabilities as
base + adapter on bundled demo questions (max |Δp| within a stated tolerance); the folder appears (built
beside it, then renamed) only when that check passes. The adapter's `calibration.json` and
`medqa_adapter.json` (protocol) are kept in it.

`check_out_dir` refuses an output that would destroy something (`--force` replaces an earlier export,
never a folder holding a run, an adapter or checkpoints: `training_output`), and an output that is,
contains or lies inside the run, the adapter or the base model. `staged_folder` builds a folder beside its
target and swaps it in (`replace_dir`) with ordinary permissions (`normal_perms`).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medqa.config import DEFAULT_MODEL
from medqa.errors import ConfigError
from medqa.io import atomic_write_json
from medqa.modeling import read_adapter_meta, write_adapter_meta  # no torch at import: the CLI parser stays fast
from medqa.ship.run import CALIBRATION_FILE, EXPORT_INFO, ExportError, RunInfo, locate

HALF_TOLERANCE = 5e-3  # default |Δp| bound when the merged weights are rounded to bf16/fp16
FLOAT_TOLERANCE = 1e-4  # default |Δp| bound for float32 exports
VERIFY_QUESTIONS = 8
STUDY_AID = "A study aid, not medical advice."  # (medqa.inference.DISCLAIMER imports numpy; parsers stay light)
_CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")


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


# ----------------------------------------------------------------------------- output folders


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


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A path beside `out` (in a private temp folder) to build the folder at; when the block succeeds the folder
    gets the umask's modes and replaces `out` in one rename; whatever happens, nothing else is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = work / "folder"
        yield folder
        normal_perms(folder)
        replace_dir(folder, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


# ----------------------------------------------------------------------------- merged export


def _base_dtype(info: RunInfo, trust_remote_code: bool) -> str:
    """The dtype the base model's weights are stored in (what the merged export is cast back to)."""
    import torch
    from transformers import AutoConfig

    from medqa.modeling import from_pretrained, resolve_model_path

    if resolve_model_path(info.base)[1]:
        return "float32"  # GGUF loads de-quantised to float32
    conf = from_pretrained(AutoConfig, info.base, "the config of base model", trust_remote_code, info.revision)
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
    from medqa.datasets import load_demo
    from medqa.inference import score_records
    from medqa.format import PromptFormat

    return score_records(model, PromptFormat(tokenizer, protocol), load_demo()[:n], progress=False)


def _float32(name: str, device: str, trust_remote_code: bool, **kw: Any) -> Any:
    from medqa.config import ModelConfig

    return ModelConfig(name=name, dtype="float32", device=device, trust_remote_code=trust_remote_code, **kw)


def _tolerance(tolerance: float | None, dtype: str) -> float:
    tol = float(tolerance) if tolerance is not None else (FLOAT_TOLERANCE if dtype == "float32" else HALF_TOLERANCE)
    if tol < 0:
        raise ConfigError(f"tolerance must be >= 0 (got {tol})")
    return tol


def _save_merged(merged: Any, tokenizer: Any, folder: Path, shard_size: str | int, info: RunInfo,
                 meta: dict[str, Any]) -> None:
    """Weights, generation config and tokenizer; the calibration (temperature, abstention rule) and the
    protocol (`medqa_adapter.json`) travel with the merged weights."""
    merged.save_pretrained(str(folder), max_shard_size=shard_size, safe_serialization=True)
    if not (folder / "generation_config.json").is_file() and getattr(merged, "generation_config", None) is not None:
        merged.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if (info.adapter_dir / CALIBRATION_FILE).is_file():
        shutil.copy2(info.adapter_dir / CALIBRATION_FILE, folder / CALIBRATION_FILE)
    write_adapter_meta(folder, meta)


def _max_abs_diff(reference: list[Any], got: list[Any]) -> float:
    import numpy as np

    return max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got))


def _export_info(info: RunInfo, dtype: str, shard_size: str | int, verification: dict[str, Any]) -> dict[str, Any]:
    from medqa.versions import __version__

    return {
        "base_model": info.base,
        "base_model_hub_id": info.hub_base,
        "base_revision": info.revision,
        "adapter": info.adapter_dir.name if info.run_dir is None else "adapter",
        "dtype": dtype,
        "shard_size": shard_size,
        "verification": {**verification, "compared": "merged (reloaded, float32) vs base + adapter (float32)"},
        "medqa_version": __version__,
    }


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
    revision: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> ExportResult:
    """Merge the run's LoRA adapter into its base model and save a verified standalone model folder.

    `tolerance` bounds max |Δp| over the option probabilities of `verify_questions` demo questions
    (merged, reloaded from disk, vs base + adapter, both computed in float32); default 1e-4 for a
    float32 base, 5e-3 when the merged weights are rounded to bf16/fp16. Fails (writing nothing)
    when the bound is exceeded.
    """
    from medqa.modeling import load_adapter, load_model

    out = Path(out_dir)
    info = locate(run_or_adapter_dir, base_model, revision)  # the inputs first, then the output folder, then any work
    base_path = Path(info.base) if info.base != DEFAULT_MODEL and Path(info.base).exists() else None
    check_out_dir(out, overwrite, keep=[(info.run_dir, "the run folder"), (info.adapter_dir, "the adapter folder"),
                                        (base_path, "the base model")])
    dtype = _base_dtype(info, trust_remote_code)
    tol = _tolerance(tolerance, dtype)
    meta = read_adapter_meta(info.adapter_dir)  # medqa_adapter.json, else the run's config.yaml
    protocol = meta.get("protocol") or (info.config.eval.protocol if info.config is not None and info.config.eval.protocol else "chat")
    if echo:
        echo(f"medqa: merging {info.adapter_dir} into {info.base} (saved as {dtype}) ...")
    model, _ = load_model(_float32(info.base, device, trust_remote_code, revision=info.revision,
                                   allow_pickle=allow_pickle), with_adapter=False)
    model = load_adapter(model, str(info.adapter_dir), allow_pickle)
    model.eval()
    tokenizer = _load_tokenizer(info, trust_remote_code)
    reference = _verify_probs(model, tokenizer, protocol, verify_questions)
    merged = _merge(model, dtype)
    del model
    with staged_folder(out) as folder:
        folder.mkdir()
        _save_merged(merged, tokenizer, folder, shard_size, info, {**meta, "base_model": info.base, "protocol": protocol})
        del merged
        gc.collect()
        reloaded, _ = load_model(_float32(str(folder), device, trust_remote_code), with_adapter=False)
        got = _verify_probs(reloaded, tokenizer, protocol, verify_questions)
        del reloaded
        gc.collect()
        diff = _max_abs_diff(reference, got)
        if not diff <= tol:
            raise ExportError(
                f"merge verification failed: max |Δp| = {diff:.2e} > tolerance {tol:.0e} between the merged model "
                f"and base + adapter on {len(got)} demo questions; nothing written to {out}"
            )
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) + [EXPORT_INFO]
        atomic_write_json(folder / EXPORT_INFO, _export_info(info, dtype, shard_size, {
            "max_abs_diff": diff, "tolerance": tol, "questions": len(got), "protocol": protocol}))
    result = ExportResult(str(out), info.base, dtype, diff, tol, len(got), sorted(files))
    if echo:
        echo(f"medqa: merged model written to {out} ({len(files)} files, {dtype})")
        echo(result.line())
    return result


# ----------------------------------------------------------------------------- CLI


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The shared model flags (`--config`, `--model`, `--device`, every `--model.*` field) and the older
    spellings `--base`, `--allow-pickle`, `--trust-remote-code`, all read by `model_options`."""
    from medqa.flags import add_config_arguments

    add_config_arguments(p, sections=("model",), shortcuts=("model", "device"))
    p.add_argument("--base", dest="cfg:model.name", default=argparse.SUPPRESS, metavar="MODEL",
                   help="base model, same as --model (default: the run's config.yaml model.name, else the adapter's base)")
    for flag, field, help_ in (("--allow-pickle", "allow_pickle", "allow loading pickle (.bin/.pt) weights"),
                               ("--trust-remote-code", "trust_remote_code", "run model code from the Hub (off by default)")):
        p.add_argument(flag, dest=f"cfg:model.{field}", action="store_const", const="true",
                       default=argparse.SUPPRESS, help=f"{help_}; same as --model.{field} true")


def model_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The loading options of `add_model_flags` (defaults < --config YAML < flags); merging and verifying
    run on the CPU unless told otherwise."""
    from medqa.flags import config_from_args

    m = config_from_args(ns, base={"model.device": "cpu"}).model
    return dict(base_model=m.name, revision=m.revision, device=m.device, allow_pickle=m.allow_pickle,
                trust_remote_code=m.trust_remote_code)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", allow_abbrev=False, help="merge a run's LoRA adapter into its base model",
                              description="Write a standalone merged model (sharded safetensors, tokenizer, "
                                          "generation config), verified against base + adapter. " + STUDY_AID)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or adapter folder)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights (required)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty unless --force)")
    p.add_argument("--shard-size", default="2GB", help="max safetensors shard size (default 2GB)")
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"max |Δp| allowed (default {FLOAT_TOLERANCE:g} for float32, {HALF_TOLERANCE:g} for bf16/fp16)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    add_model_flags(p)
    p.set_defaults(handler=export_main)
    return p


def export_main(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    if not args.merge:
        raise ConfigError("medqa export: pass --merge (the adapter itself is already in RUN_DIR/adapter)")
    export_merged(args.run_dir, args.out, shard_size=args.shard_size, tolerance=args.tolerance, overwrite=args.force,
                  echo=echo, **model_options(args))
    return 0
