"""The embedded backend: an in-process transformers model serving many concurrent conversations.

One worker thread per model runs a continuous-batching loop. Every step packs the new tokens of all running
sequences into one forward pass (see ``coral.backends.packed``): one token of each decoding sequence, and a chunk
of each prompt still being read. Newcomers join at the next step and finished sequences leave at once, so no
request waits for another to finish; a long prompt is read a chunk per step beside the others instead of holding
them up. Each request samples with its own seeded generator and a sequence's numbers never depend on what else is
in the batch (chunk boundaries depend only on the prompt), so the same (prompt, seed) gives the same completion
however busy the engine is.

Live weights: ``EmbeddedBackend.for_model`` serves a model object the caller holds (a trainer's policy, LoRA
adapters included) under a name; a request's ``model`` ``"<name>@<adapter>"`` runs that one peft adapter
(``"<name>@__base__"`` the base model without adapters), plain ``"<name>"`` the model with whatever adapters the
caller made active. The engine runs the caller's module as it is, borrowing it only for the length of each forward
pass (see ``packed.serving``). The contract with the caller: rollouts and weight updates take turns, never overlap
(await every request, then train, then ask again). Keys and values cached by the old weights would silently be
wrong after an update, so before each request a live engine compares the parameters' version counters and
storage, and the active adapters, with those it last saw and drops its prefix cache when they moved: an optimizer
step, ``load_state_dict`` or ``set_adapter`` needs nothing more. Other changes (inside ``disable_adapter()``, a
module swapped for another, a changed buffer) need ``weights_changed()``.

Turns of one conversation share a growing prefix. When a request names a ``session_id``, the keys and values of
that session's previous request stay in a bounded cache and the next request recomputes only the tokens after
the common prefix. The cache is dropped when the session ends or, least recently used first, when it is full.

``chat_stream`` hands out text as it is generated: after every step, each streaming sequence's newly decoded text
goes to the caller's event loop. Only text that cannot change is sent: a trailing partial multi-byte character
waits for the token that completes it, and the last (longest stop string - 1) characters wait until no stop
string can begin in them. Requests that do not stream run exactly as before.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from coral.backends import models, packed
from coral.backends.base import BACKENDS, BackendError, ChatRequest, Completion, Delta, InvalidRequestError
from coral.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Limits of one embedded engine.

    Args:
        max_sequences: most sequences decoded together in one step.
        max_step_tokens: prompt tokens run in one step, over all sequences (decoding tokens come on top).
        prefill_chunk: most prompt tokens of one sequence run in one step: a longer prompt is read over several
            steps, so it neither waits for the engine to empty nor stalls the sequences decoding beside it. Keep
            it well below ``max_step_tokens`` so that other prompts fit beside a long one.
        prefix_cache_mb: memory for keys and values kept between turns of a session.
        threads: torch threads for the worker (None: torch's default, one per core).
        dtype: weights' dtype, ``float32`` or ``bfloat16``. float32 is batch-invariant (a request's tokens never
            depend on its neighbours, so runs and resumes reproduce exactly); bfloat16 is about 1.5x faster on CPUs
            with native bf16 matrix instructions, but its kernels are not covered by the invariance check.
            Attention and the KV cache stay float32 either way.
    """

    max_sequences: int = 32
    max_step_tokens: int = 4096
    prefill_chunk: int = 256
    prefix_cache_mb: int = 2048
    threads: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"EngineConfig.dtype must be float32 or bfloat16, got {self.dtype!r}")
        for name in ("max_sequences", "max_step_tokens", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _Request:
    chat: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)
    prompt: list[int] = field(default_factory=list)
    cached: int = 0
    outputs: list[Completion | None] = field(default_factory=list)
    on_delta: Callable[[Delta], None] | None = None
    """Streaming requests: called on ``loop`` with every new piece of text."""
    adapter: str | None = None
    """The peft adapter this request runs (live engines only); None: the model as its holder left it."""


