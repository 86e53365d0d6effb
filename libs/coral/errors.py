"""Errors that name where bad input came from: a data file's line and field, or a configuration option.

Both are mistakes a person fixes by editing a file or a flag, so command lines print them as one line (exit
status 2) instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


class UnknownName(ConfigError, KeyError):
    """A configuration names a component (task, protocol, instruction style) that is not registered.

    The message lists the closest known names. Still a KeyError, as a failed lookup by name.
    """

    def __init__(self, kind: str, message: str) -> None:
        Exception.__init__(self, message)  # the message is whole already: no "option: " prefix
        self.option = kind

    __str__ = BaseException.__str__  # KeyError would quote the message


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


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the known name closest to ``name``, or nothing when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
