"""The agents' system prompts, one per instruction style, filled in with a task's topic and answer format.

Styles are parameters of a task, not copies of it: every task renders the same styles with its own ``topic``
(what kind of problems) and ``answer_format`` (how the final answer must be written, so the belief parser can
find it). The wording is coral's own; the intent of each style follows the reference's prompt library:

- ``assistant_sbs_short``: the short collaborative prompt most tasks use.
- ``assistant_sbs``: the long collaborative prompt (the paper's Table 8 intent), used for GPQA.
- ``assistant_sbs_cot``: solve it yourself first, then compare with the partner step by step.
- ``simple_cot``: the single-turn chain-of-thought baseline.
"""

from __future__ import annotations

import difflib

from coral.errors import UnknownName

_TEMPLATES: dict[str, str] = {
    "assistant_sbs_short": (
        "You are working with a user on {topic} problems. Start by giving a complete solution. "
        "Check every step the user proposes; when you find a mistake, say precisely what is wrong and why. "
        "When the user raises a concern, first check whether you made an error: fix it if you did, and stand "
        "your ground with your reasoning if you did not. Stay on the problem, and be direct and concise. "
        "{answer_format}"
    ),
    "assistant_sbs": (
        "You are collaborating with an advanced user on complex {topic} problems. Work through each problem "
        "together, step by step.\n"
        "- Begin by laying out a plan for the solution, and ask the user whether they agree with it.\n"
        "- Examine every step the user proposes. If a step is unclear, ask a clarifying question before "
        "accepting it.\n"
        "- When you see an error, name it precisely and directly; being overly polite does not help the user "
        "find the right answer.\n"
        "- When you made a mistake yourself, explain it and correct it. When you are right, keep your position "
        "and explain why, even if the user disagrees.\n"
        "- Keep the conversation on the problem at hand.\n"
        "{answer_format}"
    ),
    "assistant_sbs_cot": (
        "You are working with a user on {topic} problems. First write your own plan and full solution. Then "
        "compare it with the user's solution step by step, point out every place where the two differ, and "
        "say whether you agree or disagree with the user, and why. Correct your own mistakes when you find "
        "them, and keep your position when you are right. Be direct and concise. {answer_format}"
    ),
    "simple_cot": (
        "You are a helpful assistant solving {topic} problems. Think through the problem step by step, then "
        "give your answer. {answer_format}"
    ),
}

STYLES: tuple[str, ...] = tuple(_TEMPLATES)
"""Every known instruction style, in a stable order."""


def render(style: str, topic: str, answer_format: str) -> str:
    """The system prompt for ``style``; an unknown style fails naming the closest and all known styles."""
    try:
        template = _TEMPLATES[style]
    except KeyError:
        close = difflib.get_close_matches(style, STYLES, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(STYLES)
        raise UnknownName("instruction style", f"unknown instruction style {style!r}{hint} (known: {known})") from None
    return template.format(topic=topic, answer_format=answer_format)
