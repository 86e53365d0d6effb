"""Token streaming from the embedded engine with the real default model: the pieces are the non-streamed text."""

from __future__ import annotations

import asyncio

import pytest

from coral.backends import ChatRequest, EmbeddedBackend, EngineConfig
from coral.sampling import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

COLOURS = [{"role": "user", "content": "Name 3 colours."}]
CHINESE = [{"role": "user", "content": "Translate to Chinese: I love cats."}]


async def chat_and_stream(backend, messages, sampling, n=1):
    """The same request answered whole and streamed, at once (the engine batches them together)."""

    async def streamed():
        return [delta async for delta in backend.chat_stream(ChatRequest(messages, sampling, n=n))]

    return await asyncio.gather(backend.chat(ChatRequest(messages, sampling, n=n)), streamed())


def test_streamed_pieces_join_to_the_non_streamed_text():
    backend = EmbeddedBackend(engine=EngineConfig(threads=1))
    greedy = SamplingParams(temperature=0.0, max_tokens=12, seed=4)
    stopped = SamplingParams(temperature=0.0, max_tokens=12, seed=4, stop=(" is",))

    async def scenario():
        return await asyncio.gather(
            chat_and_stream(backend, COLOURS, greedy),
            chat_and_stream(backend, CHINESE, greedy),
            chat_and_stream(backend, COLOURS, stopped, n=2),
        )

    (plain, plain_deltas), (chinese, chinese_deltas), (cut, cut_deltas) = asyncio.run(scenario())

    # Token by token: one piece per generated token here, the last carrying the same Completion as chat().
    assert plain[0].completion_tokens == 12 and len(plain_deltas) >= 6
    assert "".join(d.text for d in plain_deltas) == plain[0].text
    assert [d.completion is not None for d in plain_deltas] == [False] * (len(plain_deltas) - 1) + [True]
    final = plain_deltas[-1].completion
    assert (final.text, final.finish_reason, final.completion_tokens) == (plain[0].text, "length", 12)

    # Characters spread over several tokens are sent whole, never as replacement characters.
    assert any(ord(ch) > 0x2E80 for ch in chinese[0].text), f"the model no longer answers in CJK: {chinese[0].text!r}"
    assert "".join(d.text for d in chinese_deltas) == chinese[0].text
    assert not any("\ufffd" in d.text for d in chinese_deltas)

    # A stop string is never streamed, not even its beginning; each of n choices streams under its own index.
    assert cut[0].finish_reason == "stop" and " is" not in cut[0].text and plain[0].text.startswith(cut[0].text)
    for index in (0, 1):
        pieces = [d for d in cut_deltas if d.index == index]
        assert "".join(d.text for d in pieces) == cut[index].text
        assert pieces[-1].completion.text == cut[index].text

