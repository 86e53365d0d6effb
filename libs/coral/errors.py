"""Errors that name where bad input came from."""

from __future__ import annotations


class DataError(ValueError):
    """A data file is malformed; the message names the file, line and field."""

    def __init__(self, path: object, line: int | None, field: str | None, problem: str) -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")
        self.path, self.line, self.field = path, line, field
