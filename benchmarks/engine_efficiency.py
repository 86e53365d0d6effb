"""Benchmark 2, engine limit vs conversations: how much of the embedded engine's throughput coral keeps.

(b) Conversations: ``conversations`` two-agent MMLU-Pro conversations of ``turns`` turns through
``ConversationRunner`` at ``concurrency``, every turn exactly ``tokens`` tokens (``ignore_eos``), rule-based
extraction, a real results store. The engine reuses each conversation's prefix, so a turn recomputes only its new
prompt tokens.

(a) Offline batch: the same work as one batch submitted at once, outside coral. For every request (b) made, one
request whose prompt is as long as the prompt tokens (b)'s request actually computed (filler text under an empty
system message) and that generates the same ``tokens`` tokens. Both sides therefore run (nearly) the same number of
prompt and completion tokens; any difference is reported. The engine runs at most ``concurrency`` sequences per
step on both sides, so (a) is the engine's limit at the batch width the conversations use: a wider offline batch
would measure the batch width, not what coral loses.

Counted on both sides: tokens the engine ran a forward pass for = prompt tokens sent - prompt tokens reused from
the prefix cache + completion tokens, as the engine reports them per completion. Efficiency = tokens/s (b) /
tokens/s (a).

Also single-request vs ``concurrent``-request throughput: generated tokens per second with one request in
flight, then with ``concurrent`` requests submitted together, each generating ``request_tokens`` tokens.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from benchmarks.common import Check, Row, Section, repeat, stat, stopwatch
from benchmarks.workloads import (
    ConversationSpec,
    NeverAgreeMMLUPro,
    Tokens,
    TokenTally,
    run_conversations,
)
from coral.backends.base import ChatRequest, Message
from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.backends.models import DEFAULT_MODEL
from coral.sampling import SamplingParams

TARGET_EFFICIENCY = 0.8
TARGET_CONCURRENCY_GAIN = 4.0


@dataclass(frozen=True)
class Sizes:
    """How much work one repeat does.

    Args:
        conversations: conversations in (b), and so the shape of (a).
        turns: generated turns per conversation.
        tokens: tokens generated per turn.
        concurrency: conversations in flight at once in (b); the engine runs at most this many sequences a step
            on both sides (or ``concurrent``, if that is larger).
        concurrent: requests in flight for the single-vs-concurrent comparison.
        request_tokens: tokens each request generates in that comparison.
    """

    conversations: int
    turns: int
    tokens: int
    concurrency: int
    concurrent: int = 16
    request_tokens: int = 64


QUICK = Sizes(conversations=16, turns=3, tokens=16, concurrency=16, request_tokens=16)
FULL = Sizes(conversations=32, turns=5, tokens=32, concurrency=32, request_tokens=64)


@dataclass(frozen=True)
class Throughput:
    tokens: Tokens
    seconds: float

    @property
    def per_s(self) -> float:
        """Computed tokens (recomputed prompt + completion) per second."""
        return self.tokens.computed / self.seconds


@dataclass(frozen=True)
class Result:
    offline: Throughput
    conversations: Throughput
    single_per_s: float
    concurrent_per_s: float

    @property
    def efficiency(self) -> float:
        return self.conversations.per_s / self.offline.per_s

    @property
    def concurrency_gain(self) -> float:
        return self.concurrent_per_s / self.single_per_s


def sampling(tokens: int, seed: int | None = None) -> SamplingParams:
    """Fixed-length turns: ``tokens`` tokens, end-of-sequence ignored."""
    return SamplingParams(temperature=1.0, top_p=1.0, max_tokens=tokens, seed=seed, ignore_eos=True)


def measure_conversations(
    backend: EmbeddedBackend, sizes: Sizes, seed: int
) -> tuple[Throughput, list[tuple[int, int]]]:
    """(b): the conversations' throughput, and (recomputed prompt, completion) tokens of each request made."""
    tally = TokenTally(backend)
    spec = ConversationSpec(sizes.conversations, sizes.turns, sampling(sizes.tokens), sizes.concurrency)
    task = NeverAgreeMMLUPro()
    try:
        run = run_conversations(tally, DEFAULT_MODEL, task, spec, seed)
    finally:
        task.close()
    return Throughput(tally.tokens, run.seconds), tally.shapes


def filler(tokenizer, length: int) -> list[Message]:
    """Chat messages whose prompt is ``length`` tokens (or the template's minimum, ~14 tokens, if longer)."""

    def size(words: int) -> int:
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": " ".join(["the"] * words)}]
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    words = max(length - size(0), 0)
    for _ in range(3):  # one word is one token here; correct the count if a tokenizer merges differently
        words = max(words + length - size(words), 0)
    return [{"role": "system", "content": ""}, {"role": "user", "content": " ".join(["the"] * words)}]


