"""Conversations: agents, protocols and the runner that executes many of them concurrently."""

from coral.backends.retry import RetryPolicy
from coral.conversation.agent import Agent, AgentConfig, AgentSpec, build_agents
from coral.conversation.context import ConversationContext
from coral.conversation.protocols import PROTOCOLS, CoralProtocol, Protocol, agent_view
from coral.conversation.runner import ConversationRunner, evaluate
from coral.conversation.settings import RunSettings

__all__ = [
    "PROTOCOLS",
    "Agent",
    "AgentConfig",
    "AgentSpec",
    "ConversationContext",
    "ConversationRunner",
    "CoralProtocol",
    "Protocol",
    "RetryPolicy",
    "RunSettings",
    "agent_view",
    "build_agents",
    "evaluate",
]
