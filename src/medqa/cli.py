"""`medqa` command line: a thin layer over `medqa.recipes`.

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

from medqa.config import config_fields, parse_value

SHORTCUTS = {
    "model": ("model.name", "base model: Hub id, local folder, .gguf file (default: the adapter's base model, else offline "
                        "SmolLM2-135M-Instruct)"),
    "adapter": ("model.adapter", "LoRA adapter folder"),
    "dataset": ("data.dataset", "dataset loader: medmcqa | medqa-usmle | pubmedqa | mmlu | csv | jsonl | demo"),
    "data": ("data.path", "local data file or Hub dataset id"),
    "limit": ("data.limit", "use only the first N questions"),
    "out": ("out", "run directory"),
    "protocol": ("eval.protocol", "prompt protocol: chat | lm-eval (default: the adapter's, else chat)"),
    "device": ("model.device", "auto | cpu | cuda | cuda:N | mps | xpu"),
}
RAW_STRING_FIELDS = {"out", "path", "name", "adapter", "revision", "split"}
TRAIN_SHORTCUTS = {
    "resume": ("train.resume", "continue from the last complete checkpoint (true/false)"),
    "overwrite": ("train.overwrite", "replace the earlier run's outputs in --out (true/false)"),
    "eval-data": ("eval_data.path", "held-out data evaluated after training"),
}


def _field_help(description: str | None, info: Any) -> str:
    """A field's one-line help with its default; '%' escaped (argparse %-formats help strings)."""
    default = info.get_default(call_default_factory=True)
    if hasattr(default, "model_dump"):
        default = default.model_dump(mode="json")
    shown = "null" if default is None else json.dumps(default) if isinstance(default, (list, dict)) else str(default)
    text = f"{description} (default: {shown})" if description else f"(default: {shown})"
    return text.replace("%", "%%")


