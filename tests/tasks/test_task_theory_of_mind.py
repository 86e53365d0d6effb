"""Golden tests of the short-answer ToM machinery, corrected and compat (reference 3.3, 4 and 8.1.4) side by side."""

from __future__ import annotations

import pytest

from coral.tasks import Example
from coral.tasks.explore_tom import ExploreToMTask
from coral.tasks.hi_tom import HiToMTask
from coral.tasks.theory_of_mind import normalize_answer, reference_match, reference_normalize, same_answer


def tom(answer: str) -> Example:
    return Example(id="x", task="explore_tom", question="q?", answer=answer, source={"story": "s."})


CORRECTED, COMPAT = ExploreToMTask(), ExploreToMTask(compat=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Short Answer: The leather bag.", "leather bag"),
        ("The final answer is: the Green_Drawer.", "green drawer"),
        ("**Short Answer:** in the kitchen", "in kitchen"),
        ("An apple", "apple"),
        ("Mother's  anthem", "mother's anthem"),  # articles go as whole words only
        ("She doesn’t know about it!", "she doesn't know about it"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_reference_normalize_quirks() -> None:
    assert reference_normalize("Short Answer: The leather bag.") == "lear bag"
    assert reference_normalize("mother") == "mor"
    assert reference_normalize("\nkitchen") == ""  # a leading newline gives the empty (valid) belief
    assert reference_normalize("Short Answer: the green drawer", underscores=True) == "green_drawer"
    assert reference_normalize("kitchen. ") == "kitchen."  # the '.' is stripped before the spaces


def test_leather_is_not_damaged() -> None:
    text = "Beth left first, so Short Answer: leather bag"
    assert CORRECTED.parse_belief(text, tom("leather bag")) == "leather bag"
    assert COMPAT.parse_belief(text, tom("leather bag")) == "lear bag"
    assert CORRECTED.parse_judge_output("The leather bag", tom("leather bag")) == "leather bag"
    assert COMPAT.parse_judge_output("The leather bag", tom("leather bag")) == "lear bag"


@pytest.mark.asyncio
async def test_leather_grading() -> None:
    assert await CORRECTED.grade("leather bag", tom("leather bag")) is True
    assert await COMPAT.grade("lear bag", tom("leather bag")) is False  # the damaged belief misses the raw gold
    assert await COMPAT.grade("bag", tom("leather bag")) is True  # ... while any substring passes


@pytest.mark.asyncio
async def test_empty_prediction() -> None:
    example = tom("wooden crate")
    assert await CORRECTED.grade("", example) is False
    assert await COMPAT.grade("", example) is True
    assert CORRECTED.parse_judge_output("\nwooden crate", example) == "wooden crate"
    assert COMPAT.parse_judge_output("\nwooden crate", example) == ""


@pytest.mark.asyncio
async def test_not_sure_against_knows_about() -> None:
    example = tom("knows about it")
    assert await COMPAT.grade("not sure yet", example) is True  # reference rule 2: no " not " inside
    assert await CORRECTED.grade("not sure yet", example) is False
    assert await CORRECTED.grade("he knows about it", example) is True
    assert await CORRECTED.grade("he does not know about it", example) is False
    assert await CORRECTED.grade("kitchen", example) is False
    assert await COMPAT.grade("kitchen", example) is True
    negative = tom("does not know about it")
    assert await CORRECTED.grade("Dana doesn't know about it", negative) is True
    assert await CORRECTED.grade("knows about it", negative) is False
    assert await COMPAT.grade("she does not know", negative) is True


@pytest.mark.asyncio
async def test_yes_no() -> None:
    yes, no = tom("yes"), tom("no")
    assert await CORRECTED.grade("yes, she does", yes) is True
    assert await CORRECTED.grade("Yes.", yes) is True
    assert await CORRECTED.grade("no", yes) is False
    assert await CORRECTED.grade("north", no) is False
    assert await COMPAT.grade("yes, she does", yes) is True
    assert await COMPAT.grade("north", no) is True  # reference rule 4: "no" is inside "north"


@pytest.mark.asyncio
async def test_kitchen_with_and_without_preposition() -> None:
    kitchen = tom("kitchen")
    assert await CORRECTED.grade("in the kitchen", kitchen) is True
    assert await CORRECTED.grade("inside the kitchen", kitchen) is True
    assert await CORRECTED.grade("garden", kitchen) is False
    assert await COMPAT.grade(reference_normalize("in the kitchen"), kitchen) is True  # "kitchen" is a substring
    assert await CORRECTED.agree("in the kitchen", "kitchen", kitchen) is True
    assert await COMPAT.agree("in kitchen", "kitchen", kitchen) is False  # reference agreement: string equality


@pytest.mark.asyncio
async def test_equivalence_is_symmetric() -> None:
    pairs = [("in the kitchen", "kitchen"), ("yes", "yes, she does"), ("knows about it", "she knows about it")]
    for a, b in pairs:
        assert same_answer(a, b) and same_answer(b, a)
        assert await CORRECTED.equivalent(a, b, tom("x")) and await CORRECTED.equivalent(b, a, tom("x"))
    assert not same_answer("not sure yet", "not sure yet")
    assert not same_answer("", "")
    assert not same_answer("yes", "knows about it")


def test_reference_match_rules_in_order() -> None:
    assert reference_match("she does not know", "does not know about it")  # rule 1
    assert reference_match("anything", "knows about it")  # rule 2
    assert reference_match("yes. she does", "yes")  # rule 3
    assert reference_match("kit", "kitchen")  # rule 4, both ways
    assert not reference_match("garden", "kitchen")


@pytest.mark.parametrize(
    ("text", "belief"),
    [
        ("I think it's the crate.\nShort Answer: leather bag", "leather bag"),
        ("Short Answer: kitchen\n\nOn reflection, Short Answer: **garden**\nThanks!", "garden"),
        ("short answer: Yes", "yes"),
        ("No answer yet.", None),
        ("Short Answer: not sure yet", None),
        ("Short Answer: Unknown.", None),
        ("Short Answer:\n", None),
    ],
)
def test_parse_belief(text: str, belief: str | None) -> None:
    assert CORRECTED.parse_belief(text, tom("x")) == belief


@pytest.mark.parametrize(
    ("reply", "belief"),
    [
        ("Short Answer: the kitchen", "kitchen"),
        ("The final answer is wooden crate.\nBecause ...", "wooden crate"),
        ("not sure yet", None),
        ("Not sure yet.", None),
        ("", None),
    ],
)
def test_parse_judge_output(reply: str, belief: str | None) -> None:
    assert CORRECTED.parse_judge_output(reply, tom("x")) == belief


def test_compat_judge_output_follows_the_reference() -> None:
    assert COMPAT.parse_judge_output("Short Answer: The final answer is Kitchen.", tom("x")) == "kitchen"
    assert COMPAT.parse_judge_output("I am NOT SURE YET", tom("x")) is None
    hi_tom = HiToMTask(compat=True)
    assert hi_tom.parse_judge_output("the green drawer", tom("x")) == "green_drawer"


def test_extraction_prompt_and_instruction() -> None:
    example = Example(id="x", task="explore_tom", question="Where is it?", answer="a", source={"story": " A story. "})
    messages = CORRECTED.extraction_prompt(example, "Short Answer: box")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "Story: A story.\nQuestion: Where is it?" in user and "Short Answer: box" in user
    assert user.endswith('Extract the final answer which should be less than five words, or say "not sure yet".')
    system = CORRECTED.instruction("assistant_sbs_short")
    assert "theory-of-mind reasoning" in system
    assert system.endswith('Put your final answer to the question at the end as "Short Answer: {answer}"')
