"""The settings a run's conversations share, built once and passed whole to the runner and every context.

A new setting is one field here, read where it is used, instead of a field copied from the caller to the runner
to each conversation. The names are the library's own; the interaction module maps the command line's reference
spellings to them once (the README's table of option names lists both).
"""

from __future__ import annotations

from dataclasses import dataclass

from coral.backends.retry import RetryPolicy


@dataclass(frozen=True)
class RunSettings:
    """How every conversation of one run is run.

    Args:
        run_seed: the seed every request seed is derived from.
        config_hash: identifies the configuration that produced the records (stored on each).
        max_turns: most generated turns per conversation (turn 0, the opening message, not counted).
        concurrency: most conversations in flight at once.
        retry: retry policy for generation requests.
        beam_size: candidates per turn; above 1 the conversation is sampled as a tree (see coral.conversation.tree).
        expansion: which candidate continues (``random``, ``stratified``, ``diversity``).
        single_request_expansion: ask for the candidates in one request with ``n`` (one prefill) or one each.
        stop_grace_s: how long conversations in flight may still finish once the run is told to stop.
    """

    run_seed: int
    config_hash: str
    max_turns: int = 20
    concurrency: int = 100
    retry: RetryPolicy = RetryPolicy()
    beam_size: int = 1
    expansion: str = "random"
    single_request_expansion: bool = True
    stop_grace_s: float = 10.0
