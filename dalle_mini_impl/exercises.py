"""Checkers for the lessons' exercises.

Each ``check_*`` function takes the learner's answer, compares it with the
package on several inputs, and prints a one-line verdict. An answer that is not
written yet (a function that raises ``NotImplementedError`` or returns ``None``)
gets a hint instead of a failure, so a notebook runs top to bottom before the
exercises are done. A wrong answer raises ``AssertionError`` naming the input
it failed on.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NOT_DONE = "not done yet"


def _attempt(fn: Callable, *args):
    """Call the learner's function; ``None`` means "not attempted"."""
    try:
        return fn(*args)
    except NotImplementedError:
        return None


def _report(name: str, ok: bool | None, hint: str) -> bool:
    if ok is None:
        print(f"{name}: {NOT_DONE} — hint: {hint}")
        return False
    print(f"{name}: ✓ correct")
    return True


# ---------------------------------------------------------------------------
# Lesson 1: BPE
# ---------------------------------------------------------------------------


def check_get_stats(fn: Callable) -> bool:
    """``fn(ids) -> {(a, b): count}`` must count every adjacent pair, like ``bpe.get_stats``."""
    from .bpe import get_stats

    rng = random.Random(0)
    cases = [[], [7], [1, 2, 3, 1, 2], [5, 5, 5, 5]] + [[rng.randrange(6) for _ in range(rng.randrange(30))]
                                                         for _ in range(20)]
    for ids in cases:
        got = _attempt(fn, list(ids))
        if got is None:
            return _report("get_stats", None, "zip(ids, ids[1:]) walks over the adjacent pairs")
        assert dict(got) == dict(get_stats(ids)), f"get_stats({ids}) gave {dict(got)}, expected {dict(get_stats(ids))}"
    return _report("get_stats", True, "")


def check_merge(fn: Callable) -> bool:
    """``fn(ids, pair, idx)`` must replace every non-overlapping ``pair``, left to right, with ``idx``."""
    from .bpe import merge

    rng = random.Random(1)
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 9), ([5, 5, 5, 5], (5, 5), 9), ([], (1, 2), 9)]
    cases += [([rng.randrange(3) for _ in range(rng.randrange(25))], (rng.randrange(3), rng.randrange(3)), 7)
              for _ in range(30)]
    for ids, pair, idx in cases:
        got = _attempt(fn, list(ids), pair, idx)
        if got is None:
            return _report("merge", None, "walk with an index i; when ids[i], ids[i+1] is the pair, emit idx and jump by 2")
        expected = merge(ids, pair, idx)
        assert list(got) == expected, f"merge({ids}, {pair}, {idx}) gave {list(got)}, expected {expected}"
    return _report("merge", True, "")


def merges_until_single_token(tokenizer, word: str) -> int:
    """How many of ``tokenizer``'s merges it takes before ``word`` encodes as one token."""
    for k in range(len(tokenizer.merges) + 1):
        if len(tokenizer.encode(word, max_merges=k)) == 1:
            return k
    raise ValueError(f"{word!r} never becomes a single token with this tokenizer")


def check_merges_until_single_token(answer: int | None, tokenizer, word: str = " triangle") -> bool:
    """The learner's count of merges after which ``word`` is one token."""
    if answer is None:
        return _report("merges for a single token", None,
                       "encode the word with max_merges=k for growing k (or read tokenizer.merges)")
    expected = merges_until_single_token(tokenizer, word)
    assert answer == expected, f"{answer} merges is not it: after {answer} merges {word!r} is " \
        f"{tokenizer.tokens(word, max_merges=answer)}"
    return _report("merges for a single token", True, "")
