"""What the short-answer theory-of-mind tasks (ExploreToM, Hi-ToM) share: normalisation, parsing and matching.

Agents end with "Short Answer: {answer}"; a belief is that answer, normalised. Two matchers exist:

- corrected (default): gold and beliefs are normalised the same way (lowercase, no articles as whole words,
  underscores as spaces); an empty or "not sure" belief is never correct; yes/no golds compare the first word;
  "knows about it" / "does not know about it" golds need a belief about knowing with the same negation;
  anything else must match exactly, or after dropping a leading preposition ("in the kitchen" == "kitchen").
  Grading and agreement use this one symmetric relation.
- compat (``compat=True``): the reference's observable behaviour (reference 3.3 and 4). Its normaliser deletes
  every "the" substring ("leather" -> "lear"), its matcher compares the belief with the raw gold by ordered
  rules ending in a two-way substring test (an empty belief is always correct, "not sure yet" passes every
  "knows about" gold), and Hi-ToM beliefs get underscores for spaces (reference 8.1.4).
"""

from __future__ import annotations

import re
import string
from typing import ClassVar

from coral.tasks.base import NOT_SURE, Example, Task
from coral.tasks.judge_prompt import judge_messages
from coral.tasks.parsing import PARSE_WINDOW, reply_head, turn_tail

ANSWER_FORMAT = 'Put your final answer to the question at the end as "Short Answer: {answer}"'
EXTRACTION_INSTRUCTION = f'Extract the final answer which should be less than five words, or say "{NOT_SURE}".'
UNSURE = frozenset({"not sure", NOT_SURE, "unknown"})
"""Normalised answers that commit to nothing."""

_MARKER = re.compile(r"short answer\s*:", re.IGNORECASE)
_PREFIXES = re.compile(r"^(?:(?:short answer|(?:the\s+)?final answer(?:\s+is)?)\s*:?[\W_]*)+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_EDGES = string.punctuation + string.whitespace + "“”‘’"
_LEADING_PREPOSITION = re.compile(r"^(?:in|on|at|inside(?:\s+of)?|into)\s+")
_YES_NO = re.compile(r"^(yes|no)\b")
_KNOWING = re.compile(r"\bknow|\b(?:un)?aware\b")
_NEGATION = re.compile(r"\b(?:not|no|never|nothing|unaware)\b|n't\b")
_REFERENCE_PATTERN = re.compile(r"(?:Short Answer: (?:The final answer is )?|The final answer is )?(.*)")


def normalize_answer(text: str) -> str:
    """Lowercase, no answer prefix, no articles (whole words only), no edge punctuation, single spaces."""
    text = text.lower().replace("’", "'").replace("_", " ")
    text = " ".join(text.split()).strip(_EDGES)
    text = _PREFIXES.sub("", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()).strip(_EDGES)


def same_answer(a: str, b: str) -> bool:
    """The corrected, symmetric match between two answers; "not sure" and empty answers match nothing.

    An answer longer than a parser ever reads (``PARSE_WINDOW``) is no short answer: it equals only itself, and
    costs no normalisation.
    """
    if len(a) > PARSE_WINDOW or len(b) > PARSE_WINDOW:
        return a == b
    a, b = normalize_answer(a), normalize_answer(b)
    if not a or not b or a in UNSURE or b in UNSURE:
        return False
    if a == b or _LEADING_PREPOSITION.sub("", a) == _LEADING_PREPOSITION.sub("", b):
        return True
    if _KNOWING.search(a) and _KNOWING.search(b):  # "knows about it" vs "she does not know about it"
        return bool(_NEGATION.search(a)) == bool(_NEGATION.search(b))
    yes_no_a, yes_no_b = _YES_NO.match(a), _YES_NO.match(b)
    return yes_no_a is not None and yes_no_b is not None and yes_no_a.group(1) == yes_no_b.group(1)


def reference_normalize(text: str, underscores: bool = False) -> str:
    """The reference's ToM normaliser: first line, one prefix off, lowercase, every "the" substring deleted."""
    match = _REFERENCE_PATTERN.match(text)
    answer = (match.group(1) if match else "").lower().replace("the", "").rstrip(".").strip()
    return answer.replace(" ", "_") if underscores else answer


def reference_match(prediction: str, target: str) -> bool:
    """The reference's ExploreTOMMatchEvaluator: ordered rules on the normalised belief and the raw gold."""
    if "does not know" in target and " not " in prediction:
        return True
    if "knows about" in target[:11] and " not " not in prediction:
        return True
    if target in ("yes", "no") and target in (prediction.split(",")[0], prediction.split(".")[0]):
        return True
    return prediction in target or target in prediction


class ShortAnswerTask(Task):
    """A story, a question and a short free-text answer.

    Subclasses write ``load`` and put the story in ``Example.source["story"]``.

    Args:
        compat: reproduce the reference's normalisation, matcher and string-equality agreement.
    """

    topic = "theory-of-mind reasoning"
    answer_format = ANSWER_FORMAT
    reference_underscores: ClassVar[bool] = False
    """Compat mode only: the reference's Hi-ToM extractor wrote beliefs with underscores for spaces."""

    def story(self, example: Example) -> str:
        """The story, without outer whitespace (Hi-ToM stories end with a blank line)."""
        return str(example.source.get("story", "")).strip()

    def opening_message(self, example: Example, posed: bool = False) -> str:
        # the reference's two wordings, verbatim (the posed one has a space before its line break)
        lead = (
            "I would like you to try to answer a question based on the following story: \n"
            if posed
            else "I'm trying to answer this question based on the following story:\n"
        )
        return f"{lead}Story: {self.story(example)}\nQuestion: {example.question}"

    def extraction_prompt(self, example: Example, text: str) -> list[dict[str, str]]:
        story_and_question = f"Story: {self.story(example)}\nQuestion: {example.question}"
        return judge_messages([("The original story and question:", story_and_question)], text, EXTRACTION_INSTRUCTION)

    def parse_belief(self, text: str, example: Example) -> str | None:
        """The first line after the last "Short Answer:", normalised; None if absent, empty or unsure."""
        text = turn_tail(text)
        markers = list(_MARKER.finditer(text))
        if not markers:
            return None
        line = text[markers[-1].end() :].strip().split("\n", 1)[0]
        belief = reference_normalize(line, self.reference_underscores) if self.compat else normalize_answer(line)
        return None if not belief or normalize_answer(belief) in UNSURE else belief

    def parse_judge_output(self, text: str, example: Example) -> str | None:
        """The judge's first line, normalised; None for "not sure yet".

        Compat mode keeps the reference's quirks: a reply starting with a newline is the empty belief, which the
        reference counted as a valid answer.
        """
        text = reply_head(text)
        if self.compat:
            return None if NOT_SURE in text.lower() else reference_normalize(text, self.reference_underscores)
        lines = text.strip().splitlines()
        belief = normalize_answer(lines[0]) if lines else ""
        return None if not belief or belief in UNSURE or NOT_SURE in belief else belief

    async def grade(self, belief: str, example: Example) -> bool:
        if self.compat:
            return reference_match(belief, example.answer)
        return same_answer(belief, example.answer)

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        return same_answer(belief_a, belief_b)
