"""Single-request vs concurrent token throughput of the embedded engine, measured side by side in one run.

    python -m benchmarks.embedded_concurrency [--tokens 64] [--concurrency 16] [--repeats 3]

Every request generates exactly ``--tokens`` tokens (no early stop), so both settings produce the same work per
request; the ratio of the medians is what to compare across machines, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from coral.backends.embedded import EmbeddedEngine, EngineConfig
from coral.backends.models import DEFAULT_MODEL
from coral.sampling import SamplingParams


def prompt(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Write a long story about a lighthouse keeper and the number {i}."},
    ]


async def throughput(engine: EmbeddedEngine, concurrency: int, tokens: int, seed: int) -> float:
    """Generated tokens per second with ``concurrency`` requests in flight at once."""
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=tokens, seed=seed, ignore_eos=True)
    start = time.perf_counter()
    replies = await asyncio.gather(
        *(engine.submit(prompt(i), sampling.with_seed(seed + i), 1, None) for i in range(concurrency))
    )
    elapsed = time.perf_counter() - start
    return sum(r[0].completion_tokens for r in replies) / elapsed


async def main(args: argparse.Namespace) -> None:
    engine = EmbeddedEngine(args.model, EngineConfig(dtype=args.dtype))
    await throughput(engine, 2, 4, 0)  # load the model and warm up
    single, many = [], []
    for repeat in range(args.repeats):
        single.append(await throughput(engine, 1, args.tokens, 100 * repeat))
        many.append(await throughput(engine, args.concurrency, args.tokens, 100 * repeat))
    s, m = statistics.median(single), statistics.median(many)
    print(f"model {args.model} ({args.dtype}), {args.tokens} tokens per request, {args.repeats} repeats")
    print(f"single request        {s:7.1f} tok/s  (runs: {', '.join(f'{x:.1f}' for x in single)})")
    print(f"{args.concurrency:2d} concurrent         {m:7.1f} tok/s  (runs: {', '.join(f'{x:.1f}' for x in many)})")
    print(f"ratio                 {m / s:7.2f}x")
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
