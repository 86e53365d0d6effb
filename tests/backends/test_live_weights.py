"""The embedded engine serving a model object its caller holds, and completions with token ids and log-probabilities.

Most tests use a tiny random Llama with the packaged SmolLM2 tokenizer (fast); one checks the real default model.
The reference everywhere is a plain teacher-forced forward pass of the caller's model, outside the engine.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from coral.backends import ChatRequest, EmbeddedBackend, models
from coral.backends.base import InvalidRequestError
from coral.backends.grpc_client import GrpcBackend
from coral.backends.http import OpenAIHTTPBackend
from coral.sampling import SamplingParams

pytestmark = pytest.mark.timeout(300)

ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]
_names = itertools.count()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(models.resolve(models.DEFAULT_MODEL))


def tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """Two layers, 64 wide; weights large enough (std 0.2) that greedy decoding has clear winners."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def serve(model, tokenizer) -> EmbeddedBackend:
    """A backend for ``model`` under a name no other test uses."""
    return EmbeddedBackend.for_model(model, tokenizer, name=f"live{next(_names)}")


def chat(backend: EmbeddedBackend, request: ChatRequest):
    return asyncio.run(backend.chat(request))


def teacher_forced(model, prompt, tokens, temperature: float, **kwargs) -> torch.Tensor:
    """log_softmax(logits / temperature) of each of ``tokens`` after ``prompt``, in one ordinary forward pass."""
    ids = torch.tensor([[*prompt, *tokens]])
    with torch.no_grad():
        logits = model(ids, **kwargs).logits[0, len(prompt) - 1 : -1]
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs[torch.arange(len(tokens)), torch.tensor(tokens)]


def test_logprobs_match_a_teacher_forced_pass_and_the_model_is_handed_back_as_it_was(tokenizer):
    model = tiny_model(tokenizer)
    model.train()  # a trainer's model between updates
    backend = serve(model, tokenizer)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=12, seed=4, ignore_eos=True)
    [completion] = chat(backend, ChatRequest(ASK, sampling, logprobs=True))

    assert completion.completion_tokens == len(completion.token_ids) == len(completion.logprobs) == 12
    model.eval()
    expected = teacher_forced(model, completion.prompt_token_ids, completion.token_ids, temperature=0.7)
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)
    assert all(lp <= 0.0 for lp in completion.logprobs)
    # Borrowed only for the forward passes: attention, train mode and the linear layers' own forward are back.
    model.train()
    assert model.config._attn_implementation == "sdpa"
    assert all(m.training for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_greedy_logprobs_are_the_policy_at_temperature_one(tokenizer):
    model = tiny_model(tokenizer, seed=1).eval()
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    [completion] = chat(serve(model, tokenizer), ChatRequest(ASK, greedy, logprobs=True))
    expected = teacher_forced(model, completion.prompt_token_ids, completion.token_ids, temperature=1.0)
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_token_ids_are_the_prompt_and_text_the_model_saw(tokenizer):
    model = tiny_model(tokenizer, seed=2).eval()
    sampling = SamplingParams(temperature=1.0, max_tokens=10, seed=9)
    [completion] = chat(serve(model, tokenizer), ChatRequest(ASK, sampling, logprobs=True))
    template = tokenizer.apply_chat_template(ASK, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert list(completion.prompt_token_ids) == list(template)
    assert completion.prompt_tokens == len(template)
    text_tokens = [t for t in completion.token_ids if t != tokenizer.eos_token_id]
    assert tokenizer.decode(text_tokens, skip_special_tokens=True) == completion.text


def test_seeded_samples_repeat_and_logprobs_are_off_by_default(tokenizer):
    model = tiny_model(tokenizer, seed=3).eval()
    backend = serve(model, tokenizer)
    sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=21, ignore_eos=True)
    first, second = chat(backend, ChatRequest(ASK, sampling, n=2, logprobs=True))
    [again] = chat(backend, ChatRequest(ASK, sampling.with_seed(22), logprobs=True))
    assert (again.token_ids, again.logprobs) == (second.token_ids, second.logprobs)  # sample i of n: seed + i
    assert first.token_ids != second.token_ids
    [plain] = chat(backend, ChatRequest(ASK, sampling))
    assert (plain.prompt_token_ids, plain.token_ids, plain.logprobs) == (None, None, None)
    assert plain.text == first.text


def test_an_in_place_weight_update_drops_the_cached_prefix(tokenizer):
    model = tiny_model(tokenizer, seed=4).eval()
    backend = serve(model, tokenizer)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    turn1 = chat(backend, ChatRequest(ASK, greedy, session_id="s"))[0]
    history = [*ASK, {"role": "assistant", "content": turn1.text}, {"role": "user", "content": "More?"}]
    old = chat(backend, ChatRequest(history, greedy))[0]

    with torch.no_grad():
        model.model.norm.weight.mul_(-1.0)  # an optimizer step writes in place like this: logits flip sign
    after = chat(backend, ChatRequest(history, greedy, session_id="s"))[0]
    fresh = chat(backend, ChatRequest(history, greedy))[0]
    assert after.cached_prompt_tokens == 0  # the first turn's keys and values came from the old weights
    assert after.text == fresh.text != old.text

    again = chat(backend, ChatRequest([*history, {"role": "assistant", "content": after.text}], greedy, session_id="s"))
    assert again[0].cached_prompt_tokens >= after.prompt_tokens  # unchanged weights: the prefix is reused


def test_an_explicit_weights_changed_drops_the_cached_prefix(tokenizer):
    model = tiny_model(tokenizer, seed=5).eval()
    backend = serve(model, tokenizer)
    greedy = SamplingParams(temperature=0.0, max_tokens=4)
    turn1 = chat(backend, ChatRequest(ASK, greedy, session_id="s"))[0]
    history = [*ASK, {"role": "assistant", "content": turn1.text}, {"role": "user", "content": "More?"}]
    backend.weights_changed()
    assert chat(backend, ChatRequest(history, greedy, session_id="s"))[0].cached_prompt_tokens == 0


@pytest.fixture
def two_adapters(tokenizer):
    """A peft model with LoRA adapters ``alice`` (active) and ``bob``, both non-zero, as a trainer would hold it."""
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.1,
                      init_lora_weights=False)
    model = get_peft_model(tiny_model(tokenizer, seed=6), lora, adapter_name="alice")
    model.add_adapter("bob", lora)
    model.set_adapter("alice")
    return model


