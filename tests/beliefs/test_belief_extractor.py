from __future__ import annotations

import pytest

from coral.backends import BackendError, Message, ScriptedBackend
from coral.backends.retry import RetryPolicy
from coral.beliefs import EXTRACTION_MODES, BeliefExtractor, Extraction
from coral.sampling import SamplingParams
from coral.tasks import Example, MathTask, MMLUProTask

MATH = MathTask()
MATH_EXAMPLE = Example(id="m", task="math", question="What is $1+1$?", answer="2")
MMLU = MMLUProTask()
MMLU_EXAMPLE = Example(id="q", task="mmlu_pro", question="Pick one.", answer="E", choices=tuple("abcdefghij"))


class ScriptedJudge(ScriptedBackend):
    """Answers each request with the next scripted item: a reply text, or an exception to raise."""

    def __init__(self, *script: str | Exception) -> None:
        items = list(script)
        super().__init__(lambda messages, sampling: items.pop(0), usage=(120, 7))

    @property
    def requests(self) -> list[tuple[list[Message], SamplingParams, str | None]]:
        return [(call.messages, call.sampling, call.model) for call in self.calls]


def test_modes_and_validation() -> None:
    assert EXTRACTION_MODES == ("rules", "judge", "rules_then_judge")
    with pytest.raises(ValueError, match="rules, judge, rules_then_judge"):
        BeliefExtractor(mode="llm")


@pytest.mark.asyncio
async def test_rules_mode() -> None:
    extractor = BeliefExtractor(mode="rules")
    assert await extractor.extract(MATH, MATH_EXAMPLE, r"It is $\boxed{2}$.") == Extraction("2", "rule", None, 0, 0)
    assert await extractor.extract(MATH, MATH_EXAMPLE, "Still thinking.") == Extraction(None, "none", None, 0, 0)


@pytest.mark.asyncio
async def test_rules_then_judge_skips_the_judge_when_rules_succeed() -> None:
    judge = ScriptedJudge(r"$\boxed{2}$")
    extractor = BeliefExtractor(backend=judge, model="judge-model")
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "The correct answer is (C).")
    assert result == Extraction("C", "rule", None, 0, 0)
    assert judge.requests == []

    judge = ScriptedJudge("(B)")
    extractor = BeliefExtractor(backend=judge, model="judge-model")
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "I lean towards the second option.", seed=17)
    assert result == Extraction("B", "judge", None, 120, 7, "(B)")
    ((messages, sampling, model),) = judge.requests
    assert model == "judge-model"
    assert sampling == SamplingParams(temperature=0.0, top_p=1.0, max_tokens=32, seed=17)
    assert messages == MMLU.extraction_prompt(MMLU_EXAMPLE, "I lean towards the second option.")


@pytest.mark.asyncio
async def test_judge_mode_always_asks_the_judge() -> None:
    judge = ScriptedJudge(r"The answer is $\boxed{3}$.", "not sure yet")
    extractor = BeliefExtractor(mode="judge", backend=judge)
    first = await extractor.extract(MATH, MATH_EXAMPLE, r"Rules would say $\boxed{2}$.")
    assert (first.belief, first.method) == ("3", "judge")
    second = await extractor.extract(MATH, MATH_EXAMPLE, "Let me think.")
    assert second == Extraction(None, "judge", None, 120, 7, "not sure yet")
    assert judge.requests[0][1].seed is None  # no seed given, the configured sampling is sent as is


@pytest.mark.asyncio
async def test_an_unreadable_judge_reply_is_kept() -> None:
    # the reference kept such a reply as the belief "Error: <reply>" (reference 3.3); coral keeps no belief but
    # records the reply, so compat metrics can rebuild the reference's belief string
    judge = ScriptedJudge("I think it is the second one", r"\boxed{2}")
    extractor = BeliefExtractor(mode="judge", backend=judge)
    letter = await extractor.extract(MMLU, MMLU_EXAMPLE, "Hmm.")
    assert letter == Extraction(None, "judge", None, 120, 7, "I think it is the second one")
    assert (await extractor.extract(MATH, MATH_EXAMPLE, "Hmm.")).reply == r"\boxed{2}"


@pytest.mark.asyncio
async def test_judge_failure_is_an_error_never_a_belief() -> None:
    judge = ScriptedJudge(*[BackendError("extraction network error")] * 3)
    extractor = BeliefExtractor(mode="judge", backend=judge, retry=RetryPolicy(attempts=3, backoff_s=0.001))
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "Error: extraction network error")
    assert result.belief is None and result.method == "judge"
    assert result.error is not None and "extraction network error" in result.error and "3 attempt" in result.error
    assert (result.prompt_tokens, result.completion_tokens, result.reply) == (0, 0, None)
    assert len(judge.requests) == 3


@pytest.mark.asyncio
async def test_judge_retries_then_succeeds() -> None:
    judge = ScriptedJudge(RuntimeError("connection reset"), "(E)")
    extractor = BeliefExtractor(mode="rules_then_judge", backend=judge, retry=RetryPolicy(backoff_s=0.001))
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "Hmm.")
    assert result == Extraction("E", "judge", None, 120, 7, "(E)")
    assert len(judge.requests) == 2


@pytest.mark.asyncio
async def test_non_retryable_error_stops_at_once() -> None:
    judge = ScriptedJudge(BackendError("bad request", retryable=False), "(A)")
    extractor = BeliefExtractor(mode="judge", backend=judge, retry=RetryPolicy(backoff_s=0.001))
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "Hmm.")
    assert result.belief is None and result.error is not None and "bad request" in result.error
    assert len(judge.requests) == 1


@pytest.mark.asyncio
async def test_judge_modes_need_a_backend_at_extract_time() -> None:
    extractor = BeliefExtractor(mode="rules_then_judge")  # allowed: the conversation layer sets .backend later
    assert (await extractor.extract(MATH, MATH_EXAMPLE, r"$\boxed{2}$")).belief == "2"
    with pytest.raises(ValueError, match="needs a judge backend"):
        await extractor.extract(MATH, MATH_EXAMPLE, "no box")
    extractor.backend = ScriptedJudge(r"$\boxed{2}$")
    assert (await extractor.extract(MATH, MATH_EXAMPLE, "no box")).belief == "2"


@pytest.mark.asyncio
async def test_the_judge_retries_in_the_shared_loop_and_counts_every_request() -> None:
    """The judge's policy is a RetryPolicy, and a network backend that gave up after its own retries counts as all
    the requests it sent (the old loop said "1 attempt" for them)."""
    judge = ScriptedJudge(*[RuntimeError("reset")] * 3)
    extractor = BeliefExtractor(mode="judge", backend=judge, retry=RetryPolicy(attempts=2, backoff_s=0.001))
    result = await extractor.extract(MMLU, MMLU_EXAMPLE, "Hmm.")
    assert result.error == "judge failed after 2 attempt(s): RuntimeError: reset" and len(judge.requests) == 2

    gave_up = BackendError("http://judge: gave up after 4 attempts: HTTP 503", retryable=False, attempts=4)
    judge = ScriptedJudge(gave_up, "(A)")
    result = await BeliefExtractor(mode="judge", backend=judge).extract(MMLU, MMLU_EXAMPLE, "Hmm.")
    assert result.error == f"judge failed after 4 attempt(s): BackendError: {gave_up}" and len(judge.requests) == 1
