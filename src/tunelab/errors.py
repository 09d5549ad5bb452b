"""Errors meant for people: what went wrong, where, and what to do about it.

Every error a user can cause by their input is a ``TunelabError``. The CLI prints ``str(error)`` on one line and exits
with code 2; anything else escaping is a bug in tunelab.
"""

from __future__ import annotations


class TunelabError(Exception):
    """Bad input or an unusable environment, explained in one line.

    Args:
        what: what is wrong, as a short sentence without a trailing period.
        file: the file the problem is in, when there is one.
        row: the 1-based data row in ``file`` (the header, if any, not counted).
        line: the 1-based line in ``file``, for line-oriented files (JSONL, YAML).
        field: the column, config field or key concerned.
        hint: what the user can do about it.
    """

    exit_code = 2

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        row: int | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.what = what
        self.file = None if file is None else str(file)
        self.row = row
        self.line_no = line
        self.field = field
        self.hint = hint
        super().__init__(self.line())

    def where(self) -> str:
        """The location part of the message, e.g. ``data.jsonl, row 3, field 'answer'``."""
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line_no is not None:
            parts.append(f"line {self.line_no}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def line(self) -> str:
        """The whole message on one line."""
        where = self.where()
        text = f"{where}: {self.what}" if where else self.what
        if self.hint:
            text += f" (hint: {self.hint})"
        return " ".join(text.split("\n"))


class ConfigError(TunelabError):
    """An invalid configuration value or file."""


class DataError(TunelabError):
    """A data file that cannot be read or does not fit the configuration."""


class ModelError(TunelabError):
    """A backbone that cannot be found or loaded."""


class RunDirError(TunelabError):
    """A run directory that is missing, incomplete or would be overwritten."""
