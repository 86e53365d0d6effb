r"""Find answers written in a LaTeX box (``\boxed{...}`` or ``\fbox{...}``), with balanced braces.

A regex cannot match nested braces (``\boxed{\frac{1}{2}}``), and the reference's greedy one-line regex ran past
the box into whatever followed it; this scanner counts braces instead. Shared by MATH and, later, GSM8K.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")


def iter_boxed(text: str) -> Iterator[tuple[int, str]]:
    """Yield (start offset, content) for each box with balanced braces, in order; unclosed boxes are skipped."""
    for match in _COMMAND.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            char = text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    yield match.start(), text[start:index]
                    break


def last_boxed(text: str) -> str | None:
    """The stripped content of the last box, or None when there is no box or it is empty."""
    contents = [content for _, content in iter_boxed(text)]
    if not contents:
        return None
    return contents[-1].strip() or None