@dataclass
class _Sequence:
    request: _Request
    sample: int
    kv: packed.KVStore
    feed: list[int]
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)
    streamed: str = ""
    """Text already handed to a streaming caller."""
    logprobs: list[float] = field(default_factory=list)
    """Requests with ``logprobs``: each generated token's log-probability under the sampling distribution."""


class _PrefixCache:
    """Keys and values of finished requests, by session and adapter, evicted least recently used first.

    Two agents of one conversation share a session; when they run different adapters, their keys and values for the
    same tokens differ, so an entry is only found under the adapter that computed it.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple[str, str | None, int], tuple[list[int], packed.KVStore]] = OrderedDict()
        self._counter = 0
        self._bytes = 0

    def take(
        self, session_id: str, prompt: list[int], adapter: str | None = None
    ) -> tuple[int, packed.KVStore | None]:
        """The session's entry sharing the longest prefix with ``prompt``, with the length it covers.

        The entry is taken when the prompt extends all of it, copied when only part of it matches (both agents of a
        conversation share a session but not a view).
        """
        best, best_len = None, 0
        for key, (tokens, _) in self._entries.items():
            if key[:2] != (session_id, adapter):
                continue
            common = _common_prefix(tokens, prompt)
            if common > best_len:
                best, best_len = key, common
        if best is None:
            return 0, None
        tokens, kv = self._entries[best]
        if best_len == len(tokens):  # the prompt extends the whole entry: hand it over, the request supersedes it
            del self._entries[best]
            self._bytes -= kv.nbytes()
        else:  # a partial match (e.g. the other agent's view of the conversation): keep it for its owner, copy
            self._entries.move_to_end(best)
            kv = kv.clone()
        usable = min(best_len, len(prompt) - 1)  # at least one token must run to produce logits
        kv.truncate(usable)
        return usable, kv

    def put(self, session_id: str, tokens: list[int], kv: packed.KVStore, adapter: str | None = None) -> None:
        self._counter += 1
        self._entries[(session_id, adapter, self._counter)] = (tokens, kv)
        self._bytes += kv.nbytes()
        while self._bytes > self.budget and self._entries:
            self._bytes -= self._entries.popitem(last=False)[1][1].nbytes()

    def drop(self, session_id: str) -> None:
        for key in [k for k in self._entries if k[0] == session_id]:
            self._bytes -= self._entries.pop(key)[1].nbytes()

    def clear(self) -> None:
        """Forget every entry: the weights that computed them changed."""
        self._entries.clear()
        self._bytes = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _sample(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
    """Greedy, or temperature + nucleus sampling with the request's own generator."""
    if sampling.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        # The nucleus nearly always lies in the top few hundred tokens; sort all 49k only when it does not.
        top, order = torch.topk(probs, min(256, probs.numel()))
        if float(top.sum()) < sampling.top_p:
            top, order = torch.sort(probs, descending=True)
        top = top.clone()
        top[torch.cumsum(top, dim=-1) - top > sampling.top_p] = 0.0
        return int(order[torch.multinomial(top, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def _logprob(logits: torch.Tensor, sampling: SamplingParams, token: int) -> float:
    """``token``'s log-probability under ``log_softmax(logits / temperature)``.

    That is the distribution ``_sample`` draws from, before top-p truncation; greedy decoding counts as temperature 1
    (the policy's own distribution).
    """
    temperature = sampling.temperature or 1.0
    return float(torch.log_softmax(logits.float() / temperature, dim=-1)[token])


def _weights_version(model: torch.nn.Module) -> tuple[object, ...]:
    """The model's active peft adapters, where each parameter lives and how often it was written in place.

    Changes whenever an optimizer steps, a state dict is loaded or ``set_adapter`` picks other adapters.
    """
    return (_active_adapters(model), *((p.data_ptr(), p._version) for p in model.parameters()))


def _active_adapters(model: torch.nn.Module) -> tuple[str, ...]:
    """The adapters a plain request runs: a property on peft's PeftModel, a method on transformers' own adapters."""
    if not getattr(model, "peft_config", None):
        return ()
    active = getattr(model, "active_adapters", ())
    return tuple(active() if callable(active) else active)


class EmbeddedEngine:
    """A model in a worker thread with a continuous-batching loop. Thread-safe ``submit``.

    Args:
        model: a packaged model name or checkpoint directory to load; with ``held``, the name it is served under.
        config: the engine's limits.
        held: a (model, tokenizer) the caller holds and keeps training: served as it is, never loaded, moved or
            cast (``config.dtype`` does not apply), on the device it lives on. See the module's live-weights contract.
    """

    def __init__(
        self,
        model: str = models.DEFAULT_MODEL,
        config: EngineConfig = EngineConfig(),
        held: tuple[Any, Any] | None = None,
    ) -> None:
        self.model_name = model
        self.config = config
        self.held = held
        self._weights: tuple[object, ...] = ()
        self._inbox: queue.Queue = queue.Queue()
        self._load_error: BaseException | None = None
        self._waiting: list[_Request] = []
        self._cache = _PrefixCache(config.prefix_cache_mb * 2**20)
        self._thread = threading.Thread(target=self._run, name=f"coral-engine-{model}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- client side (any thread / event loop)
    def submit(self, chat: ChatRequest, on_delta: Callable[[Delta], None] | None = None) -> asyncio.Future:
        """Queue a request (its ``model`` picked this engine); the future gets all n Completions.

        ``on_delta`` (called on this event loop) streams the text of each choice as it is generated, the last piece
        of a choice carrying its Completion.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(_Request(chat, loop, future, on_delta=on_delta))
        return future

    def end_session(self, session_id: str) -> None:
        """Drop the session's cached prefixes (queued behind the requests already sent)."""
        self._inbox.put(("end_session", session_id))

    def weights_changed(self) -> None:
        """Drop every cached prefix before the next request: the held model changed (queued like a request).

        Needed after changes that neither write parameters nor pick other adapters (``disable_adapter()``, a
        swapped module, a changed buffer); harmless otherwise.
        """
        self._inbox.put(("weights_changed", None))

    def close(self) -> None:
        """Ask the engine's thread to stop; it reads this after whatever was queued before."""
        self._inbox.put(("stop", None))
        self._thread.join(timeout=30)

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported to every request instead
            self._load_error = exc
            log.exception("embedded engine failed to load %s", self.model_name)
        running: list[_Sequence] = []
        while True:
            try:
                incoming = self._drain(running=len(running))
            except _Stop:
                self._fail_all(running, BackendError("engine stopped", retryable=False))
                return
            newcomers = [seq for seq in map(self._start, incoming) if seq is not None]
            running = [s for s in running if not s.request.future.cancelled()] + newcomers
            if running:
                running = self._step(running)

    def _load(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        packed.register()
        if self.held is None:
            self.model, self.tokenizer = models.load(self.model_name)
            self.model.to(getattr(torch, self.config.dtype))
            self.model.set_attn_implementation(packed.ATTENTION_NAME)
            packed.row_blocked(self.model)
        else:
            self.model, self.tokenizer = self.held
        self._device = next(self.model.parameters()).device
        cfg = self.model.config
        self._kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
        self._context = int(getattr(cfg, "max_position_embeddings", 8192))
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}

    def _drain(self, running: int) -> list[_Request]:
        """Take queued requests up to the sequence budget; handle control messages.

        Blocks only when nothing is running or waiting, so an idle engine costs no CPU.
        """
        block = running == 0
        while True:
            try:
                item = self._inbox.get(block=block and not self._waiting)
            except queue.Empty:
                break
            if isinstance(item, tuple):
                command, arg = item
                if command == "stop":
                    raise _Stop
                if command == "weights_changed":
                    self._cache.clear()
                else:
                    self._cache.drop(arg)
            else:
                self._waiting.append(item)
            block = False
        admitted: list[_Request] = []
        while self._waiting:
            request = self._waiting[0]
            if running + request.chat.n > self.config.max_sequences and (running or admitted):
                break  # an idle engine always takes the next request
            running += request.chat.n
            admitted.append(self._waiting.pop(0))
        return admitted

    def _tokenize(self, request: _Request) -> list[int] | None:
        """The request's prompt tokens; None (the request answered with an error) if it cannot be served."""
        try:
            messages = request.chat.messages
            encoded = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        except Exception as exc:  # a bad request must not stop the engine
            self._reply(request, error=BackendError(f"cannot apply chat template: {exc}", retryable=False))
            return None
        prompt = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        problem = None
        if len(prompt) >= self._context:
            problem = InvalidRequestError(
                f"prompt of {len(prompt)} tokens does not fit the model's context of {self._context} tokens "
                "(one token must be left to generate)", param="messages", code="context_length_exceeded")
        elif request.chat.sampling.max_tokens > self._context:
            problem = InvalidRequestError(
                f"max_tokens {request.chat.sampling.max_tokens} exceeds the model's context of {self._context} tokens "
                "(a completion still ends where the context does, finish_reason 'length')", param="max_tokens",
                code="context_length_exceeded")
        if problem is not None:
            self._reply(request, error=problem)
            return None
        return prompt

    def _start(self, request: _Request) -> _Sequence | None:
        """Tokenise a request and make its first sequence, reusing the session's cached prefix if any."""
        if self._load_error is not None:
            self._reply(request, error=BackendError(f"model failed to load: {self._load_error}", retryable=False))
            return None
        if request.future.cancelled():
            return None
        prompt = self._tokenize(request)
        if prompt is None or not self._pick_adapter(request):
            return None
        request.prompt = prompt
        request.outputs = [None] * request.chat.n
        if self.held is not None and self._weights != (weights := _weights_version(self.model)):
            self._cache.clear()  # keys and values of the old weights
            self._weights = weights
        reused, kv = (0, None)
        if request.chat.session_id is not None:
            reused, kv = self._cache.take(request.chat.session_id, prompt, request.adapter)
        request.cached = reused
        kv = kv or packed.KVStore(*self._kv_shape, device=self._device)
        generator = self._generator(request.chat.sampling, 0)
        return _Sequence(request, 0, kv, prompt[reused:], generator, fed=prompt[:reused])

    def _pick_adapter(self, request: _Request) -> bool:
        """Set the adapter a live engine's request names (``"<name>@<adapter>"``); False if the model has none such.

        Checked here rather than left to peft, whose error would fail every sequence of the step.
        """
        name = request.chat.model
        if self.held is None or name is None or "@" not in name:
            return True
        adapter = name.partition("@")[2]
        known = ["__base__", *getattr(self.model, "peft_config", {})]
        if adapter not in known:
            message = f"model {self.model_name!r} has no adapter {adapter!r}; it has {', '.join(known)}"
            self._reply(request, error=InvalidRequestError(message, param="model"))
            return False
        request.adapter = adapter
        return True

    @staticmethod
    def _generator(sampling: SamplingParams, sample: int) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(((sampling.seed or 0) + sample) % 2**63)
        return generator

    def _schedule(self, running: list[_Sequence]) -> dict[int, int]:
        """How many of its pending tokens each sequence runs this step, by ``id``.

        Every decoding sequence runs its one token; prompts a chunk each, oldest first, while ``max_step_tokens``
        allows (the oldest always runs).

        A prompt's chunks are ``prefill_chunk`` tokens from where it starts, whatever runs beside it (a chunk that
        does not fit waits whole for the next step), so its numbers never depend on its neighbours.
        """
        budget = self.config.max_step_tokens
        chunk = min(self.config.prefill_chunk, budget)
        counts: dict[int, int] = {}
        for seq in running:
            if seq.generated:
                counts[id(seq)] = 1
                continue
            count = min(chunk, len(seq.feed))
            if count <= budget:
                counts[id(seq)] = count
                budget -= count
        return counts

    def _step(self, running: list[_Sequence]) -> list[_Sequence]:
        """One forward pass over the scheduled tokens of the running sequences; returns those still running."""
        counts = self._schedule(running)
        batch = [seq for seq in running if id(seq) in counts]
        try:
            rows = self._logits(batch, counts)
        except Exception as exc:  # fail this batch, keep serving
            log.exception("engine step failed")
            self._fail_all(batch, BackendError(f"engine step failed: {exc}"))
            failed = {id(seq.request) for seq in batch}
            return [seq for seq in running if id(seq.request) not in failed]
        still = []
        for seq in running:
            count = counts.get(id(seq), 0)
            seq.fed.extend(seq.feed[:count])
            del seq.feed[:count]
            if seq.feed:  # a prompt with chunks left, or one that waited for room
                still.append(seq)
            elif len(seq.generated) == 0 and seq.request.chat.n > 1 and seq.sample == 0:
                still.extend(self._fork(seq, rows[id(seq)]))
            else:
                still.extend(self._advance(seq, rows[id(seq)]))
        return still

    def _logits(self, batch: list[_Sequence], counts: dict[int, int]) -> dict[int, torch.Tensor]:
        """The logits of each scheduled sequence's last token this step, by ``id``: one forward pass per adapter."""
        groups: dict[str | None, list[_Sequence]] = {}
        for seq in batch:
            groups.setdefault(seq.request.adapter, []).append(seq)
        rows: dict[int, torch.Tensor] = {}
        for adapter, group in groups.items():
            logits = self._forward([(seq.kv, seq.feed[: counts[id(seq)]]) for seq in group], adapter)
            rows.update(zip(map(id, group), logits))
        return rows

    def _forward(self, work: list[tuple[packed.KVStore, list[int]]], adapter: str | None = None) -> torch.Tensor:
        """Run each (KV store, new tokens) pair's tokens after its stored ones; the logits of each pair's last token.

        A held model is borrowed for the pass (``packed.serving``) and ``adapter`` selected through peft's
        ``adapter_names``, which leaves the caller's active adapters and ``requires_grad`` flags alone.
        """
        ids: list[int] = []
        positions: list[int] = []
        segments, last = [], []
        for kv, tokens in work:
            segments.append(packed.Segment(len(ids), len(tokens), kv))
            positions.extend(range(kv.length, kv.length + len(tokens)))
            ids.extend(tokens)
            last.append(len(ids) - 1)
        selected = {} if adapter is None else {"adapter_names": [adapter]}
        borrowed = contextlib.nullcontext() if self.held is None else packed.serving(self.model)
        with torch.inference_mode(), borrowed:
            out = self.model(
                input_ids=torch.tensor([ids], device=self._device),
                position_ids=torch.tensor([positions], device=self._device),
                segments=segments,
                logits_to_keep=torch.tensor(last, device=self._device),
                use_cache=False,
                **selected,
            )
        return out.logits[0].cpu()  # sampled with the requests' CPU generators, wherever the model runs

    def _fork(self, seq: _Sequence, row: torch.Tensor) -> list[_Sequence]:
        """After the shared prompt ran once, split a request with n > 1 into n sequences."""
        sampling = seq.request.chat.sampling
        forks = [seq] + [
            _Sequence(seq.request, i, seq.kv.clone(), [], self._generator(sampling, i), fed=list(seq.fed))
            for i in range(1, seq.request.chat.n)
        ]
        still = []
        for fork in forks:
            still.extend(self._advance(fork, row))
        return still

    def _advance(self, seq: _Sequence, row: torch.Tensor) -> list[_Sequence]:
        sampling = seq.request.chat.sampling
        token = _sample(row, sampling, seq.generator)
        if seq.request.chat.logprobs:
            seq.logprobs.append(_logprob(row, sampling, token))
        seq.generated.append(token)
        seq.feed = [token]
        finish = None
        if token in self._eos and not sampling.ignore_eos:
            finish = "stop"
        elif len(seq.generated) >= sampling.max_tokens or len(seq.request.prompt) + len(seq.generated) >= self._context:
            finish = "length"
        text = None
        if (sampling.stop or seq.request.on_delta) and finish is None:
            text = self._text(seq)
            cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        if finish is None:
            if text is not None and seq.request.on_delta:
                self._stream(seq, text)
            return [seq]
        self._finish(seq, finish, text)
        return []

    def _stream(self, seq: _Sequence, text: str) -> None:
        """Send the part of ``text`` that later tokens cannot change and that was not sent yet.

        A partial multi-byte character decodes to U+FFFD until its last byte arrives; a stop string found later
        may begin up to (its length - 1) characters before the current end, and the text is then cut there.
        """
        stable = text.rstrip("\ufffd")
        hold = max((len(s) for s in seq.request.chat.sampling.stop), default=1) - 1
        stable = stable[: max(len(stable) - hold, 0)]
        if len(stable) > len(seq.streamed):
            piece = stable[len(seq.streamed) :]
            seq.streamed = stable
            self._send(seq.request, Delta(seq.sample, piece))

    def _text(self, seq: _Sequence) -> str:
        tokens = [t for t in seq.generated if t not in self._eos]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _finish(self, seq: _Sequence, reason: str, text: str | None) -> None:
        request = seq.request
        completion = Completion(
            text=self._text(seq) if text is None else text,
            finish_reason=reason,
            prompt_tokens=len(request.prompt),
            completion_tokens=len(seq.generated),
            latency_s=time.perf_counter() - request.submitted,
            cached_prompt_tokens=request.cached,
        )
        if request.chat.logprobs:
            completion = replace(completion, prompt_token_ids=tuple(request.prompt), token_ids=tuple(seq.generated),
                                 logprobs=tuple(seq.logprobs))
        request.outputs[seq.sample] = completion
        self._send(request, Delta(seq.sample, completion.text[len(seq.streamed) :], completion))
        if request.chat.session_id is not None and seq.sample == 0:
            self._cache.put(request.chat.session_id, seq.fed, seq.kv, request.adapter)
        if all(output is not None for output in request.outputs):
            self._reply(request, result=list(request.outputs))

    def _reply(
        self, request: _Request, result: list[Completion | None] | None = None, error: BaseException | None = None
    ) -> None:
        def deliver() -> None:
            if request.future.done():
                return
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(result)

        try:
            request.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the caller's event loop is closed; nobody is waiting
            pass

    def _send(self, request: _Request, delta: Delta) -> None:
        """Hand a piece of text to a streaming caller (requests that do not stream have no listener)."""
        if request.on_delta is None:
            return
        try:
            request.loop.call_soon_threadsafe(request.on_delta, delta)
        except RuntimeError:  # the caller's event loop is closed; nobody is listening
            pass

    def _fail_all(self, running: list[_Sequence], error: BaseException) -> None:
        for request in {id(s.request): s.request for s in running}.values():
            self._reply(request, error=error)


class _Stop(Exception):
    pass


_ENGINES: dict[tuple[str, EngineConfig], EmbeddedEngine] = {}
_LIVE: dict[str, EmbeddedEngine] = {}
"""Engines serving a model object a caller holds, by the name it is served under."""
_ENGINES_LOCK = threading.Lock()


@atexit.register
def _close_engines() -> None:
    for engine in _all_engines():
        engine.close()


def _all_engines() -> list[EmbeddedEngine]:
    with _ENGINES_LOCK:
        return [*_ENGINES.values(), *_LIVE.values()]


def shared_engine(model: str, config: EngineConfig = EngineConfig()) -> EmbeddedEngine:
    """One engine per (model, config) in a process, so agents and the judge on one model share its batches."""
    with _ENGINES_LOCK:
        key = (model, config)
        if key not in _ENGINES:
            _ENGINES[key] = EmbeddedEngine(model, config)
        return _ENGINES[key]


def serve_live(name: str, model: Any, tokenizer: Any, config: EngineConfig = EngineConfig()) -> EmbeddedEngine:
    """The process's engine for a model object the caller holds, served as ``name`` (``"<name>@<adapter>"`` too).

    Serving the same object again returns its engine; another object under a taken name replaces the old engine,
    which finishes what was sent to it and stops (a trainer that rebuilt its model).
    """
    if "@" in name:
        raise ValueError(f"a live model's name cannot contain '@' (it separates the adapter): {name!r}")
    with _ENGINES_LOCK:
        current = _LIVE.get(name)
        if current is not None and current.held is not None and current.held[0] is model:
            return current
        _LIVE[name] = EmbeddedEngine(name, config, held=(model, tokenizer))
    if current is not None:
        current.close()
    return _LIVE[name]


def _live_engine(model: str) -> EmbeddedEngine | None:
    """The live engine a request's ``model`` (``"<name>"`` or ``"<name>@<adapter>"``) names, if any."""
    with _ENGINES_LOCK:
        return _LIVE.get(model.partition("@")[0])


@BACKENDS.register("embedded")
class EmbeddedBackend:
    """ChatBackend over in-process engines; ``model`` picks the engine (default: the backend's model).

    Args:
        model: default model: a packaged model name or a local checkpoint directory.
        engine: limits of the engines this backend starts.
        request_timeout: seconds before a request is abandoned and reported as a retryable error.
    """

    def __init__(
        self, model: str = models.DEFAULT_MODEL, engine: EngineConfig = EngineConfig(), request_timeout: float = 1800.0
    ) -> None:
        self.model = model
        self.engine_config = engine
        self.request_timeout = request_timeout

    @classmethod
    def for_model(
        cls, model: Any, tokenizer: Any, name: str = "policy", engine: EngineConfig = EngineConfig(),
        request_timeout: float = 1800.0,
    ) -> EmbeddedBackend:
        """A backend whose default model is ``model``, an object the caller holds and keeps training.

        Requests for ``name`` run it as it is at that moment, ``"<name>@<adapter>"`` one of its peft adapters. The
        caller alternates rollouts and updates (see the module's contract) and may call ``weights_changed()``.
        """
        serve_live(name, model, tokenizer, engine)
        return cls(name, engine, request_timeout)

    def engine(self, model: str | None = None) -> EmbeddedEngine:
        """The process's engine for ``model`` (this backend's by default): a live one, or started on first use."""
        name = model or self.model
        return _live_engine(name) or shared_engine(name, self.engine_config)

    def weights_changed(self) -> None:
        """Tell the engine of this backend's default model that its held weights changed (drops cached prefixes)."""
        self.engine().weights_changed()

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """All n Completions of the request; a timeout is a retryable BackendError."""
        future = self.engine(request.model).submit(request)
        try:
            return await asyncio.wait_for(future, self.request_timeout)
        except asyncio.TimeoutError:
            raise BackendError(f"embedded request timed out after {self.request_timeout}s") from None

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """The request's text as the engine generates it: Deltas per choice, token by token.

        The last Delta of each choice carries its Completion. The pieces of a choice join to exactly its ``chat`` text.
        """
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Delta | None] = asyncio.Queue()
        future = self.engine(request.model).submit(request, on_delta=pieces.put_nowait)
        future.add_done_callback(lambda _: pieces.put_nowait(None))  # queued after every piece of the request
        deadline = loop.time() + self.request_timeout
        try:
            while True:
                try:
                    delta = await asyncio.wait_for(pieces.get(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    raise BackendError(f"embedded request timed out after {self.request_timeout}s") from None
                if delta is None:
                    future.result()  # raises the engine's error, if any
                    return
                yield delta
        finally:
            future.cancel()  # a caller that stops listening frees the engine's sequences

    async def end_session(self, session_id: str) -> None:
        """Every engine of the process forgets the session's cached prefixes."""
        for engine in _all_engines():
            engine.end_session(session_id)

    async def aclose(self) -> None:
        """Engines are shared by the process and outlive one backend object."""
