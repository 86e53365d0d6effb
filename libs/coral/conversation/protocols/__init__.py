"""Protocols: one module per protocol, each registered by name when ``coral.conversation`` is imported.

Every module of this package is imported here, as tasks are, so adding a protocol is adding one module (plus a
config): subclass ``Protocol``, register it with ``@PROTOCOLS.register(name)``, and name it in a config either
by that name or as ``class_path`` + ``init_args``.
"""

from __future__ import annotations

import importlib
import pkgutil

from coral.conversation.protocols.base import PROTOCOLS, Protocol, agent_view, latest_turn_of
from coral.conversation.protocols.coral import CoralProtocol

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration

__all__ = ["PROTOCOLS", "CoralProtocol", "Protocol", "agent_view", "latest_turn_of"]
