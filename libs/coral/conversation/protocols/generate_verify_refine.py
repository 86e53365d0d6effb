"""MALT's generator -> verifier -> refiner (Motwani et al.; training.md section 2), with MV@k over passes.

Each pass: the generator answers the question, the verifier critiques that answer (a critique is not an answer:
no belief is extracted from it and it counts in no accuracy), and the refiner writes the final answer from the
question, the initial answer and the critique. ``passes`` independent passes are voted on (MV@3 in the paper).

With ``branching`` n > 1 every generator answer gets n critiques and every critique n refinements: MALT's search
tree, ``passes`` x n x n leaves (27 with passes = n = 3), whose node values ``coral.synthesis.malt`` computes for
training. The vote is then over every leaf. Turns are generated level by level (every generator answer, then
every critique, then every refinement, each level in parallel). The siblings of one parent (the passes, a
parent's n critiques or refinements) come from one request for n completions, so an engine reads their shared
prompt once; indices and seeds are assigned in tree order before the requests go out, so reruns do not depend on
which request finishes first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from coral.backends.base import Message
from coral.conversation.protocols.base import MODERATOR, PROTOCOLS, Protocol
from coral.conversation.voting import majority_vote
from coral.records import ConversationRecord, StopReason, TieRule, Turn

if TYPE_CHECKING:
    from coral.conversation.context import ConversationContext
    from coral.tasks.base import Task

GENERATOR, VERIFIER, REFINER = "generator", "verifier", "refiner"

VERIFIER_SYSTEM = (
    "You are a careful verifier of {topic} solutions. You check a proposed solution; you do not write a new one."
)
REFINER_SYSTEM = "You are an expert problem solver that refines {topic} solutions based on feedback."
"""The paper's refiner system prompt ("... refines math solutions based on feedback") with the task's topic."""


def generator_messages(system: str, question: str, answer_format: str) -> list[Message]:
    """What the generator sees: the question, a plan-execute-check request and the answer format."""
    request = (
        f"{question}\n\nSolve it step by step: note the key information and what is asked, make a plan, carry it "
        f"out, then double-check the result. {answer_format}"
    )
    return _with_system(system, request)


def verifier_messages(system: str, question: str, answer: str) -> list[Message]:
    """What the verifier sees: the question and the initial answer, and a request to critique it."""
    request = (
        f"Question:\n{question}\n\nInitial Answer:\n{answer}\n\nAs a verifier, critically evaluate the initial "
        "answer: check every step and calculation, say precisely which step is wrong and why, and what that step "
        "should give instead. If every step is right, say so. Do not write a complete new solution."
    )
    return _with_system(system, request)


def refiner_messages(system: str, question: str, answer: str, feedback: str, answer_format: str) -> list[Message]:
    """What the refiner sees: the question, the initial answer and the verifier's feedback (empty in G+R)."""
    request = (
        f"Question:\n{question}\n\nInitial Answer:\n{answer}\n\nFeedback:\n{feedback}\n\nUse the feedback where "
        f"it is right and ignore it where it is wrong, and write the refined solution. {answer_format}"
    )
    return _with_system(system, request)


def _with_system(system: str, request: str) -> list[Message]:
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": request}]


def role_messages(record: ConversationRecord, index: int, answer_format: str) -> list[Message]:
    """The messages turn ``index`` of a generate-verify-refine record was generated from, rebuilt from the record.

    Training data builders use this (the prompt of every node) instead of re-running the protocol; ``run`` builds
    its requests with the same functions, so the two cannot drift apart.
    """
    turn = record.turns[index]
    system = record.system_prompts.get(turn.speaker, "")
    question = record.turns[0].text
    parent = record.turns[_parent(turn)]
    if turn.role == GENERATOR:
        return generator_messages(system, question, answer_format)
    if turn.role == VERIFIER:
        return verifier_messages(system, question, parent.text)
    if parent.role == VERIFIER:
        return refiner_messages(system, question, record.turns[_parent(parent)].text, parent.text, answer_format)
    return refiner_messages(system, question, parent.text, "", answer_format)  # G+R: no verifier ran


def _parent(turn: Turn) -> int:
    if turn.parent is None:
        raise ValueError(f"turn {turn.index} ({turn.role}) names no parent turn")
    return turn.parent


