"""Coral's two-agent conversation: one agent asks, the other answers, they alternate until they agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coral.conversation.protocols.base import PROTOCOLS, Protocol, agent_view, latest_turn_of
from coral.records import ConversationRecord, StopReason, Turn

if TYPE_CHECKING:
    from coral.conversation.context import ConversationContext


@PROTOCOLS.register("coral")
class CoralProtocol(Protocol):
    """The Coral two-agent conversation (paper section 3; reference section 3).

    Turn 0 is the asker's templated question. The agents then alternate, the answerer first, for at most
    ``max_turns`` generated turns. After each turn the latest beliefs of both agents are compared; the
    conversation stops when both are valid and the task says they are the same answer.

    Args:
        asker: the speaker who opens the conversation (turn 0); the other agent answers first.
        posed: the asker sets the problem for its partner to solve ("I would like you to try and solve this math
            problem: ...", the reference's teacher-first opening) instead of asking for help with it ("I'm trying
            to solve this math problem: ...").
    """

    name = "coral"

    def __init__(self, asker: str = "student", posed: bool = False) -> None:
        self.asker = asker
        self.posed = posed

    def speakers(self) -> list[str]:
        """The reference's two agents: the teacher answers first unless it is the asker."""
        return ["teacher", "student"]

    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Alternate the two agents from the opening until they agree, a turn fails or ``max_turns`` is reached."""
        speakers = list(ctx.agents)
        if self.asker not in speakers or len(speakers) != 2:
            raise ValueError(f"the coral protocol needs two agents including {self.asker!r}, got {speakers}")
        answerer = next(s for s in speakers if s != self.asker)
        opening = ctx.task.opening_message(ctx.example, posed=self.posed)
        turns = [Turn(index=0, speaker=self.asker, text=opening, generated=False)]
        stop_reason: StopReason = "max_turns"
        for index in range(1, ctx.settings.max_turns + 1):
            speaker = answerer if turns[-1].speaker == self.asker else self.asker
            view = agent_view(ctx.agents[speaker].system_prompt, speaker, turns)
            turn = await ctx.next_turn(speaker, view, index)
            partner_turn = latest_turn_of(turns, self.asker if speaker == answerer else answerer)
            turns.append(turn)
            if turn.error is not None:
                stop_reason = "error"
                break
            for sibling in turn.siblings:  # recorded for training data (agreeing while wrong), never continued
                sibling.agreement = await ctx.agree(sibling, partner_turn)
            if await ctx.agree(turn, partner_turn):
                turn.agreement = True
                stop_reason = "agreement"
                break
        return ctx.record(self, turns, stop_reason)
