"""The engine's per-session prefix cache: both agents of a conversation share a session but not a view."""

from __future__ import annotations

from coral.backends.embedded import _PrefixCache


class FakeKV:
    """Stands in for packed.KVStore: a list of cached token positions."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)

    def nbytes(self) -> int:
        return len(self.tokens)

    def clone(self) -> FakeKV:
        return FakeKV(self.tokens)

    def truncate(self, length: int) -> None:
        del self.tokens[length:]


def test_a_partial_match_is_copied_so_its_owner_still_finds_it():
    cache = _PrefixCache(budget_bytes=1000)
    teacher = [1, 2, 10, 11, 12]  # shared head (1, 2), then the teacher's own view
    cache.put("s", teacher, FakeKV(teacher))
    reused, kv = cache.take("s", [1, 2, 20, 21])  # the student's view shares only the head
    assert reused == 2 and kv.tokens == [1, 2]
    reused, kv = cache.take("s", teacher + [13, 14])  # the teacher's next turn extends its whole entry
    assert reused == 5 and kv.tokens == teacher
    assert cache.take("s", teacher + [13]) == (0, None)  # taken: the new request supersedes it


def test_at_least_one_prompt_token_is_recomputed_and_sessions_stay_apart():
    cache = _PrefixCache(budget_bytes=1000)
    cache.put("a", [1, 2, 3], FakeKV([1, 2, 3]))
    assert cache.take("b", [1, 2, 3, 4]) == (0, None)
    reused, kv = cache.take("a", [1, 2, 3])
    assert reused == 2 and kv.tokens == [1, 2]
