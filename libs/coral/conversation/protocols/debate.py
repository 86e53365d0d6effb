"""Multi-agent debate (Du et al. 2023; MAPoRL's evaluation setting): answer alone, then revise after the others.

Turn 0 is the problem, posed by the ``moderator``: the protocol's own voice, not an agent (``role`` question,
``generated`` False). Every message an agent receives as ``user`` is the moderator's: the problem, then once per
later round the other agents' previous answers, each labelled with its speaker, and the request to revise.

Round 0: every agent answers the problem independently. Rounds 1..T-1: each agent keeps its own history (the
problem, its own earlier answers as ``assistant``, the moderator's peer messages between them) and answers
again. With a single agent the later rounds are self-reflection (Du et al.: "double check your answer").

After each round the agents' answers are put to a majority vote; the last round's vote is the outcome and every
round's vote is kept in ``Outcome.rounds`` (training.md sections 1.1, 1.5 and 3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal, get_args

from coral.backends.base import Message
from coral.conversation.protocols.base import MODERATOR, PROTOCOLS, Protocol
from coral.conversation.voting import TIE_RULES, majority_vote
from coral.records import ConversationRecord, Outcome, StopReason, TieRule, Turn
from coral.tasks.base import Example

if TYPE_CHECKING:
    from coral.conversation.context import ConversationContext
    from coral.tasks.base import Task

PromptStyle = Literal["du", "maporl"]
"""The wording of the revise request: Du et al.'s (default) or MAPoRL's."""

PeerScorer = Callable[[Example, Turn], Awaitable[float]]
"""A verifier's score for one answer (MAPoRL's reward model), shown to the other agents beside that answer."""


@PROTOCOLS.register("debate")
class DebateProtocol(Protocol):
    """Du et al.'s multi-agent debate with a majority vote after every round (MAPoRL: 3 agents x 3 rounds).

    Args:
        agents: how many agents debate (speakers ``agent_1`` .. ``agent_N``); 1 gives self-reflection.
        rounds: how many times every agent answers (T); round 0 is the independent answers, so 1 round is
            independent sampling with a vote.
        prompts: the revise request's wording: ``du`` (Du et al.: "Using the solutions from other agents as
            additional information, ...") or ``maporl`` (weigh your previous answer against the others', revise
            it if it is wrong, keep the reasoning simple, and the problem restated).
        tie_rule: how a vote with several answers tied for the most votes is decided: ``expected`` (MAPoRL:
            1/|tied| when the gold is among them), ``first_agent`` (Du et al.) or ``random`` (seeded; the seeds
            are recorded in ``metadata["vote_seeds"]``).

    ``peer_scores`` is set in code, not in a config (the MAPoRL training sets it to its verifier): when set,
    every answer another agent will read is scored, the score is shown beside it ("Reward associated with
    agent_2's solution calculated by verifier: 0.8") and recorded in ``metadata["peer_scores"]`` (turn index ->
    score), so ``debate_messages`` rebuilds the exact prompts.
    """

    name = "debate"

    def __init__(
        self, agents: int = 3, rounds: int = 3, prompts: PromptStyle = "du", tie_rule: TieRule = "expected"
    ) -> None:
        if agents < 1 or rounds < 1:
            raise ValueError(f"a debate needs at least one agent and one round, got {agents=} and {rounds=}")
        if prompts not in get_args(PromptStyle):
            raise ValueError(f"unknown debate prompts {prompts!r} (known: {', '.join(get_args(PromptStyle))})")
        if tie_rule not in TIE_RULES:
            raise ValueError(f"unknown tie rule {tie_rule!r} (known: {', '.join(TIE_RULES)})")
        self.agents = agents
        self.rounds = rounds
        self.prompts = prompts
        self.tie_rule = tie_rule
        self.peer_scores: PeerScorer | None = None

    def speakers(self) -> list[str]:
        """``agent_1`` .. ``agent_N``, in the order ``first_agent`` breaks ties by."""
        return [f"agent_{i}" for i in range(1, self.agents + 1)]

    def instruction(self, speaker: str, task: Task) -> str | None:
        """The task's single-answer chain-of-thought prompt: task-agnostic, and it carries the answer format."""
        return task.instruction("simple_cot")

    @property
    def max_turns(self) -> int:
        """Every agent answers once per round."""
        return self.agents * self.rounds

    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Play every round (or stop after one with a failed turn), voting after each."""
        self._check(ctx)
        opening = ctx.task.opening_message(ctx.example, posed=True)
        turns = [Turn(index=0, speaker=MODERATOR, text=opening, generated=False, role="question")]
        scores: dict[str, float] = {}
        votes: list[Outcome] = []
        stop_reason: StopReason = "completed"
        for round_ in range(self.rounds):
            answers = await self._round(ctx, turns, round_, scores)
            turns.extend(answers)
            votes.append(majority_vote(answers, self.tie_rule, random.Random(ctx.seed("vote", round_))))
            if any(turn.error is not None for turn in answers):
                stop_reason = "error"
                break
            if self.peer_scores is not None and self.agents > 1 and round_ < self.rounds - 1:
                scores.update(await self._score(ctx, answers, self.peer_scores))
        record = ctx.record(self, turns, stop_reason, dataclasses.replace(votes[-1], rounds=votes))
        if self.tie_rule == "random":
            record.metadata["vote_seeds"] = [ctx.seed("vote", r) for r in range(len(votes))]
        if scores:
            record.metadata["peer_scores"] = scores
        return record

    def _check(self, ctx: ConversationContext) -> None:
        missing = [s for s in self.speakers() if s not in ctx.agents]
        if missing:
            raise ValueError(f"the debate protocol needs agents {self.speakers()}, missing {missing}")
        if ctx.settings.beam_size != 1:
            raise ValueError("the debate protocol samples one answer per agent and round (beam_size must be 1)")

    async def _round(
        self, ctx: ConversationContext, turns: list[Turn], round_: int, scores: Mapping[str, float]
    ) -> list[Turn]:
        """Every agent's answer of ``round_``, generated in parallel and annotated in agent order.

        Indices are assigned in agent order before any request goes out, so seeds do not depend on which request
        finishes first, and belief classes are numbered in agent order.
        """
        first = len(turns)
        requests = []
        for offset, speaker in enumerate(self.speakers()):
            system = ctx.agents[speaker].system_prompt
            messages = agent_messages(turns, system, speaker, round_, self._wording(ctx.task), scores)
            requests.append(ctx.generate(speaker, messages, first + offset))
        answers = list(await asyncio.gather(*requests))
        for turn in answers:
            turn.role, turn.round = "debater", round_
        await ctx.annotate_all(answers)
        return answers

    def _wording(self, task: Task) -> Wording:
        return Wording(self.prompts, self.agents == 1, task.answer_instruction())

    @staticmethod
    async def _score(ctx: ConversationContext, answers: list[Turn], scorer: PeerScorer) -> dict[str, float]:
        """The verifier's score of each answer, keyed by turn index as JSON keys are strings."""
        values = await asyncio.gather(*(scorer(ctx.example, turn) for turn in answers))
        return {str(turn.index): float(value) for turn, value in zip(answers, values, strict=True)}


