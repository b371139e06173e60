"""The bundled demo set: original questions written for MedQA, in the MedMCQA schema (0-based `cop`).

A demo, not a benchmark. `load_demo()` gives the records; `load_demo_set` is the same load with
its report, in the loader shape the registry calls (path and split are ignored).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medqa.datasets.medmcqa import load_medmcqa
from medqa.datasets.record import LoadReport, MCQRecord


def demo_path() -> Path:
    """The bundled demo file (medqa/resources/demo_questions.jsonl)."""
    return Path(str(resources.files("medqa") / "resources" / "demo_questions.jsonl"))


def load_demo_set(path: str | None = None, split: str | None = None,
                  on_bad_rows: str = "error") -> tuple[list[MCQRecord], LoadReport]:
    """The demo set and its load report (records labelled `source="medqa-demo"`)."""
    return load_medmcqa(str(demo_path()), cop_base=0, source_name="medqa-demo", on_bad_rows=on_bad_rows)


def load_demo() -> list[MCQRecord]:
    """The demo set's records."""
    return load_demo_set()[0]
