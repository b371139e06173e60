"""Ship a run: a verified merged export, a model card built from the run, and a Hub push.

    medqa export RUN_DIR --merge --out DIR          (medqa.ship.export)
    medqa push RUN_DIR --repo USER/NAME [--dry-run DIR] [--merged] [--space]   (medqa.ship.push)

- `run`: what a run folder holds (`locate`) and the errors shipping raises.
- `export`: `export_merged` (merged weights checked against base + adapter) and the output-folder rules
  (`check_out_dir`, `training_output`, `staged_folder`, `replace_dir`, `normal_perms`).
- `card`: `build_model_card` from the template `medqa/resources/model_card.md`, and `check_card`.
- `push`: `assemble`, `push.push` (with `--dry-run`), token handling and one-line Hub errors.
- `space` (the Gradio Space folder) is imported where it is used.

Importing this package does not import torch.
"""

from medqa.ship.card import build_model_card, check_card
from medqa.ship.export import (
    ExportResult,
    check_out_dir,
    export_merged,
    normal_perms,
    replace_dir,
    staged_folder,
    training_output,
)
from medqa.ship.push import assemble, resolve_token  # (not `push`: medqa.ship.push stays the module)
from medqa.ship.run import ExportError, HubError, HubUnreachableError, RunInfo, locate

__all__ = [
    "RunInfo", "locate", "ExportError", "HubError", "HubUnreachableError",
    "ExportResult", "export_merged", "check_out_dir", "training_output", "staged_folder", "replace_dir", "normal_perms",
    "build_model_card", "check_card",
    "assemble", "resolve_token",
]