@PROTOCOLS.register("generate_verify_refine")
class GenerateVerifyRefine(Protocol):
    """Generator -> verifier -> refiner passes and a majority vote over the refiners' answers (MALT).

    Args:
        passes: independent generator answers (k of MV@k; 3 in the paper). 1: a single G->V->R chain.
        branching: critiques per generator answer and refinements per critique. 1: one chain per pass (inference);
            n: MALT's training tree, with ``passes`` = n for the paper's n^3 leaves.
        verify: False gives the paper's G+R ablation: no verifier runs and the refiner gets an empty feedback.
        tie_rule: how a vote with several answers tied is decided (``expected``, ``first_agent``, ``random``).
    """

    name = "generate_verify_refine"

    def __init__(self, passes: int = 3, branching: int = 1, verify: bool = True, tie_rule: TieRule = "expected"):
        if passes < 1 or branching < 1:
            raise ValueError(f"passes and branching must be >= 1, got {passes} and {branching}")
        self.passes = passes
        self.branching = branching
        self.verify = verify
        self.tie_rule = tie_rule

    def speakers(self) -> list[str]:
        """One agent per role (they may run one model, as in MALT's data generation, or three)."""
        return [GENERATOR, VERIFIER, REFINER] if self.verify else [GENERATOR, REFINER]

    def instruction(self, speaker: str, task: Task) -> str | None:
        """The generator gets the task's chain-of-thought prompt; the verifier and refiner their role prompts."""
        if speaker == VERIFIER:
            return VERIFIER_SYSTEM.format(topic=task.topic)
        if speaker == REFINER:
            return REFINER_SYSTEM.format(topic=task.topic)
        return task.instruction("simple_cot")

    @property
    def max_turns(self) -> int:
        """Every node of the tree: passes x (1 + b + b^2) with a verifier, passes x (1 + b) without."""
        per_pass = 1 + self.branching + self.branching**2 if self.verify else 1 + self.branching
        return self.passes * per_pass

    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Generate the tree level by level, grade the answering turns and vote over the refiners' answers."""
        question = Turn(index=0, speaker=MODERATOR, text=ctx.task.opening_message(ctx.example, posed=True),
                        generated=False, role="question")
        turns = [question]
        answer_format = ctx.task.answer_instruction()
        system = {name: agent.system_prompt for name, agent in ctx.agents.items()}
        generators = await self._level(ctx, turns, GENERATOR, [question], self.passes,
                                       lambda _: generator_messages(system[GENERATOR], question.text, answer_format))
        parents = generators
        if self.verify:
            parents = await self._level(ctx, turns, VERIFIER, generators, self.branching,
                                        lambda g: verifier_messages(system[VERIFIER], question.text, g.text))
        refiners = await self._level(
            ctx, turns, REFINER, parents, self.branching,
            lambda p: refiner_messages(system[REFINER], question.text, _initial(turns, p).text,
                                       p.text if self.verify else "", answer_format))
        stop_reason: StopReason = "error" if any(t.error is not None for t in turns) else "completed"
        record = ctx.record(self, turns, stop_reason, majority_vote(refiners, self.tie_rule, self._rng(ctx)))
        if self.tie_rule == "random":
            record.metadata["vote_seed"] = ctx.seed("vote")
        return record

    async def _level(self, ctx: ConversationContext, turns: list[Turn], role: str, parents: list[Turn], n: int,
                     messages_for: Callable[[Turn], list[Message]]) -> list[Turn]:
        """``n`` turns of ``role`` for each parent that did not fail, from one request per parent, all at once."""
        usable = [p for p in parents if p.error is None]
        first = len(turns)
        requests = [ctx.generate_siblings(role, messages_for(p), list(range(first + i * n, first + (i + 1) * n)))
                    for i, p in enumerate(usable)]
        level = [turn for siblings in await asyncio.gather(*requests) for turn in siblings]
        for turn in level:
            parent = usable[(turn.index - first) // n]
            turn.role, turn.parent, turn.carries_answer = role, parent.index, role != VERIFIER
            turn.round = turn.index - first if parent.round is None else parent.round  # a generator starts a pass
        await ctx.annotate_all(level)
        turns.extend(level)
        return level

    def _rng(self, ctx: ConversationContext) -> random.Random | None:
        """The seeded generator a ``random`` tie rule picks with (its seed is recorded in the metadata)."""
        return random.Random(ctx.seed("vote")) if self.tie_rule == "random" else None


def _initial(turns: list[Turn], parent: Turn) -> Turn:
    """The generator answer a refiner refines: its parent's parent (its parent itself in G+R)."""
    return parent if parent.role == GENERATOR else turns[_parent(parent)]