def _add_config_flags(p: argparse.ArgumentParser, shortcuts: dict[str, tuple[str, str]]) -> None:
    p.add_argument("--config", help="YAML config file (flags override it)")
    fields = dict(config_fields())
    for flag, (dest, help_) in shortcuts.items():
        extra = {"nargs": "?", "const": "true"} if flag in ("resume", "overwrite") else {}
        p.add_argument(f"--{flag}", dest=f"cfg:{dest}", default=argparse.SUPPRESS, metavar="VALUE",
                       help=_field_help(help_, fields[dest]) if dest in fields else help_.replace("%", "%%"), **extra)
    group = p.add_argument_group("config fields (any field of the YAML config)")
    for dotted, info in fields.items():
        if dotted in shortcuts:  # `--out`; the other short names are aliases beside their dotted flags
            continue
        group.add_argument(f"--{dotted}", dest=f"cfg:{dotted}", default=argparse.SUPPRESS, metavar="VALUE",
                           help=_field_help(info.description, info))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medqa", allow_abbrev=False, description="Medical multiple-choice QA: fine-tune, evaluate, serve. A study aid, not medical advice.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_eval = sub.add_parser("eval", allow_abbrev=False, help="evaluate a model (+ adapter) by letter scoring")
    _add_config_flags(p_eval, SHORTCUTS)
    p_train = sub.add_parser("train", allow_abbrev=False, help="LoRA fine-tune")
    _add_config_flags(p_train, {**SHORTCUTS, **TRAIN_SHORTCUTS})
    p_quick = sub.add_parser("quickstart", allow_abbrev=False, help="offline demo: evaluate, fine-tune, evaluate again")
    p_quick.add_argument("--out", dest="cfg:out", default=argparse.SUPPRESS, help="run directory")
    for flag in ("train.epochs", "train.max_steps", "data.train_size", "eval_data.limit", "model.name"):
        p_quick.add_argument(f"--{flag}", dest=f"cfg:{flag}", default=argparse.SUPPRESS, metavar="VALUE", help=argparse.SUPPRESS)
    from medqa.compare import add_compare_parser
    from medqa.inspect import add_data_parser

    add_data_parser(sub)
    add_compare_parser(sub)
    from medqa.hub import add_export_parser, add_push_parser
    from medqa.predict import add_predict_parser
    from medqa.serve import add_demo_parser, add_space_parser

    p_doc = sub.add_parser("doctor", help="accelerator, dtype, attention kernels, ROCm/CUDA variables, advice")
    p_doc.add_argument("--json", action="store_true", help="print JSON")
    p_doc.add_argument("--config", help="YAML config whose hardware.env is applied first")
    add_export_parser(sub)
    add_push_parser(sub)
    add_predict_parser(sub)
    add_demo_parser(sub)
    add_space_parser(sub)
    return parser


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(ns).items():
        if k.startswith("cfg:"):
            dotted = k[4:]
            raw = dotted.rsplit(".", 1)[-1] in RAW_STRING_FIELDS  # paths and names stay text ("007" is a name)
            out[dotted] = v if raw else parse_value(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
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
    from rich.console import Console

    from medqa.config import apply_env, build_config

    if ns.command == "data":
        from medqa.inspect import inspect_main

        return inspect_main(ns)
    if ns.command == "compare":
        from medqa.compare import compare_main

        return compare_main(ns)
    if ns.command == "doctor":
        if ns.config:  # before torch initialises
            apply_env(build_config(ns.config))
        from medqa.hardware import doctor, format_doctor

        report = doctor()
        print(json.dumps(report, indent=2) if ns.json else format_doctor(report))
        return 0
    if ns.command in ("export", "push", "predict"):
        return ns.handler(ns)
    if ns.command == "demo":
        from medqa.serve import demo_main

        return demo_main(ns)
    if ns.command == "space":
        from medqa.serve import space_main

        return space_main(ns)
    console = Console()
    ov = _overrides(ns)
    if ns.command == "quickstart":
        from medqa import recipes
        from medqa.evaluate import DISCLAIMER

        result = recipes.quickstart(overrides=ov)
        console.print(result["table"])
        console.print(f"wall time {result['wall_seconds']:.0f} s; report: {result['train']['adapter'].rsplit('/', 1)[0]}/quickstart.md")
        console.print(f"[yellow]{DISCLAIMER}[/yellow]")
        return 0
    base = {"out": "runs/eval"} if ns.command == "eval" else {}
    if ns.command == "train" and "eval_data.path" in ov:
        ov.setdefault("eval_data.dataset", ov.get("data.dataset", "medmcqa"))
    cfg = build_config(getattr(ns, "config", None), ov, base=base)
    apply_env(cfg)  # hardware.env: before torch initialises the device
    from medqa import recipes
    from medqa.evaluate import DISCLAIMER

    if ns.command == "eval":
        s = recipes.run_eval(cfg)
        if "ci95" not in s:  # a non-main rank of a data-parallel run: rank 0 reports
            return 0
        lo, hi = s["ci95"]
        extra = f"; ECE {s['ece']:.3f}; {s['questions_per_second']} q/s" if "ece" in s else (
            f" ({len(s['per_dataset'])} datasets, size-weighted; macro mean {s['macro_accuracy']:.1%})")
        console.print(
            f"accuracy {s['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}) on {s['n']} questions; "
            f"majority baseline {s['majority_baseline']:.1%}{extra}; written to {cfg.out}"
        )
        console.print(f"[yellow]{DISCLAIMER}[/yellow]")
        return 0
    if ns.command == "train":
        r = recipes.run_train(cfg)
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch rank 0 reports
            return 0
        console.print(json.dumps({k: r["train"][k] for k in ("steps", "train_loss", "seconds", "adapter")}))
        if "after" in r:
            console.print(f"held-out accuracy {r['after']['accuracy']:.1%} on {r['after']['n']} questions")
        return 0
    raise AssertionError(ns.command)


if __name__ == "__main__":
    sys.exit(main())
