"""Quiet by default: library warnings and loading bars go to a log file, MedQA's own messages stay.

`configure(verbose, libraries)` is called once by the CLI. Unless `--verbose` (or MEDQA_VERBOSE=1):
  * Python warnings (PEFT's FutureWarnings, Transformers' deprecations, ...) and the log records of
    transformers, peft, accelerate, datasets, huggingface_hub, trl and torch go to `$MEDQA_CACHE/logs/medqa.log`
    (rotated, 2 MB x 3) instead of the terminal;
  * Transformers' weight-loading / GGUF-conversion bars and Datasets' map bars are off. Hub download bars
    stay (a multi-GB download is long work and shows progress), as do MedQA's own progress bars, the
    Trainer's training bar and every `medqa:` message.
Errors are never hidden: the CLI prints them in one line and names the log when it holds records of this run.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import warnings
from pathlib import Path

LIBRARIES = ("transformers", "peft", "accelerate", "datasets", "huggingface_hub", "trl", "torch", "gradio", "httpx")


class _CountingHandler(logging.handlers.RotatingFileHandler):
    records = 0

    def emit(self, record: logging.LogRecord) -> None:
        type(self).records += 1
        super().emit(record)


_handler: _CountingHandler | None = None


def log_path() -> Path:
    from medqa.modeling import cache_dir

    return cache_dir() / "logs" / "medqa.log"


def configure(verbose: bool = False, libraries: bool = True) -> Path | None:
    """Route library output to the log (returns its path), or leave everything on the terminal (None).
    `libraries`: also silence Transformers' own handler and bars (imports transformers: commands that load
    a model pay that anyway; `medqa data` / `doctor` / `--help` stay fast)."""
    global _handler
    if verbose or os.environ.get("MEDQA_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if _handler is None:
        path = log_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _handler = _CountingHandler(path, maxBytes=2_000_000, backupCount=2, encoding="utf-8")
        except OSError:  # an unwritable cache: say nothing, drop nothing that matters (errors still print)
            return None
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        logging.captureWarnings(True)
        warnings.simplefilter("default")  # each distinct warning once per place, into the log
        for name in ("py.warnings", *LIBRARIES):
            logger = logging.getLogger(name)
            logger.addHandler(_handler)
            logger.propagate = False
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
    if libraries:
        _quiet_transformers()
    return log_path()


def _quiet_transformers() -> None:
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()  # its stderr handler; ours (added above) keeps the records
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # loading / conversion bars ...
    hub_utils.enable_progress_bars()  # ... but downloads still show progress


def records_logged() -> int:
    """Library records written to the log by this process."""
    return _CountingHandler.records
