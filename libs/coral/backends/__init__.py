"""Model backends: the ChatBackend interface and its implementations.

``embedded`` (in-process transformers engine, the default) and ``scripted`` (answers from a function, for fast
tests). The embedded backend imports torch, so it is loaded only when first asked for.
"""

from typing import Any

from coral.backends.base import BACKENDS, BackendError, ChatBackend, Completion, Message
from coral.backends.scripted import ScriptedBackend


def __getattr__(name: str) -> Any:
    if name in ("EmbeddedBackend", "EngineConfig"):
        from coral.backends import embedded

        return getattr(embedded, name)
    raise AttributeError(name)


__all__ = [
    "BACKENDS",
    "BackendError",
    "ChatBackend",
    "Completion",
    "EmbeddedBackend",
    "EngineConfig",
    "Message",
    "ScriptedBackend",
]
