"""What every belief parser shares: how much of a model's text it reads, and where the text says "not sure yet".

Model output is untrusted: a turn may be megabytes of spaces, braces or repeated answer phrases. Every parser
reads a bounded window of it with linear-time scans, so none can hold the event loop for more than a few
milliseconds whatever it is sent.
"""

from __future__ import annotations

import re

from coral.tasks.base import NOT_SURE

PARSE_WINDOW = 16_384
"""Characters a parser reads: the end of an agent's turn, where the final answer is stated, and the start of a
judge's reply, which answers first (in 32 tokens by default). About 4,000 tokens, so a turn within the usual
1,024-token budget is read whole; an answer stated earlier than that in a longer turn is left to the judge."""

_UNSURE = re.compile(re.escape(NOT_SURE), re.IGNORECASE)


def turn_tail(text: str) -> str:
    """The part of an agent's turn that its belief parser reads: the last ``PARSE_WINDOW`` characters."""
    return text[-PARSE_WINDOW:]


def reply_head(text: str) -> str:
    """The part of a judge's reply that its parser reads: the first ``PARSE_WINDOW`` characters."""
    return text[:PARSE_WINDOW]


def unsure_at(text: str) -> int:
    """The offset in ``text`` where it first says "not sure yet" (in any case), or -1.

    Searching ``text.lower()`` instead would give offsets in another string: lowercasing changes the length of
    some characters ("İ" becomes two), so they could not be compared with a match's offset in ``text``.
    """
    match = _UNSURE.search(text)
    return -1 if match is None else match.start()
