"""MALT tree versus independent passes: what one question's n^3 tree costs next to n^3 separate G->V->R chains.

    python -m benchmarks.malt_tree_reuse [--n 3] [--tokens 32] [--threads 1]

One CommonsenseQA question on the embedded engine, sampled two ways with the same seeds and sampling:

- tree: one ``generate_verify_refine`` record with passes = branching = n: n + n^2 + n^3 turns from 1 + n + n^2
  requests in one session, one per parent, each for its n children (the engine runs the shared prompt once, then
  forks it);
- independent: n^3 records of passes = branching = 1, each its own session, 3 n^3 requests.

Both give n^3 refined answers. Reported: requests, prompt tokens sent and recomputed (sent minus the engine's
``cached_prompt_tokens``; a request's prompt counts once, however many completions it asks for), generated
tokens, every token the engine ran (recomputed + generated) and wall time, with independent / tree ratios. Token
counts do not depend on the machine's load; wall time does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from benchmarks.workloads import Tokens, TokenTally
from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, RetryPolicy, RunSettings
from coral.conversation.protocols.generate_verify_refine import GenerateVerifyRefine
from coral.sampling import SamplingParams
from coral.store import ResultStore
from coral.tasks import get_task

QUESTIONS = "data/commonsense_qa/dev_rand_split.sample.jsonl"


def sample(backend: EmbeddedBackend, passes: int, branching: int, samples: int, tokens: int,
           folder: str) -> dict[str, Any]:
    """Run ``samples`` records of one question and return what the engine computed for them."""
    task = get_task("commonsense_qa")
    example = task.read(QUESTIONS)[0]
    tally = TokenTally(backend)
    protocol = GenerateVerifyRefine(passes=passes, branching=branching)
    agents = {name: Agent(name, tally, backend.model, protocol.instruction(name, task) or "",
                          SamplingParams(temperature=0.3, max_tokens=tokens)) for name in protocol.speakers()}
    runner = ConversationRunner(protocol=protocol, task=task, agents=agents,
                                extractor=BeliefExtractor("rules", tally), store=ResultStore(folder),
                                settings=RunSettings(run_seed=1, config_hash=f"{passes}x{branching}",
                                                     retry=RetryPolicy(attempts=1, backoff_s=0.0)))
    started = time.perf_counter()
    asyncio.run(runner.run([(example, index) for index in range(samples)]))
    return _row(tally.tokens, time.perf_counter() - started)


def _row(tokens: Tokens, seconds: float) -> dict[str, Any]:
    return {"requests": tokens.requests, "prompt_sent": tokens.prompt, "prompt_recomputed": tokens.recomputed,
            "generated": tokens.completion, "computed": tokens.computed, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="most tokens per generated turn")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--out", default="/tmp/malt_tree_reuse", help="scratch folder for the records")
    args = parser.parse_args()
    backend = EmbeddedBackend(engine=EngineConfig(threads=args.threads))
    tree = sample(backend, args.n, args.n, 1, args.tokens, f"{args.out}/tree")
    independent = sample(backend, 1, 1, args.n**3, args.tokens, f"{args.out}/independent")
    ratios = {name: round(independent[name] / tree[name], 2) for name in tree if tree[name]}
    print(json.dumps({"n": args.n, "tokens": args.tokens, "tree": tree, "independent": independent,
                      "independent_over_tree": ratios}, indent=2))


if __name__ == "__main__":
    main()
