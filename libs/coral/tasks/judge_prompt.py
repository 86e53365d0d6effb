"""The judge's extraction prompt, shared by every task: a real system message plus the task's sections.

The reference meant to put its instructions in front of the user message but built the text in a ``StringIO``
whose ``write`` overwrote them (reference 8.1.5). Here the instructions are a proper system message, and each
task supplies only its sections (question, options, story) and its closing instruction.
"""

from __future__ import annotations

from coral.tasks.base import NOT_SURE

JUDGE_SYSTEM = (
    "You help identify the intention of responses in a conversation about a problem. Given the problem and one "
    "response, say which answer the response submits as its final answer. Do not solve the problem yourself "
    f'and do not judge whether the answer is right. If the response commits to no explicit answer, say "{NOT_SURE}".'
)


def judge_messages(sections: list[tuple[str, str]], response: str, instruction: str) -> list[dict[str, str]]:
    """System + user messages: each (heading, body) section, then the response, then the closing instruction."""
    parts = [f"{heading}\n{body}" for heading, body in sections]
    parts.append(f"The response to extract the answer from:\n{response}")
    parts.append(instruction)
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
    ]
