"""Model backends: the ChatBackend interface and its implementations.

``embedded`` (in-process transformers engine, the default), ``scripted`` (answers from a function, for fast
tests), ``openai_http`` (any OpenAI-compatible server) and ``grpc`` (coral's gRPC service).
"""

import importlib
from typing import Any

from coral.backends.base import (
    BACKENDS,
    BackendError,
    ChatBackend,
    ChatRequest,
    Completion,
    Message,
    StreamingChatBackend,
)
from coral.backends.scripted import ScriptedBackend

_LAZY = {
    "EmbeddedBackend": "coral.backends.embedded",
    "EngineConfig": "coral.backends.embedded",
    "OpenAIHTTPBackend": "coral.backends.http",
    "GrpcBackend": "coral.backends.grpc_client",
}
"""Backends whose modules import heavy packages (torch, aiohttp, grpc) load when first asked for."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "BACKENDS",
    "BackendError",
    "ChatBackend",
    "ChatRequest",
    "Completion",
    "EmbeddedBackend",
    "EngineConfig",
    "GrpcBackend",
    "Message",
    "OpenAIHTTPBackend",
    "ScriptedBackend",
    "StreamingChatBackend",
]
