"""Name -> component registries, so a config can name a task, protocol or backend without importing it first."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from coral.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from short names to classes; an unknown name fails with the closest known names suggested."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering the class as ``name``; a second, different class under one name fails."""
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an unknown name is an ``UnknownName`` listing the closest ones."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(self._entries))
            raise UnknownName(self.kind, f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)