def measure_offline(backend: EmbeddedBackend, shapes: list[tuple[int, int]], seed: int) -> Throughput:
    """(a): one request per shape (prompt tokens, completion tokens), all submitted at once, no sessions."""
    tokenizer = backend.engine().tokenizer
    requests = [
        ChatRequest(filler(tokenizer, prompt), sampling(completion, seed + i))
        for i, (prompt, completion) in enumerate(shapes)
    ]
    tokens = Tokens()

    async def batch() -> None:
        calls = [backend.chat(request) for request in requests]
        for completions in await asyncio.gather(*calls):
            tokens.add(completions)

    with stopwatch() as elapsed:
        asyncio.run(batch())
    return Throughput(tokens, elapsed())


def generated_per_s(backend: EmbeddedBackend, concurrent: int, tokens: int, seed: int) -> float:
    """Generated tokens per second with ``concurrent`` requests of ``tokens`` tokens submitted together."""

    async def batch() -> int:
        calls = [backend.chat(ChatRequest(_story(i), sampling(tokens, seed + i))) for i in range(concurrent)]
        return sum(completions[0].completion_tokens for completions in await asyncio.gather(*calls))

    with stopwatch() as elapsed:
        generated = asyncio.run(batch())
    return generated / elapsed()


def _story(i: int) -> list[Message]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Write a long story about a lighthouse keeper and the number {i}."},
    ]


def warm_up(backend: EmbeddedBackend) -> None:
    """Load the model and run the first steps outside any timed part."""
    generated_per_s(backend, 2, 4, seed=0)


def measure(backend: EmbeddedBackend, sizes: Sizes, seed: int = 0) -> Result:
    """One repeat: (b), then (a) shaped like the requests (b) made, then single vs concurrent requests."""
    conversations, shapes = measure_conversations(backend, sizes, seed)
    offline = measure_offline(backend, shapes, seed)
    single = generated_per_s(backend, 1, sizes.request_tokens, seed)
    concurrent = generated_per_s(backend, sizes.concurrent, sizes.request_tokens, seed)
    return Result(offline, conversations, single, concurrent)


def benchmark(sizes: Sizes, repeats: int) -> Section:
    """Efficiency of conversations vs the offline batch, and the engine's gain from concurrent requests."""
    section = Section("engine", "2. Engine limit vs conversations (embedded engine)")
    with stopwatch() as elapsed:
        config = EngineConfig(max_sequences=max(sizes.concurrency, sizes.concurrent))  # otherwise the defaults
        backend = EmbeddedBackend(DEFAULT_MODEL, engine=config)
        warm_up(backend)
        results = repeat(repeats, lambda i: measure(backend, sizes, seed=1000 * i))
    section.seconds = elapsed()
    efficiency = stat(results, lambda r: r.efficiency)
    gain = stat(results, lambda r: r.concurrency_gain)
    first = results[0]
    shape = f"{sizes.conversations} conversations x {sizes.turns} turns x {sizes.tokens} tokens"
    section.rows += [
        Row(f"(a) offline batch, {shape} as one batch", stat(results, lambda r: r.offline.per_s), "tokens/s"),
        Row(
            f"(b) conversations through coral, {sizes.concurrency} in flight",
            stat(results, lambda r: r.conversations.per_s),
            "tokens/s",
        ),
        Row("efficiency (b)/(a)", efficiency, "", 3),
        Row(
            "(a) tokens computed, first repeat: prompt + completion",
            f"{first.offline.tokens.recomputed:,} + {first.offline.tokens.completion:,}",
        ),
        Row(
            "(b) tokens computed, first repeat: prompt + completion",
            f"{first.conversations.tokens.recomputed:,} + {first.conversations.tokens.completion:,} "
            f"({first.conversations.tokens.cached:,} more prompt tokens reused from the prefix cache)",
        ),
        Row(f"single request, {sizes.request_tokens} tokens", stat(results, lambda r: r.single_per_s), "tokens/s"),
        Row(
            f"{sizes.concurrent} concurrent requests, {sizes.request_tokens} tokens each",
            stat(results, lambda r: r.concurrent_per_s),
            "tokens/s",
        ),
        Row(f"{sizes.concurrent}-concurrent / single", gain, "x", 2),
    ]
    section.checks += [
        Check("conversation efficiency (b)/(a)", efficiency.median, ">=", TARGET_EFFICIENCY),
        Check(f"{sizes.concurrent}-concurrent / single throughput", gain.median, ">=", TARGET_CONCURRENCY_GAIN),
    ]
    section.notes += [
        f"Model {DEFAULT_MODEL}, {config}. Sampling: temperature 1, top_p 1, ignore_eos, fixed max_tokens.",
        (
            "Tokens counted (both sides): prompt tokens the engine computed (sent - reused from its prefix cache) + "
            "completion tokens, from each Completion. (a) has one request per request of (b), its prompt as long as "
            "what (b)'s request computed (minimum ~14 tokens: the chat template) and the same completion length."
        ),
        "Single vs concurrent counts generated tokens only (prompts are short and identical in shape).",
    ]
    return section