@dataclasses.dataclass(frozen=True)
class Wording:
    """What the moderator's revise requests say: the prompt style, self-reflection or not, the answer format."""

    style: PromptStyle
    alone: bool
    answer_format: str


def debate_messages(record: ConversationRecord, speaker: str, round_: int, task: Task) -> list[Message]:
    """The messages ``speaker`` was asked to answer ``round_`` from, rebuilt from a debate record.

    Training code uses this for the exact prompts without re-running the debate; ``DebateProtocol.run`` builds
    its requests with the same ``agent_messages``, so the two cannot drift apart. ``task`` gives the answer
    format the revise requests repeat.
    """
    args = record.protocol_args
    wording = Wording(args["prompts"], args["agents"] == 1, task.answer_instruction())
    system = record.system_prompts.get(speaker, "")
    scores = record.metadata.get("peer_scores", {})
    earlier = [turn for turn in record.turns if turn.round is None or turn.round < round_]
    return agent_messages(earlier, system, speaker, round_, wording, scores)


def agent_messages(
    turns: list[Turn], system: str, speaker: str, round_: int, wording: Wording, scores: Mapping[str, float]
) -> list[Message]:
    """``speaker``'s history before it answers ``round_``, as the agent sees it.

    The problem, then for each earlier round the agent's own answer (``assistant``) and the moderator's message
    quoting the others' answers of that round.

    Args:
        turns: the debate so far (turn 0 the problem, then the answers of rounds before ``round_``).
        system: the agent's system prompt; empty sends none.
        speaker: the agent asked.
        round_: the round it is asked to answer.
        wording: how the moderator words its revise requests.
        scores: a verifier's score per answer (turn index as a string), shown beside the answers that have one.
    """
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": turns[0].text})
    for earlier in range(round_):
        answers = [turn for turn in turns if turn.role == "debater" and turn.round == earlier]
        own = next((turn for turn in answers if turn.speaker == speaker), None)
        if own is None:
            raise ValueError(f"{speaker} gave no answer in round {earlier}, so it was never asked round {round_}")
        peers = [turn for turn in answers if turn.speaker != speaker]
        messages.append({"role": "assistant", "content": own.text})
        messages.append({"role": "user", "content": revise_request(peers, turns[0].text, wording, scores)})
    return messages


def revise_request(peers: list[Turn], problem: str, wording: Wording, scores: Mapping[str, float]) -> str:
    """The moderator's message before a later round: the other agents' answers, labelled, and what to do now."""
    if wording.alone:
        return f"Can you double check that your answer is correct? {wording.answer_format}"
    quoted = "\n\n".join(_quote(peer, wording.style, scores.get(str(peer.index))) for peer in peers)
    if wording.style == "du":
        return (
            f"These are the solutions to the problem from the other agents:\n\n{quoted}\n\nUsing the solutions "
            "from other agents as additional information, can you provide your answer to the problem? "
            f"{wording.answer_format}"
        )
    return (
        f"{quoted}\n\nWeigh your previous answer against the other agents' solutions above. If your answer is "
        "wrong, revise it; if it is right, keep it. Keep your reasoning simple and short. "
        f"{wording.answer_format}\n\nOnce again, the problem is: {problem}"
    )


def _quote(peer: Turn, style: PromptStyle, score: float | None) -> str:
    """One peer's answer in a fence, labelled with its speaker, with the verifier's score when there is one."""
    label = f"{peer.speaker}'s solution:" if style == "du" else f"{peer.speaker} solution:"
    quoted = f"{label}\n```\n{peer.text}\n```"
    if score is not None:
        quoted += f"\nReward associated with {peer.speaker}'s solution calculated by verifier: {score:g}"
    return quoted
