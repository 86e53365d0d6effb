"""Belief extraction: which answer does one turn commit to? Rules first, an LLM judge where rules find nothing.

The task's own parser (a boxed answer, "The correct answer is (B)") is free and exact, so by default the judge
is asked only about turns the rules cannot read. A judge failure is recorded as an error with no belief: the
reference turned a network failure into the string "Error: extraction network error" and then graded that
string, which the multiple-choice matcher read as answer "E" (reference 8.1.2, 8.1.8).
"""

from __future__ import annotations

from dataclasses import dataclass

from coral.backends.base import BackendError, ChatBackend, ChatRequest, Completion
from coral.backends.retry import RetryPolicy, Tries, call_with_retries, describe
from coral.records import BeliefMethod
from coral.sampling import SamplingParams
from coral.tasks.base import Example, Task

EXTRACTION_MODES: tuple[str, ...] = ("rules", "judge", "rules_then_judge")
"""``rules``: the task's parser only; ``judge``: the LLM judge only; ``rules_then_judge``: judge as fallback."""
JUDGE_RETRY = RetryPolicy(attempts=3, backoff_s=0.25)
"""The judge's default retries: a failed extraction is cheap to redo and costs no more than a turn's error."""


@dataclass(frozen=True)
class Extraction:
    """The belief of one turn and how it was found.

    ``method`` is "rule" when the task's parser found the belief, "judge" when the judge was asked (whatever it
    answered), and "none" when rules alone found nothing. ``error`` is set only when the judge call failed; the
    token counts are the judge's (0 for rules). ``reply`` is the judge's raw reply whenever it gave one, so a
    reply the task could not read is kept (compat metrics need it).
    """

    belief: str | None
    method: BeliefMethod
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reply: str | None = None


class BeliefExtractor:
    """Extracts beliefs for any task.

    Args:
        mode: one of ``EXTRACTION_MODES``.
        backend: the judge's backend; may be left None and set later (the conversation layer defaults it to the
            agents' backend), but must be set before a judge mode extracts.
        model: the judge model name passed to the backend.
        sampling: the judge's sampling; greedy and short, since the reply is one answer or "not sure yet".
        retry: how a failed judge call is retried (the same loop as the agents' turns).
    """

    def __init__(
        self,
        mode: str = "rules_then_judge",
        backend: ChatBackend | None = None,
        model: str | None = None,
        sampling: SamplingParams = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=32),
        retry: RetryPolicy = JUDGE_RETRY,
    ) -> None:
        if mode not in EXTRACTION_MODES:
            raise ValueError(f"unknown extraction mode {mode!r}; valid modes: {', '.join(EXTRACTION_MODES)}")
        self.mode = mode
        self.backend = backend
        self.model = model
        self.sampling = sampling
        self.retry = retry

    async def extract(
        self, task: Task, example: Example, text: str, seed: int | None = None, session_id: str | None = None
    ) -> Extraction:
        """The belief ``text`` commits to; ``seed`` makes the judge request reproducible.

        ``session_id`` lets the judge's engine reuse the prompt prefix (instructions and question) it saw for
        the same conversation's earlier turns.
        """
        found = self.by_rules(task, example, text)
        if found is not None:
            return found
        return await self.ask_judge(task, example, text, seed, session_id)

    def by_rules(self, task: Task, example: Example, text: str) -> Extraction | None:
        """The extraction when no judge is needed (the rules decided), else None: then ask ``ask_judge``.

        ``extract`` is these two steps; callers on a hot path use them directly so the judge's seed is derived
        only for turns the judge is actually asked about.
        """
        if self.mode == "judge":
            return None
        belief = task.parse_belief(text, example)
        if belief is not None:
            return Extraction(belief, "rule")
        return Extraction(None, "none") if self.mode == "rules" else None

    async def ask_judge(
        self, task: Task, example: Example, text: str, seed: int | None = None, session_id: str | None = None
    ) -> Extraction:
        """The judge's reading of ``text`` (method "judge"); a failed judge call is recorded as ``error``."""
        backend = self.backend
        if backend is None:
            raise ValueError(f"BeliefExtractor in mode {self.mode!r} needs a judge backend; set .backend first")
        sampling = self.sampling.with_seed(seed) if seed is not None else self.sampling
        request = ChatRequest(task.extraction_prompt(example, text), sampling, self.model, session_id=session_id)

        async def ask() -> Completion:
            completions = await backend.chat(request)
            if not completions:
                raise BackendError("the judge backend returned no completion")
            return completions[0]

        tries = Tries()
        try:
            reply = await call_with_retries(ask, self.retry, sampling.seed, tries)
        except Exception as exc:  # any backend failure is recorded, never raised and never a belief
            return Extraction(None, "judge", f"judge failed after {tries.attempts} attempt(s): {describe(exc)}")
        belief = task.parse_judge_output(reply.text, example)
        return Extraction(belief, "judge", None, reply.prompt_tokens, reply.completion_tokens, reply.text)
