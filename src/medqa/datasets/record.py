"""The one record type every loader produces, and the report of what a load did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medqa.errors import DataError

LETTERS = "ABCDE"

Row = str | int | None  # a 1-based line or record number, or a key such as a PubMedQA PMID


class MCQRecord(BaseModel):
    """One multiple-choice question: 2 to 5 options and the 0-based index of the correct one."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2, max_length=5)
    answer: int = Field(ge=0)
    context: str | None = None  # a passage the question is about (PubMedQA's abstract)
    explanation: str | None = None
    subject: str | None = None
    topic: str | None = None
    choice_type: str | None = None
    source: str = "unknown"

    @field_validator("options")
    @classmethod
    def _non_empty_options(cls, v: list[str]) -> list[str]:
        for i, o in enumerate(v):
            if not o.strip():
                raise ValueError(f"option {LETTERS[i]} is empty")
        return v

    def model_post_init(self, __context: Any) -> None:
        if self.answer >= len(self.options):
            raise ValueError(f"answer {self.answer} out of range for {len(self.options)} options")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass
class LoadReport:
    """What a load did: rows read, records kept, rows skipped and why."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    cop_base: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "kept": self.kept,
            "skipped": len(self.skipped),
            "skipped_reasons": self.skipped[:50],
            "cop_base": self.cop_base,
        }


def make_record(where: str, row: Row, /, **fields: Any) -> MCQRecord:
    """Build a validated record; a validation failure becomes a DataError naming the field."""
    try:
        return MCQRecord(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or None
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise DataError(where, row, loc, msg) from None


def default_id(source: str, row: Row) -> str:
    """The id of a row that has none: `<file name>:<row>`."""
    return f"{Path(source).name}:{row}"
