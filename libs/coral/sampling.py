"""One typed sampling-parameters object, shared by evaluation, serving and synthesis."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Args:
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass, in (0, 1].
        max_tokens: most tokens to generate for one completion.
        seed: per-request seed; the same seed and prompt give the same completion on the embedded engine.
        stop: strings that end the completion (not included in the text).
        ignore_eos: keep generating past the end-of-sequence token (benchmarks that need fixed lengths).
    """

    temperature: float = 0.2
    top_p: float = 0.9
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"SamplingParams.temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"SamplingParams.seed must be in [0, 2**63), got {self.seed}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def with_seed(self, seed: int) -> SamplingParams:
        """The same parameters with another seed (each request gets its own)."""
        return replace(self, seed=seed)
