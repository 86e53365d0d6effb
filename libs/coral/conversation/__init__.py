"""Conversations: agents, protocols and the runner that executes many of them concurrently."""

from coral.conversation.agent import Agent
from coral.backends.retry import RetryPolicy
from coral.conversation.context import ConversationContext
from coral.conversation.protocols import PROTOCOLS, CoralProtocol, Protocol, agent_view
from coral.conversation.runner import ConversationRunner

__all__ = [
    "PROTOCOLS",
    "Agent",
    "ConversationContext",
    "ConversationRunner",
    "CoralProtocol",
    "Protocol",
    "RetryPolicy",
    "agent_view",
]
