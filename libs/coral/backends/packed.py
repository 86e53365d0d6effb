"""Packed attention: many sequences in one forward pass, each attending only to its own keys and values.

The embedded engine concatenates the new tokens of every running sequence (whole prompts of newcomers, one token
of each decoding sequence) into a single row and runs the Hugging Face model on it once per step. Linear layers
see one big matrix; attention is done here, per sequence, against that sequence's own growing KV store. This
gives continuous batching (a request joins at the next step), prefix reuse across turns (a sequence can start
from stored keys and values) and batch invariance: a sequence's attention never depends on its neighbours, and
linear layers run in row blocks whose results do not depend on the other rows (``row_blocked``), so the same
request gives the same tokens whatever else is in flight.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

ATTENTION_NAME = "coral_packed"
MIN_ROWS, MAX_ROWS = 16, 48
"""Matrix products over MIN_ROWS..MAX_ROWS rows give each row the same result whatever the row count (the CPU
GEMM picks another kernel below 16 rows, and for K = 1536 above 56 rows here); ``row_blocked`` keeps every
product in that range. ``tests/backends`` checks the assumption on the machine that runs them."""


class KVStore:
    """Keys and values of one sequence for every layer, in buffers that grow by doubling."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        capacity: int = 256,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.length = 0
        self._keys = [torch.empty(kv_heads, capacity, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self._values = [torch.empty(kv_heads, capacity, head_dim, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def capacity(self) -> int:
        """Positions the buffers hold before they grow."""
        return self._keys[0].shape[1]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for buffers in (self._keys, self._values):
            for i, old in enumerate(buffers):
                new = torch.empty(old.shape[0], capacity, old.shape[2], dtype=old.dtype, device=old.device)
                new[:, : self.length] = old[:, : self.length]
                buffers[i] = new

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``keys``/``values`` (kv_heads, n, head_dim) for ``layer``; return that layer's full history.

        The sequence length advances once the last layer has been written, so every layer sees the same past.
        """
        start, count = self.length, keys.shape[1]
        if start + count > self.capacity:
            self._grow(start + count)
        self._keys[layer][:, start : start + count] = keys
        self._values[layer][:, start : start + count] = values
        end = start + count
        if layer == len(self._keys) - 1:
            self.length = end
        return self._keys[layer][:, :end], self._values[layer][:, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (the buffers keep their size)."""
        self.length = min(self.length, length)

    def clone(self) -> KVStore:
        """An independent copy: a cached prefix another sequence keeps using, or a sampled branch growing its own."""
        copy = KVStore.__new__(KVStore)
        copy.length = self.length
        copy._keys = [k.clone() for k in self._keys]
        copy._values = [v.clone() for v in self._values]
        return copy

    def nbytes(self) -> int:
        """Bytes the key and value buffers take, capacity included."""
        return sum(k.numel() * k.element_size() * 2 for k in self._keys)


@dataclass
class Segment:
    """The slice ``[start, start + count)`` of the packed row that belongs to one sequence."""

    start: int
    count: int
    kv: KVStore


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed row; ``kwargs['segments']`` says which tokens belong to which sequence."""
    segments: list[Segment] = kwargs["segments"]
    layer = cast(int, module.layer_idx)  # set on every attention module by transformers
    head_dim = query.shape[3]
    scale = scaling if scaling is not None else head_dim**-0.5
    outputs = []
    for seg in segments:
        end = seg.start + seg.count
        past = seg.kv.length
        k, v = seg.kv.append(layer, key[0, :, seg.start : end], value[0, :, seg.start : end])
        outputs.append(_attend(query[0, :, seg.start : end].to(k.dtype), k, v, past, scale))
    return torch.cat(outputs, dim=1).transpose(0, 1).unsqueeze(0).to(query.dtype), None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, scale: float) -> torch.Tensor:
    """Causal attention of ``count`` queries (heads, count, dim) over ``past + count`` keys (kv_heads, ., dim).

    Decoding (one query) folds the grouped-query heads into the query rows, so keys and values are never copied
    per head: on CPU several times faster than ``scaled_dot_product_attention(enable_gqa=True)`` on strided
    buffers. Prompts (many queries) use the fused kernel, which wins once the score matrix is large.
    """
    heads, count, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    if count == 1:
        scores = torch.bmm(q.reshape(kv_heads, group, dim), k.transpose(1, 2)) * scale
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(heads, 1, dim)
    # The fused CPU kernel needs 4-D (batch, heads, length, dim) inputs; 3-D falls back to the slow math path.
    q, k, v = q[None], k.repeat_interleave(group, dim=0)[None], v.repeat_interleave(group, dim=0)[None]
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[0]
    positions = torch.arange(past + count, device=q.device)
    visible = positions.unsqueeze(0) <= positions[:count].unsqueeze(1) + past
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)[0]


def _row_blocked_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    blocks = []
    for start in range(0, rows.shape[0], MAX_ROWS):
        block = rows[start : start + MAX_ROWS]
        count = block.shape[0]
        if count < MIN_ROWS:
            block = F.pad(block, (0, 0, 0, MIN_ROWS - count))
        blocks.append(F.linear(block, self.weight, self.bias)[:count])
    return torch.cat(blocks).reshape(*x.shape[:-1], -1)


def row_blocked(model: torch.nn.Module) -> torch.nn.Module:
    """Make every linear layer compute in row blocks of MIN_ROWS..MAX_ROWS, so packed rows are batch-invariant.

    Costs little when decoding (a step has few rows) and some GEMM efficiency on long prompts.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_row_blocked_linear, module)  # type: ignore[method-assign]
    return model


@contextmanager
def serving(model: torch.nn.Module) -> Iterator[None]:
    """Run a model the engine does not own as the engine runs its own, and leave it exactly as it was found.

    For the duration: packed attention, every module in eval mode (no dropout, LoRA's included) and, on a CPU,
    row-blocked linear layers. On exit the caller's attention implementation, each module's train/eval mode and the
    linear layers' own ``forward`` come back, so a trainer holding the model computes its losses as before.
    """
    config: Any = model.config  # a transformers PretrainedConfig
    attention = config._attn_implementation
    modes = [(module, module.training) for module in model.modules()]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)] if _on_cpu(model) else []
    own_forward = [m.__dict__.get("forward") for m in linears]
    try:
        config._attn_implementation = ATTENTION_NAME
        model.eval()
        for linear in linears:
            linear.forward = types.MethodType(_row_blocked_linear, linear)  # type: ignore[method-assign]
        yield
    finally:
        config._attn_implementation = attention
        for module, training in modes:
            module.training = training
        for linear, forward in zip(linears, own_forward):
            if forward is None:
                del linear.forward
            else:
                linear.forward = forward  # type: ignore[method-assign]


def _on_cpu(model: torch.nn.Module) -> bool:
    """MIN_ROWS..MAX_ROWS describe CPU matrix kernels; elsewhere the model's own layers run unchanged."""
    return next(model.parameters()).device.type == "cpu"


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Masks are built per sequence inside ``packed_attention``."""
    return None


def register() -> None:
    """Make ``attn_implementation="coral_packed"`` available to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
