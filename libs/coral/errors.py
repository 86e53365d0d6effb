"""Errors that name where bad input came from: a data file's line and field, or a configuration option.

Both are mistakes a person fixes by editing a file or a flag, so command lines print them as one line (exit
status 2) instead of a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file is malformed; the message names the file, line and field."""

    def __init__(self, path: object, line: int | None, field: str | None, problem: str) -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")
        self.path, self.line, self.field = path, line, field


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the one option at fault."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


def user_error(exc: BaseException) -> DataError | ConfigError | None:
    """The DataError or ConfigError behind ``exc`` (itself, or what it was raised from), if any.

    Parsers such as jsonargparse re-raise a constructor's error inside their own, so the cause chain is followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (DataError, ConfigError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
