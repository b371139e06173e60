"""Command-line flags for the run configuration: the one parser every subcommand shares.

`add_config_arguments(parser, sections)` gives a subcommand `--config FILE`, `--print-config`, the short
names it wants (`--model`, `--adapter`, ...) and a `--section.field` flag for every field of the sections
it uses, each listed in `--help` with its default and a one-line description (Transformers / TRL names
such as `--learning_rate` or `--train.gradient_accumulation_steps` work as aliases).
`config_from_args(ns)` merges defaults < YAML < flags into a validated `RunConfig`; with `--print-config`
it prints the resolved YAML and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from medqa.config import ALIASES, RunConfig, aliases_of, build_config, config_fields, dump_config, parse_value

# short names shared by the subcommands; each one picks those it uses
SHORTCUTS: dict[str, tuple[str, str]] = {
    "model": ("model.name", "base model: Hub id, local folder, .gguf file (default: the adapter's base model, else "
                            "offline SmolLM2-135M-Instruct)"),
    "adapter": ("model.adapter", "LoRA adapter folder (or Hub id)"),
    "dataset": ("data.dataset", "dataset family (see `medqa data inspect --help`)"),
    "data": ("data.path", "local data file or Hub dataset id"),
    "limit": ("data.limit", "use only the first N questions"),
    "out": ("out", "run directory"),
    "protocol": ("eval.protocol", "prompt protocol: chat | lm-eval (default: the adapter's, else chat)"),
    "device": ("model.device", "auto | cpu | cuda | cuda:N | mps | xpu"),
    "resume": ("train.resume", "continue from the last complete checkpoint (true/false)"),
    "overwrite": ("train.overwrite", "replace the earlier run's outputs in --out (true/false)"),
    "eval-data": ("eval_data.path", "held-out data evaluated after training"),
    "force-base": ("model.force_base", "load the adapter onto --model even if it was trained on another base"),
    "method": ("train.method", "sft (LoRA supervised fine-tuning) | grpo (LoRA RL on reasoning, TRL's GRPOTrainer)"),
    "init-adapter": ("model.adapter", "start training from this LoRA adapter (e.g. an SFT run's RUN/adapter)"),
}
_SWITCHES = {"resume", "overwrite", "force-base"}  # `--resume` alone means true
RAW_STRING_FIELDS = {"out", "path", "name", "adapter", "revision", "split"}  # "007" stays a name


def _field_help(description: str | None, info: Any, aliases: list[str]) -> str:
    """A field's one-line help with its default (and aliases); '%' escaped (argparse %-formats help)."""
    default = info.get_default(call_default_factory=True)
    if hasattr(default, "model_dump"):
        default = default.model_dump(mode="json")
    shown = "null" if default is None else json.dumps(default) if isinstance(default, (list, dict)) else str(default)
    text = f"{description} (default: {shown})" if description else f"(default: {shown})"
    if aliases:
        text += " [also " + ", ".join(f"--{a}" for a in aliases) + "]"
    return text.replace("%", "%%")


def add_config_arguments(p: argparse.ArgumentParser, sections: Sequence[str] | None = None,
                         shortcuts: Sequence[str] = (), config_file: bool = True) -> None:
    """`--config`, `--print-config`, the named short flags and `--section.field` for every field of `sections`
    (all sections when None). Values are YAML scalars (`2e-4`, `true`, `[q_proj, v_proj]`)."""
    if config_file:
        p.add_argument("--config", help="YAML config file (flags override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    fields = dict(config_fields())
    for flag in shortcuts:
        dest, help_ = SHORTCUTS[flag]
        extra = {"nargs": "?", "const": "true"} if flag in _SWITCHES else {}
        p.add_argument(f"--{flag}", dest=f"cfg:{dest}", default=argparse.SUPPRESS, metavar="VALUE",
                       help=_field_help(help_, fields[dest], []), **extra)
    group = p.add_argument_group("config fields (any field of the YAML config)")
    for dotted, info in fields.items():
        if sections is not None and dotted.split(".")[0] not in sections:
            continue
        if dotted in shortcuts:  # `--out` is both
            continue
        aliases = aliases_of(dotted)
        group.add_argument(f"--{dotted}", dest=f"cfg:{dotted}", default=argparse.SUPPRESS, metavar="VALUE",
                           help=_field_help(info.description, info, aliases))
        for alias in aliases:
            group.add_argument(f"--{alias}", dest=f"cfg:{alias}", default=argparse.SUPPRESS, metavar="VALUE",
                               help=argparse.SUPPRESS)


def overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The dotted config values given as flags (aliases kept: `build_config` resolves them)."""
    out: dict[str, Any] = {}
    for k, v in vars(ns).items():
        if k.startswith("cfg:"):
            dotted = ALIASES.get(k[4:], k[4:])
            raw = dotted.rsplit(".", 1)[-1] in RAW_STRING_FIELDS
            out[k[4:]] = v if raw or not isinstance(v, str) else parse_value(v)
    return out


def config_from_args(ns: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """defaults < `base` < --config YAML < flags, validated; `--print-config` prints it and exits."""
    cfg = build_config(getattr(ns, "config", None), overrides(ns), base=base)
    if getattr(ns, "print_config", False):
        sys.stdout.write(dump_config(cfg))
        raise SystemExit(0)
    return cfg
