"""The project's documented errors. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class MedQAError(Exception):
    """Base class of every error MedQA raises on purpose."""


class ConfigError(MedQAError):
    """A config file or command-line override is invalid (names the key)."""


class DataError(MedQAError):
    """Bad input data. Names the file, the row (1-based line or record number) and the field."""

    def __init__(self, source: str, row: int | str | None, field: str | None, message: str):
        self.source, self.row, self.field, self.message = source, row, field, message
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ModelError(MedQAError):
    """A model, tokenizer or adapter cannot be loaded or used as asked."""
