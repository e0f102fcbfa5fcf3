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


# ---------------------------------------------------------------------------
# Lesson 2: the dVAE
# ---------------------------------------------------------------------------


def check_gumbel_max(fn: Callable, n: int = 20_000) -> bool:
    """``fn(logits, n) -> n`` category ids sampled from softmax(logits) (gumbel-max, or its exponential race).

    ``logits`` is a float tensor (K,); the answer may be a tensor, an array or a
    list of ints. The check is statistical: with 20,000 draws each frequency
    must lie within 0.02 of its probability (about 6 standard errors).
    """
    import torch

    cases = [torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0, 0.0, -1.0]), torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0]),
             torch.tensor([-1.0, 0.5, 0.5, 1.5, -2.0, 0.0])]
    for logits in cases:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            got = _attempt(fn, logits.clone(), n)
        if got is None:
            return _report("gumbel_max", None, "E = -log(u) with u = torch.rand(n, K) is exponential; "
                           "(E / logits.exp()).argmin(-1) equals (logits - log(E)).argmax(-1)")
        got = torch.as_tensor(got).long().flatten()
        assert len(got) == n, f"gumbel_max(logits, {n}) returned {len(got)} samples, expected {n}"
        K = len(logits)
        assert got.min() >= 0 and got.max() < K, f"gumbel_max({logits.tolist()}) returned ids outside 0..{K - 1}"
        freq = torch.bincount(got, minlength=K).double() / n
        p = logits.double().softmax(-1)
        assert torch.allclose(freq, p, atol=0.02), (
            f"gumbel_max({logits.tolist()}): frequencies {[round(v, 3) for v in freq.tolist()]} "
            f"but softmax gives {[round(v, 3) for v in p.tolist()]}")
    return _report("gumbel_max", True, "")


def check_logit_laplace_log_prob(fn: Callable) -> bool:
    """``fn(x, mu, log_b)``: the elementwise log density of the logit-Laplace, like ``dvae.logit_laplace_log_prob``."""
    import torch

    from .dvae import logit_laplace_log_prob, map_pixels

    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([0.0]))]  # the centre: -ln 2 - 0 - 2 ln 0.5
    for shape in [(7,), (2, 3, 4, 4)]:
        x = map_pixels(torch.rand(shape, generator=g))  # mapped pixels, in [0.1, 0.9]
        cases.append((x, 3 * torch.randn(shape, generator=g), torch.randn(shape, generator=g) - 1))
    for x, mu, log_b in cases:
        got = _attempt(fn, x.clone(), mu.clone(), log_b.clone())
        if got is None:
            return _report("logit_laplace_log_prob", None,
                           "-ln 2 - ln b - ln x - ln(1 - x) - |logit(x) - mu| / b, with logit(x) = ln x - ln(1 - x)")
        expected = logit_laplace_log_prob(x, mu, log_b)
        got = torch.as_tensor(got, dtype=expected.dtype)
        assert got.shape == expected.shape, f"shape {tuple(got.shape)}, expected {tuple(expected.shape)} (elementwise)"
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (
            f"at x={x.flatten()[:3].tolist()}, mu={mu.flatten()[:3].tolist()}, log_b={log_b.flatten()[:3].tolist()}: "
            f"got {got.flatten()[:3].tolist()}, expected {expected.flatten()[:3].tolist()}")
    return _report("logit_laplace_log_prob", True, "")


def check_kl_to_uniform(fn: Callable) -> bool:
    """``fn(logits)``, logits (B, K, h, w): KL(softmax ‖ uniform) summed over each image's cells, shape (B,)."""
    import torch

    from .dvae import kl_to_uniform

    g = torch.Generator().manual_seed(1)
    cases = [torch.zeros(2, 8, 3, 3), 5 * torch.randn(3, 16, 2, 2, generator=g), torch.randn(1, 512, 8, 8, generator=g)]
    for logits in cases:
        got = _attempt(fn, logits.clone())
        if got is None:
            return _report("kl_to_uniform", None, "log_q = log_softmax over dim 1; "
                           "KL = (q * log_q).sum(1) + ln K per cell, then sum the cells")
        expected = kl_to_uniform(logits)
        got = torch.as_tensor(got, dtype=expected.dtype)
        assert got.shape == expected.shape, (
            f"logits {tuple(logits.shape)}: shape {tuple(got.shape)}, expected (B,) = {tuple(expected.shape)}")
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (
            f"logits {tuple(logits.shape)}: got {got.tolist()}, expected {expected.tolist()}")
    return _report("kl_to_uniform", True, "")
