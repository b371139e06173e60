"""The run being shipped: what a run (or bare adapter) folder holds, and the errors shipping raises."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medqa.config import RunConfig
from medqa.errors import MedQAError, ModelError
from medqa.modeling import adapter_base, canonical_base, hub_base_id

EXPORT_INFO = "medqa_export.json"
CALIBRATION_FILE = "calibration.json"  # (medqa.calibrate.CALIBRATION_FILE; calibrate imports numpy)


class ExportError(MedQAError):
    """A merged export cannot be made or does not reproduce base + adapter."""


class HubError(MedQAError):
    """The Hub refused a request (authentication, permissions, a bad repo id), or a model card is invalid."""


class HubUnreachableError(HubError):
    """The Hugging Face Hub cannot be reached (no network, offline mode)."""


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


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_config(run_dir: Path) -> RunConfig | None:
    from medqa.config import build_config

    f = run_dir / "config.yaml"
    return build_config(f) if f.is_file() else None


def locate(run_or_adapter_dir: str | Path, base_model: str | None = None, revision: str | None = None) -> RunInfo:
    """A run directory (with `adapter/` and `config.yaml`) or an adapter folder, and its base model: `base_model`
    when given (at `revision`), else the run's (at `revision`, else the run's revision)."""
    d = Path(run_or_adapter_dir)
    if (d / "adapter" / "adapter_config.json").is_file():
        adapter_dir, run_dir = d / "adapter", d
    elif (d / "adapter_config.json").is_file():
        adapter_dir = d
        run_dir = d.parent if (d.parent / "config.yaml").is_file() and d.name == "adapter" else None
    else:
        raise ModelError(f"{d}: neither a run directory (no adapter/adapter_config.json) nor a LoRA adapter folder")
    cfg = _read_config(run_dir) if run_dir is not None else None
    run_revision = cfg.model.revision if cfg is not None else None
    # the run's model.name as given, else the base the adapter records (medqa_adapter.json, adapter_config.json)
    base = base_model or canonical_base(cfg.model.name if cfg is not None else None) or adapter_base(adapter_dir)
    if not base:
        raise ModelError(f"{adapter_dir}: cannot tell the base model (no config.yaml, no base_model_name_or_path); pass --base")
    return RunInfo(adapter_dir, run_dir, cfg, base, revision if base_model else revision or run_revision)
