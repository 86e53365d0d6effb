"""Benchmark 4, prefix reuse: of the prompt tokens 10-turn conversations send, how many does the engine recompute?

Every turn resends the whole conversation, so prompts grow each turn. An engine that keeps a conversation's keys
and values between turns recomputes only the new tail. Measured on the embedded engine (per-session prefix cache,
from each Completion's ``cached_prompt_tokens``), and on a vLLM server when one is given (automatic prefix
caching, from its Prometheus counters ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits``, in tokens).

Conversations use ordinary sampling (temperature 0.2, top-p 0.9, end-of-sequence honoured, at most ``tokens``
tokens a turn) and rule-based extraction, so only the agents' requests are counted.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from benchmarks.common import Check, Row, Section, repeat, stat, stopwatch
from benchmarks.workloads import (
    ConversationSpec,
    NeverAgreeMMLUPro,
    Tokens,
    TokenTally,
    run_conversations,
)
from coral.backends.embedded import EmbeddedBackend
from coral.backends.http import OpenAIHTTPBackend
from coral.backends.models import DEFAULT_MODEL
from coral.sampling import SamplingParams

TARGET_RECOMPUTED_SHARE = 0.30

QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
"""vLLM's prefix-cache counters in tokens (current name first, then the name before 0.9)."""


@dataclass(frozen=True)
class Sizes:
    """How much work one repeat does.

    Args:
        conversations: conversations (all in flight at once).
        turns: generated turns per conversation.
        tokens: most tokens per turn.
    """

    conversations: int
    turns: int = 10
    tokens: int = 64


QUICK = Sizes(conversations=4, tokens=16)
FULL = Sizes(conversations=16, tokens=48)


@dataclass(frozen=True)
class VLLMTarget:
    """A running vLLM OpenAI-compatible server: ``base_url`` such as ``http://host:8000/v1`` and a served model."""

    base_url: str
    model: str


@dataclass(frozen=True)
class Result:
    """Prompt tokens sent and recomputed (sent minus reused) over all requests of one run."""

    sent: int
    recomputed: int

    @property
    def share(self) -> float:
        return self.recomputed / self.sent


def spec(sizes: Sizes) -> ConversationSpec:
    sampling = SamplingParams(temperature=0.2, top_p=0.9, max_tokens=sizes.tokens)
    return ConversationSpec(sizes.conversations, sizes.turns, sampling, concurrency=sizes.conversations)


def _run(backend, model: str, sizes: Sizes, seed: int) -> Tokens:
    tally = TokenTally(backend)
    task = NeverAgreeMMLUPro()
    try:
        run_conversations(tally, model, task, spec(sizes), seed)
    finally:
        task.close()
    return tally.tokens


def measure_embedded(backend: EmbeddedBackend, sizes: Sizes, seed: int = 0) -> Result:
    """Prompt tokens sent vs recomputed, as the embedded engine reports them per completion."""
    tokens = _run(backend, DEFAULT_MODEL, sizes, seed)
    return Result(tokens.prompt, tokens.recomputed)


# ---------------------------------------------------------------------------------------------- vLLM
def metric_totals(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample name: value summed over label sets} (comments skipped)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            value = rest.rpartition("}")[2].split()
        else:
            name, *value = line.split()
        if value:
            totals[name] = totals.get(name, 0.0) + float(value[0])
    return totals


def prefix_counters(totals: dict[str, float]) -> tuple[float, float]:
    """(queried tokens, hit tokens) from vLLM's counters, whichever of their names the server exports."""
    for queries, hits in zip(QUERIES, HITS):
        for suffix in ("_total", ""):  # prometheus_client exposes counters with _total
            if queries + suffix in totals:
                return totals[queries + suffix], totals.get(hits + suffix, 0.0)
    raise ValueError(f"no vLLM prefix-cache counters among the server's metrics (looked for {', '.join(QUERIES)})")


def read_metrics(base_url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """The server's ``/metrics`` (next to its ``/v1``), summed by sample name."""
    root = base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=timeout_s) as response:
        return metric_totals(response.read().decode())


def measure_vllm(target: VLLMTarget, sizes: Sizes, seed: int = 0) -> Result:
    """The same conversations against vLLM; recomputed = queried - hit tokens over the run (counter deltas)."""
    before = prefix_counters(read_metrics(target.base_url))
    _run(OpenAIHTTPBackend(target.base_url, model=target.model), target.model, sizes, seed)
    after = prefix_counters(read_metrics(target.base_url))
    queried, hit = after[0] - before[0], after[1] - before[1]
    return Result(int(queried), int(queried - hit))


# ---------------------------------------------------------------------------------------------- report
def _rows(label: str, results: list[Result]) -> list[Row]:
    return [
        Row(f"{label}: prompt tokens sent", stat(results, lambda r: r.sent), "tokens", 0),
        Row(f"{label}: prompt tokens recomputed", stat(results, lambda r: r.recomputed), "tokens", 0),
        Row(f"{label}: recomputed / sent", stat(results, lambda r: r.share), "", 3),
    ]


def benchmark(sizes: Sizes, repeats: int, vllm: VLLMTarget | None = None) -> Section:
    """Recomputed share of prompt tokens on the embedded engine, and on vLLM when ``vllm`` is given."""
    section = Section("prefix", f"4. Prefix reuse ({sizes.turns}-turn conversations)")
    with stopwatch() as elapsed:
        backend = EmbeddedBackend(DEFAULT_MODEL)  # the default engine: float32, batch-invariant
        embedded = repeat(repeats, lambda i: measure_embedded(backend, sizes, seed=i))
        served = repeat(repeats, lambda i: measure_vllm(vllm, sizes, seed=i)) if vllm else []
    section.seconds = elapsed()
    section.rows += _rows("embedded engine", embedded)
    share = stat(embedded, lambda r: r.share)
    section.checks.append(
        Check("embedded engine: recomputed / sent prompt tokens", share.median, "<=", TARGET_RECOMPUTED_SHARE)
    )
    if served:
        section.rows += _rows(f"vLLM {vllm.model}", served)
    else:
        section.rows.append(Row("vLLM", "not run (no GPU here; pass --vllm-url and --vllm-model)"))
    section.notes += [
        (
            f"{sizes.conversations} MMLU-Pro conversations at once (agreement off), {sizes.turns} turns of at most "
            f"{sizes.tokens} tokens, temperature 0.2, top-p 0.9; every turn resends the whole conversation, with the "
            "conversation's session id."
        ),
        (
            "Embedded: sent = sum of prompt_tokens, recomputed = sum of (prompt_tokens - cached_prompt_tokens) over "
            "every Completion. vLLM: sent = delta of vllm:prefix_cache_queries, recomputed = that minus the delta of "
            "vllm:prefix_cache_hits (vLLM caches whole blocks, so a partial last block is always recomputed)."
        ),
    ]
    return section
