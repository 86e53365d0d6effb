"""An agent: who speaks, on which model, with which instruction and sampling."""

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