def test_each_request_runs_the_adapter_it_names_and_the_trainers_state_is_untouched(tokenizer, two_adapters):
    model = two_adapters
    backend = serve(model, tokenizer)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    variants = [backend.model, f"{backend.model}@alice", f"{backend.model}@bob", f"{backend.model}@__base__"]

    async def together():
        requests = [ChatRequest(ASK, greedy, model=m, session_id="debate", logprobs=True) for m in variants]
        return await asyncio.gather(*(backend.chat(r) for r in requests))

    active, a, b, base = (c[0] for c in asyncio.run(together()))  # one session, batched in the same steps
    assert active.token_ids == a.token_ids  # a plain request runs the active adapter
    assert len({a.token_ids, b.token_ids, base.token_ids}) == 3
    model.eval()
    for completion, adapter in ((a, "alice"), (b, "bob"), (base, "__base__")):
        prompt, tokens = completion.prompt_token_ids, completion.token_ids
        expected = teacher_forced(model, prompt, tokens, 1.0, adapter_names=[adapter])
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4), adapter
    assert model.active_adapters == ["alice"]
    assert grads == {name: p.requires_grad for name, p in model.named_parameters()}

    with pytest.raises(InvalidRequestError, match="has no adapter 'c'"):
        chat(backend, ChatRequest(ASK, greedy, model=f"{backend.model}@c"))


def test_set_adapter_between_rollouts_is_noticed(tokenizer, two_adapters):
    model = two_adapters.eval()
    backend = serve(model, tokenizer)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    turn1 = chat(backend, ChatRequest(ASK, greedy, session_id="s"))[0]
    history = [*ASK, {"role": "assistant", "content": turn1.text}, {"role": "user", "content": "More?"}]
    model.set_adapter("bob")
    after = chat(backend, ChatRequest(history, greedy, session_id="s"))[0]
    assert after.cached_prompt_tokens == 0
    assert after.text == chat(backend, ChatRequest(history, greedy, model=f"{backend.model}@bob"))[0].text


@pytest.mark.parametrize("served", [OpenAIHTTPBackend("http://127.0.0.1:9", model="m"), GrpcBackend("127.0.0.1:9")])
def test_served_backends_refuse_logprobs_before_sending_anything(served):
    request = ChatRequest(ASK, SamplingParams(max_tokens=4), logprobs=True)
    with pytest.raises(InvalidRequestError, match="come only from the embedded engine") as raised:
        asyncio.run(served.chat(request))
    assert raised.value.param == "logprobs" and not raised.value.retryable


@pytest.mark.slow
def test_the_default_models_logprobs_match_a_teacher_forced_pass():
    model, tokenizer = models.load(models.DEFAULT_MODEL)
    backend = EmbeddedBackend.for_model(model, tokenizer, name="smollm-live")
    sampling = SamplingParams(temperature=0.8, max_tokens=16, seed=7)
    [completion] = chat(backend, ChatRequest(ASK, sampling, logprobs=True))
    expected = teacher_forced(model, completion.prompt_token_ids, completion.token_ids, temperature=0.8)
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)
    text_tokens = [t for t in completion.token_ids if t != tokenizer.eos_token_id]
    assert tokenizer.decode(text_tokens, skip_special_tokens=True) == completion.text
