"""An agent: who speaks, on which model, with which instruction and sampling; and the spec it is built from."""

from __future__ import annotations

from dataclasses import dataclass

from coral.backends.base import ChatBackend
from coral.sampling import SamplingParams


@dataclass
class Agent:
    """One participant of a conversation.

    Args:
        name: the speaker name recorded on its turns ("teacher", "student", ...).
        backend: where its requests go.
        model: the model name passed to the backend.
        system_prompt: the task instruction it gets as system message.
        sampling: its sampling parameters; the seed is set per request.
    """

    name: str
    backend: ChatBackend
    model: str
    system_prompt: str
    sampling: SamplingParams


@dataclass(frozen=True)
class AgentSpec:
    """Which model an agent runs and where, before a backend is built for it.

    Args:
        model: a packaged model name or a Hugging Face checkpoint directory for the embedded engine, or the model
            name to ask the endpoint for (an application's own served name takes its place).
        endpoint: where the model is served: a ``coral-serve`` application name, an OpenAI-compatible URL or a
            ``grpc://host:port[/app]`` address (see ``coral.serving.endpoints``); None: the embedded engine.
    """

    model: str
    endpoint: str | None = None
