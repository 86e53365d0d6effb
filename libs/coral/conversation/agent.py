"""An agent: who speaks, on which model, with which instruction and sampling; the specs it is built from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from coral.backends.base import ChatBackend
from coral.sampling import SamplingParams

if TYPE_CHECKING:
    from coral.conversation.protocols.base import Protocol
    from coral.tasks.base import Task


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


@dataclass(frozen=True)
class AgentConfig:
    """One entry of a run's agents mapping (``model.agents``): what this agent does differently from the defaults.

    Every field left None takes the run's default: the model and endpoint of ``teacher_model`` /
    ``teacher_app_name`` (``student_*`` for the agent named ``student``), the protocol's instruction for the
    agent's role or else the data's instruction style, and the run's sampling.

    Args:
        model: a packaged model name, a checkpoint directory, or the model name to ask the endpoint for.
        app_name: where the model is served (see ``AgentSpec.endpoint``); None: the run's default.
        instruction: an instruction style of the task (``simple_cot``, ``assistant_sbs_short``, ...).
        system_prompt: a literal system prompt; wins over ``instruction``.
        temperature: sampling temperature.
        top_p: nucleus mass.
        max_tokens: most tokens per generated turn.
    """

    model: str | None = None
    app_name: str | None = None
    instruction: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None

    def sampling(self, default: SamplingParams) -> SamplingParams:
        """``default`` with this agent's overrides."""
        return replace(
            default,
            temperature=default.temperature if self.temperature is None else self.temperature,
            top_p=default.top_p if self.top_p is None else self.top_p,
            max_tokens=default.max_tokens if self.max_tokens is None else self.max_tokens,
        )


BackendFor = Callable[[AgentSpec], tuple[ChatBackend, str]]
"""Builds (or reuses) the backend serving a spec, and the model name to ask it for."""


def build_agents(
    protocol: Protocol,
    task: Task,
    specs: Mapping[str, AgentSpec],
    configs: Mapping[str, AgentConfig],
    sampling: SamplingParams,
    backend_for: BackendFor,
    instructions: Mapping[str, str] | None = None,
) -> dict[str, Agent]:
    """The protocol's agents, each with its backend, system prompt and sampling.

    The system prompt is the agent's own (``system_prompt``, else its ``instruction`` style), else the
    protocol's for its role, else ``instructions`` for it (the run's configured styles; ``teacher``'s for every
    agent but ``student``), else none.

    Args:
        protocol: names the agents (``speakers()``) and their role instructions.
        task: renders instruction styles.
        specs: agent name -> its model and endpoint.
        configs: agent name -> its overrides (an agent with none takes every default).
        sampling: the run's sampling, which an agent's overrides change.
        backend_for: the backend serving a spec.
        instructions: system prompts from the run's configuration, by agent name.
    """
    agents = {}
    for name in protocol.speakers():
        config = configs.get(name, AgentConfig())
        prompt = config.system_prompt
        if prompt is None and config.instruction is not None:
            prompt = task.instruction(config.instruction)
        if prompt is None:
            prompt = protocol.instruction(name, task)
        if prompt is None and instructions:
            prompt = instructions.get(name, instructions.get("teacher", ""))
        backend, served = backend_for(specs[name])
        agents[name] = Agent(name, backend, served, prompt or "", config.sampling(sampling))
    return agents
