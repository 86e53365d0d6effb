"""The seams of ``coral.backends``: one request type, streaming declared by a protocol, no import of coral.serving."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from coral.backends import (
    ChatRequest,
    Completion,
    EmbeddedBackend,
    GrpcBackend,
    OpenAIHTTPBackend,
    ScriptedBackend,
    StreamingChatBackend,
)
from coral.backends.base import Delta, stream_chat
from coral.sampling import SamplingParams

LIBS = Path(__file__).resolve().parents[2] / "libs"
ROOT = LIBS.parent
REQUEST_FIELDS = {"messages", "sampling", "model", "n", "session_id"}


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, at any depth: function-level imports, relative
    imports resolved, ``from a import b`` as both ``a`` and ``a.b``, and ``import_module("...")`` calls."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            found.update(arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant))
    return found


def test_the_import_walker_sees_every_kind_of_import():
    source = (
        "import coral.a\nfrom coral.b import c\nfrom . import sibling\nfrom ..serving import x\n"
        "def f():\n    from coral.serving.grpc_server import ChatServicer\n"
        "def g():\n    importlib.import_module('coral.serving.apps')\n"
    )
    found = imported_modules(source, "coral.backends")
    assert {"coral.a", "coral.b.c", "coral.backends.sibling", "coral.serving.x"} <= found
    assert {"coral.serving.grpc_server", "coral.serving.apps"} <= found


def test_no_backend_module_imports_coral_serving():
    """The client side never depends on the servers: both share ``coral.wire`` instead."""
    offenders = {}
    for path in sorted((LIBS / "coral" / "backends").rglob("*.py")):
        module = ".".join(path.relative_to(LIBS).with_suffix("").parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        bad = sorted(m for m in imported_modules(path.read_text(), package) if m.split(".")[:2] == ["coral", "serving"])
        if bad:
            offenders[module] = bad
    assert offenders == {}


def chat_methods(path: Path) -> list[tuple[str, list[str]]]:
    """(where, parameter names) of every function named ``chat`` or ``chat_stream`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("chat", "chat_stream"):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            found.append((f"{path.relative_to(ROOT)}:{node.lineno}", names))
    return found


def test_the_chat_request_is_declared_once():
    """No backend, server or benchmark restates the request's fields: chat methods take a ChatRequest, and no
    other class declares a request's messages and sampling."""
    files = [*sorted((LIBS / "coral").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    restated = [(where, names) for path in files for where, names in chat_methods(path) if REQUEST_FIELDS & set(names)]
    assert restated == []
    request_like = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name != "ChatRequest":
                annotated = [s.target for s in node.body if isinstance(s, ast.AnnAssign)]
                fields = {target.id for target in annotated if isinstance(target, ast.Name)}
                if {"messages", "sampling"} <= fields:
                    request_like.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert request_like == []


class WordStreamer(ScriptedBackend):
    async def chat_stream(self, request: ChatRequest):
        for index, completion in enumerate(await self.chat(request)):
            first, _, rest = completion.text.partition(" ")
            yield Delta(index, first + " ")
            yield Delta(index, rest, completion)


@pytest.mark.asyncio
async def test_streaming_is_a_declared_protocol():
    reply = "two words"
    plain, streamer = ScriptedBackend(lambda m, s: reply), WordStreamer(lambda m, s: reply)
    assert not isinstance(plain, StreamingChatBackend) and isinstance(streamer, StreamingChatBackend)
    assert isinstance(EmbeddedBackend(), StreamingChatBackend)  # nothing loads until a request comes
    assert isinstance(GrpcBackend("127.0.0.1:1"), StreamingChatBackend)
    assert not isinstance(OpenAIHTTPBackend("http://127.0.0.1:1/v1"), StreamingChatBackend)

    request = ChatRequest([{"role": "user", "content": "hi"}], SamplingParams(seed=1), "m", 2, "s")
    whole = [(d.index, d.text, d.completion) async for d in stream_chat(plain, request)]
    assert whole == [(i, reply, Completion(reply, "stop", 1, 2, 0.0)) for i in (0, 1)]
    pieces = [(d.index, d.text) async for d in stream_chat(streamer, request)]
    assert pieces == [(0, "two "), (0, "words"), (1, "two "), (1, "words")]
    assert plain.calls == streamer.calls == [request]  # the request reaches the backend whole
