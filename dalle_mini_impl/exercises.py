"""Checkers for the lessons' exercises.

Each ``check_*`` function takes the learner's answer, compares it with the
package on several inputs, and prints a one-line verdict. An answer that is not
written yet (a function that raises ``NotImplementedError`` or returns ``None``)
gets a hint instead of a failure, so a notebook runs top to bottom before the
exercises are done. A wrong answer raises ``AssertionError`` naming the input
it failed on.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable

NOT_DONE = "not done yet"


def _attempt(fn: Callable, *args, without: tuple[str, str] | list[tuple[str, str]] | None = None):
    """Call the learner's function; ``None`` means "not attempted".

    ``without``: ``(path, name)``, or a list of them, of the package function
    the exercise asks the learner to rebuild: ``dmi.<path>.<name>``, where
    ``path`` is a module (``"sampling"``) or a class in one
    (``"bpe.ByteLevelBPE"``: a tokenizer the learner already holds has its
    class's methods). While the attempt runs each of them raises, so an answer
    that only calls them fails (the checker compares against the originals,
    which it took before).
    """
    targets = [without] if isinstance(without, tuple) else list(without or [])
    owners = []
    for path, name in targets:
        module, _, cls = path.partition(".")
        owner = importlib.import_module(f"{__package__}.{module}")
        if cls:
            owner = getattr(owner, cls)
        owners.append((owner, name, vars(owner)[name]))
    called = " or ".join(f"dmi.{path}.{name}" for path, name in targets)

    def refuse(*_args, **_kwargs):
        raise AssertionError(f"write it yourself: this answer calls {called}, "
                             "the function the exercise asks you to rebuild")

    for owner, name, _ in owners:
        setattr(owner, name, refuse)
    try:
        return fn(*args)
    except NotImplementedError:
        return None
    finally:
        for owner, name, original in owners:
            setattr(owner, name, original)


def _report(name: str, ok: bool | None, hint: str) -> bool:
    if ok is None:
        print(f"{name}: {NOT_DONE} — hint: {hint}")
        return False
    print(f"{name}: ✓ correct")
    return True


# ---------------------------------------------------------------------------
# Lesson 1: BPE
# ---------------------------------------------------------------------------


def _recount(words: list) -> dict:
    """Every pair count of a corpus of ``(ids, count)`` words, from scratch: what the incremental update must equal."""
    from .bpe import get_stats

    stats = {}  # (int, int) -> int
    for ids, count in words:
        get_stats(ids, stats, weight=count)
    return stats


def check_update_pair_counts(fn: Callable) -> bool:
    """``fn(word, count, pair, new_id, stats) -> stats``: one word's share of a merge, as ``train`` counts it.

    ``word`` is a tuple of ids occurring ``count`` times, ``stats`` the pair
    counts of the whole corpus (a dict, which the answer may update in place or
    copy). After merging ``pair`` into ``new_id`` in this one word, the counts
    must equal a full recount of the corpus, with pairs that reach 0 removed, as
    the trainer removes them. The corpora are random and not shown to the
    learner; each merge is the most frequent pair, as in training, and every word
    is visited, also those without the pair (the trainer's index may list a word
    that no longer holds it).

    No package function does this update on its own (``train`` does it inline),
    so ``get_stats`` and ``merge`` are fair building blocks here.
    """
    from .bpe import merge

    hint = ("every pair of the old word loses `count`, every pair of the merged word gains `count`; "
            "delete the pairs whose count falls to 0")
    rng = random.Random(3)
    corpora = [[((97, 97, 97, 97), 1)],  # "a a a a" with (a, a): the merged pair overlaps itself
               [((97, 97, 97), 2), ((98, 97, 97, 98), 5)],
               [((1, 2, 1, 2, 1), 3), ((2, 1), 2), ((1, 2), 4)]]
    corpora += [[(tuple(rng.randrange(alphabet) for _ in range(rng.randrange(1, 11))), rng.randrange(1, 6))
                 for _ in range(rng.randrange(3, 12))] for alphabet in (2, 3, 3, 4) for _ in range(3)]
    for corpus in corpora:
        words = list(corpus)  # list of (tuple of int, int)
        for new_id in range(100, 104):  # four merges in a row
            stats = _recount(words)
            if not stats:
                break
            pair = min(stats, key=lambda p: (-stats[p], p))
            for i, (word, count) in enumerate(words):
                given = dict(stats)
                got = _attempt(fn, word, count, pair, new_id, given)
                if got is None:
                    assert given == stats, "update_pair_counts changed `stats` but returned None: end with `return stats`"
                    return _report("update_pair_counts", None, hint)
                words[i] = (tuple(merge(list(word), pair, new_id)), count)
                expected = _recount(words)
                where = (f"merging {pair} -> {new_id} in the word {word} (count {count}), "
                         f"with the corpus counts {stats}")
                assert isinstance(got, dict), f"update_pair_counts returned {type(got).__name__}, expected a dict"
                zeros = sorted(p for p, c in got.items() if c == 0)
                assert not zeros, f"{where}: the pairs {zeros} are left with count 0; delete them, as the trainer does"
                assert got == expected, f"{where}: got {got}, expected {expected} (a full recount)"
                stats = expected
    return _report("update_pair_counts", True, "")


def check_encode_piece(fn: Callable) -> bool:
    """``fn(ids, ranks) -> ids``: BPE on one pre-tokenized piece, like ``ByteLevelBPE._encode_piece``.

    ``ids`` are the piece's byte tokens before any merge; ``ranks`` maps a pair
    of ids to ``(rank, merged id)``. The answer must merge the present pair of
    lowest rank (everywhere in the piece, left to right), and repeat until no
    pair of the piece has a rank. The tokenizers are trained on random words the
    learner does not see, where merging in another order (the leftmost mergeable
    pair first, say) gives other tokens.
    """
    from .bpe import ByteLevelBPE, to_byte_chars

    hint = ("find the pair of the piece with the smallest rank (zip(ids, ids[1:]) and ranks.get), "
            "merge it everywhere (dmi.bpe.merge), repeat until no pair is in ranks")
    cases = [(ByteLevelBPE.train(["aaa"], vocab_size=258), ["aaaa", "aaa", "aaaaa", "a", ""])]  # merges a a, aa a
    rng = random.Random(2)
    for alphabet, n_merges in [("ab", 6), ("abc", 12), ("abcd", 25), ("abcdé", 40)]:
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(2, 9))) for _ in range(60)]
        tok = ByteLevelBPE.train(words, vocab_size=256 + n_merges)
        cases.append((tok, ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 13))) for _ in range(25)]))
    for tok, words in cases:
        for word in words:
            ids = [tok._byte_ids[b] for b in word.encode("utf-8")]  # the piece as byte tokens
            expected = tok._encode_piece(to_byte_chars(word), None)
            got = _attempt(fn, list(ids), dict(tok._ranks),
                           without=[("bpe.ByteLevelBPE", "_encode_piece"), ("bpe.ByteLevelBPE", "encode")])
            if got is None:
                return _report("encode_piece", None, hint)
            got = list(got)
            if got != expected:
                def spell(ids):
                    return [tok.id_to_token(i) if isinstance(i, int) and 0 <= i < tok.vocab_size else i for i in ids]

                raise AssertionError(
                    f"encode_piece({ids}) for {word!r} with the merges {tok.merges} (rank 0 first): got {got} = "
                    f"{spell(got)}, expected {expected} = {spell(expected)}")
    return _report("encode_piece", True, "")


def check_decode(fn: Callable) -> bool:
    """``fn(ids, id_to_bytes) -> str``: the text of a list of ids, like ``ByteLevelBPE.decode``.

    ``id_to_bytes`` is a list: ``id_to_bytes[i]`` is the bytes of token ``i``.
    Any list of ids must decode, including one cut in the middle of a multi-byte
    character: the answer must equal ``bytes.decode("utf-8", errors="replace")``
    of all the tokens' bytes joined. The cases are a tokenizer trained on text the
    learner does not see (cut at every position) and random byte tables.
    """
    from .bpe import ByteLevelBPE

    hint = ("join the bytes of all the ids first (b\"\".join), then decode once; "
            "bytes.decode has an errors= argument")
    rng = random.Random(4)
    tok = ByteLevelBPE.train(["naïve café, Straße über 中文 🎨🟦\n", "a café on the corner\n"] * 3, vocab_size=300)
    cases = []  # (ids, id_to_bytes)
    for text in ["café 🎨", "über Straße", "naïve 中文 🟦 ok", "ü🎨é"]:
        for max_merges in (0, None):
            ids = tok.encode(text, max_merges=max_merges)
            cases += [(ids[i:j], tok._id_to_bytes) for i in range(len(ids)) for j in range(i, len(ids) + 1)]
    for _ in range(3):  # random tokens of 1 to 3 bytes, many of them not valid UTF-8 on their own
        table = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))) for _ in range(40)]
        cases += [([rng.randrange(40) for _ in range(rng.randrange(12))], table) for _ in range(40)]
    for ids, table in cases:
        expected = b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
        got = _attempt(fn, list(ids), list(table), without=("bpe.ByteLevelBPE", "decode"))
        if got is None:
            return _report("decode", None, hint)
        assert got == expected, (f"decode({ids}) with the tokens' bytes {[table[i] for i in ids]}: "
                                 f"got {got!r}, expected {expected!r}")
    return _report("decode", True, "")


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
        got = _attempt(fn, x.clone(), mu.clone(), log_b.clone(), without=("dvae", "logit_laplace_log_prob"))
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
        got = _attempt(fn, logits.clone(), without=("dvae", "kl_to_uniform"))
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


# ---------------------------------------------------------------------------
# Lesson 3: sparse attention and the transformer
# ---------------------------------------------------------------------------


def check_build_mask(fn: Callable) -> bool:
    """``fn(kind, text_len, grid, kernel) -> (S, S)`` bool mask, like ``attention.build_mask``, for row, column and conv."""
    import torch

    from .attention import build_mask

    sizes = [(6, 4, 3), (3, 5, 3), (4, 6, 5), (32, 8, 5)]
    for kind in ("row", "column", "conv"):
        for text_len, grid, kernel in sizes:
            got = _attempt(fn, kind, text_len, grid, kernel, without=("attention", "build_mask"))
            if got is None:
                return _report("build_mask", None, "index tensors i = arange(N).view(N, 1), j = arange(N).view(1, N) "
                               "give every (query code, key code) pair at once; rows r = i // G, columns c = i % G")
            expected = build_mask(kind, text_len, grid, kernel)
            got = torch.as_tensor(got).bool()
            case = f"build_mask({kind!r}, text_len={text_len}, grid={grid}, kernel={kernel})"
            assert got.shape == expected.shape, f"{case}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
            wrong = (got != expected).nonzero()
            if len(wrong):
                q, k = wrong[0].tolist()
                raise AssertionError(f"{case}: {len(wrong)} wrong entries, the first at query {q}, key {k}: "
                                     f"got {bool(got[q, k])}, expected {bool(expected[q, k])}")
    return _report("build_mask", True, "")


def check_top_p_filter(fn: Callable) -> bool:
    """``fn(logits, p)``, logits (B, V): the same logits with every token outside the nucleus set to -inf."""
    import torch

    from .sampling import top_p_filter

    g = torch.Generator().manual_seed(3)
    cases = [(torch.tensor([[0.1, 0.6, 0.3]]).log(), 0.7), (torch.tensor([[0.1, 0.6, 0.3]]).log(), 0.5),
             (torch.tensor([[0.5, 0.3, 0.2]]).log(), 1.0), (torch.zeros(2, 8), 0.3)]
    cases += [(3 * torch.randn(4, 50, generator=g), p) for p in (0.05, 0.5, 0.9, 0.99)]
    for logits, p in cases:
        got = _attempt(fn, logits.clone(), p, without=("sampling", "top_p_filter"))
        if got is None:
            return _report("top_p_filter", None, "sort descending, cumsum the probabilities, drop a token when "
                           "the tokens ranked above it already hold >= p, then scatter back to vocabulary order")
        expected = top_p_filter(logits, p)
        got = torch.as_tensor(got, dtype=expected.dtype)
        assert got.shape == expected.shape, f"top_p_filter(p={p}): shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        kept, kept_expected = torch.isfinite(got), torch.isfinite(expected)
        # tied logits may be ordered either way: which of them survive is free, how many and how likely is not
        assert torch.equal(kept.sum(-1), kept_expected.sum(-1)), (
            f"top_p_filter(p={p}) on logits {tuple(logits.shape)}: kept {kept.sum(-1).tolist()} tokens per row, "
            f"expected {kept_expected.sum(-1).tolist()}")
        lowest_kept = logits.masked_fill(~kept, float("inf")).min(-1).values  # (B,)
        highest_dropped = logits.masked_fill(kept, float("-inf")).max(-1).values  # (B,)
        assert bool((lowest_kept >= highest_dropped).all()), (
            f"top_p_filter(p={p}): a token was dropped while a less likely one was kept")
        assert torch.allclose(got[kept], logits[kept]), f"top_p_filter(p={p}): the kept logits must be unchanged"
    return _report("top_p_filter", True, "")


def check_next_token_loss(fn: Callable) -> bool:
    """``fn(text_logits, image_logits, text, codes)``: the scalar 1/8 · text CE + 7/8 · image CE, like ``next_token_loss``."""
    import torch

    from .transformer import next_token_loss

    g = torch.Generator().manual_seed(4)
    for B, Lt, N, Vt, Vi in [(1, 4, 4, 10, 6), (3, 8, 16, 40, 24), (2, 32, 64, 515, 512)]:
        text_logits = 2 * torch.randn(B, Lt - 1, Vt, generator=g)
        image_logits = 2 * torch.randn(B, N, Vi, generator=g)
        text = torch.randint(0, Vt, (B, Lt), generator=g)
        codes = torch.randint(0, Vi, (B, N), generator=g)
        got = _attempt(fn, text_logits, image_logits, text, codes, without=("transformer", "next_token_loss"))
        if got is None:
            return _report("next_token_loss", None, "text targets are text[:, 1:]; F.cross_entropy wants "
                           "(rows, V) logits and (rows,) targets: flatten(0, 1) both")
        expected = next_token_loss(text_logits, image_logits, text, codes).loss
        got = torch.as_tensor(got, dtype=expected.dtype)
        assert got.numel() == 1, f"the loss must be one number, got shape {tuple(got.shape)}"
        assert torch.allclose(got.reshape(()), expected, atol=1e-4), (
            f"B={B}, Lt={Lt}, N={N}: got {got.item():.4f}, expected {expected.item():.4f}")
    return _report("next_token_loss", True, "")


# ---------------------------------------------------------------------------
# Lesson 4: CLIP and reranking
# ---------------------------------------------------------------------------


def check_contrastive_loss(fn: Callable) -> bool:
    """``fn(image_emb, text_emb, logit_scale, positives)``: the symmetric InfoNCE loss, like ``clip.contrastive_loss``.

    ``image_emb``, ``text_emb``: unit vectors (B, E); ``logit_scale``: a float;
    ``positives``: None, or a (B, B) bool mask of the pairs that are equally
    right (identical captions), whose targets are then spread evenly.
    """
    import torch
    import torch.nn.functional as F

    from .clip import contrastive_loss

    g = torch.Generator().manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    dup = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)  # 0 and 2 alike
    cases = [(torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 1.0, None),  # the docstring's 0.5514
             (unit(5, 8), unit(5, 8), 10.0, None), (unit(4, 8), unit(4, 8), 20.0, dup),
             (unit(6, 16), unit(6, 16), 3.0, torch.eye(6, dtype=torch.bool))]
    for v, t, s, positives in cases:
        got = _attempt(fn, v.clone(), t.clone(), s, None if positives is None else positives.clone(),
                       without=("clip", "contrastive_loss"))
        if got is None:
            return _report("contrastive_loss", None,
                           "logits = s · v tᵀ; the mean of the cross-entropy over rows (image -> text) and over "
                           "columns (logits.T, text -> image); with positives, the target of row i is "
                           "positives[i] / positives[i].sum()")
        expected = contrastive_loss(v, t, s, positives)
        got = torch.as_tensor(got, dtype=expected.dtype)
        where = f"B = {len(v)}, s = {s}, " + ("no positives" if positives is None else "positives " +
                                            str(positives.int().tolist()))
        assert got.numel() == 1, f"{where}: the loss must be one number, got shape {tuple(got.shape)}"
        assert torch.allclose(got.reshape(()), expected, atol=1e-6), f"{where}: got {got.item():.6f}, " \
            f"expected {expected.item():.6f}"
    return _report("contrastive_loss", True, "")


def check_expected_top1(fn: Callable) -> bool:
    """``fn(scores, matches, n)``: for one prompt's M candidates (NumPy (M,) floats and bools), the graded match
    rate of CLIP's favourite among n drawn at random, averaged over all n-subsets (``clip.expected_top1_match``)."""
    import numpy as np

    from .clip import expected_top1_match

    rng = np.random.default_rng(0)
    cases = [(np.array([0.9, 0.5, 0.1]), np.array([False, True, True]), 2)]  # the docstring's 1/3
    for M in (1, 4, 7, 32):
        scores, matches = rng.random(M), rng.random(M) < 0.4
        cases += [(scores, matches, n) for n in sorted({1, min(2, M), max(1, M // 2), M})]
    for scores, matches, n in cases:
        got = _attempt(fn, scores.copy(), matches.copy(), n, without=("clip", "expected_top1_match"))
        if got is None:
            return _report("expected_top1", None, "sort the candidates best first; the one of rank r (0 = best) is "
                           "the top of a random n-subset with probability comb(M - 1 - r, n - 1) / comb(M, n)")
        expected = expected_top1_match(scores, matches, n)
        assert abs(float(got) - expected) < 1e-9, (
            f"M = {len(scores)}, n = {n}, matches {matches.astype(int).tolist()}: got {float(got):.6f}, "
            f"expected {expected:.6f}")
    return _report("expected_top1", True, "")


def recall_at_k(sims, k: int) -> float:
    """Text -> image recall@k: the fraction of captions j whose own image j is among the k most similar to it.

    ``sims``: (N, N), row i = image i, column j = caption j. Ties count against
    the caption (its image must beat all but k - 1 others). Example: sims
    [[0.9, 0.6], [0.8, 0.2]], k = 1 -> 0.5 (caption 1 prefers image 0).
    """
    import numpy as np

    s = np.asarray(sims.detach().cpu() if hasattr(sims, "detach") else sims, dtype=np.float64)  # (N, N)
    own = np.diag(s)  # (N,)
    better = (s > own[None, :]).sum(axis=0) + ((s == own[None, :]).sum(axis=0) - 1)  # (N,): images not behind it
    return float((better < k).mean())


def check_recall_at_k(fn: Callable) -> bool:
    """``fn(sims, k)``: text -> image recall@k of an (N, N) similarity matrix (rows images, columns captions)."""
    import numpy as np

    rng = np.random.default_rng(1)
    cases = [(np.array([[0.9, 0.6], [0.8, 0.2]]), 1), (np.eye(4), 1)]
    for n in (5, 12):
        s = rng.random((n, n)) + 0.5 * np.eye(n)
        cases += [(s, k) for k in (1, 3, n)]
    for sims, k in cases:
        got = _attempt(fn, sims.copy(), k)
        if got is None:
            return _report("recall_at_k", None, "for caption j, count the images whose similarity to it beats "
                           "sims[j, j]; it is a hit when fewer than k do")
        expected = recall_at_k(sims, k)
        assert abs(float(got) - expected) < 1e-9, f"N = {len(sims)}, k = {k}: got {float(got)}, expected {expected}"
    return _report("recall_at_k", True, "")


# ---------------------------------------------------------------------------
# Capstone (lesson 5): the whole pipeline, evaluated
# ---------------------------------------------------------------------------


def check_generate(fn: Callable, models) -> bool:
    """``fn(prompt, models, candidates, keep, seed)`` -> ``(images, scores)``: the pipeline rebuilt from its parts.

    Tokenize, sample ``candidates`` code grids with one ``torch.Generator``
    seeded with ``seed`` (the package's default temperature and condition scale,
    ``defaults.TEMPERATURE`` and ``defaults.CONDITION_SCALE``), decode them, rerank
    with ``models.clip`` and keep the best ``keep``: uint8 images (K, H, W, C)
    and their float scores (K,). Compared with ``pipeline.generate``, which the
    attempt itself may not call.
    """
    import numpy as np

    from .defaults import CONDITION_SCALE, TEMPERATURE
    from .pipeline import generate

    device = str(models.transformer.image_head.weight.device)
    cases = [("a large red circle in the top left", 4, 2, 0), ("a small blue square to the left of a green cross", 3, 3, 1)]
    for prompt, candidates, keep, seed in cases:
        got = _attempt(fn, prompt, models, candidates, keep, seed, without=("pipeline", "generate"))
        if got is None:
            return _report("generate", None, "encode_captions -> repeat N times -> sampling.sample_images "
                           "(generator=torch.Generator(device).manual_seed(seed), temperature=defaults.TEMPERATURE, "
                           "condition_scale=defaults.CONDITION_SCALE) -> clip.rerank -> the first K")
        images, scores = got
        want = generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates, keep=keep,
                        seed=seed, temperature=TEMPERATURE, condition_scale=CONDITION_SCALE, clip_model=models.clip,
                        device=device)[0]
        where = f"{prompt!r}, N = {candidates}, K = {keep}, seed {seed}"
        images = np.asarray(images)
        assert images.shape == want.images.shape, f"{where}: images of shape {images.shape}, expected {want.images.shape}"
        assert np.array_equal(images, want.images), f"{where}: not the images generate keeps (same seed, same order?)"
        if want.scores is not None:
            assert scores is not None and np.allclose(np.asarray(scores, dtype=np.float32), want.scores, atol=1e-5), \
                f"{where}: scores {scores}, expected {want.scores.tolist()}"
    return _report("generate", True, "")


def match_rates(prompts: list[dict], keep: int) -> dict[str, float]:
    """The three rates of an evaluation from its per-caption records (``report["prompts"]``).

    Each record has ``matches`` (N bools, in sampling order) and ``ranking``
    (candidate indices, best first). ``random``: the mean over captions of the
    mean match; ``top1``: of ``matches[ranking[0]]``; ``any_of_top_k``: of
    whether any of ``matches[ranking[:keep]]`` holds.
    Example: one caption, matches [F, T, F], ranking [2, 1, 0], keep 2 -> random 1/3, top1 0, any_of_top_k 1.
    """
    import numpy as np

    m = [np.asarray(r["matches"], dtype=bool) for r in prompts]
    order = [np.asarray(r["ranking"]) for r in prompts]
    return {"random": float(np.mean([x.mean() for x in m])),
            "top1": float(np.mean([x[o[0]] for x, o in zip(m, order)])),
            "any_of_top_k": float(np.mean([x[o[:keep]].any() for x, o in zip(m, order)]))}


def check_match_rates(fn: Callable) -> bool:
    """``fn(prompts, keep)`` -> ``{"random", "top1", "any_of_top_k"}`` from an evaluation's ``report["prompts"]``."""
    import numpy as np

    rng = np.random.default_rng(0)
    cases = [([{"matches": [False, True, False], "ranking": [2, 1, 0]}], 2)]  # the docstring's example
    for n_prompts, n in ((5, 4), (12, 8), (3, 1)):
        records = [{"matches": (rng.random(n) < 0.4).tolist(), "ranking": rng.permutation(n).tolist()}
                   for _ in range(n_prompts)]
        cases += [(records, k) for k in sorted({1, max(1, n // 2), n})]
    for records, keep in cases:
        got = _attempt(fn, [dict(r) for r in records], keep)
        if got is None:
            return _report("match_rates", None, "per caption: mean(matches), matches[ranking[0]], "
                           "any(matches[i] for i in ranking[:keep]); then the mean of each over the captions")
        expected = match_rates(records, keep)
        for key, value in expected.items():
            assert key in got, f"the answer has no {key!r} entry (keys: {sorted(got)})"
            assert abs(float(got[key]) - value) < 1e-9, (
                f"{len(records)} captions of {len(records[0]['matches'])} candidates, keep {keep}: {key} "
                f"{float(got[key]):.4f}, expected {value:.4f}")
    return _report("match_rates", True, "")


def check_failure_counts(fn: Callable) -> bool:
    """``fn(grades)`` -> ``{check: how many gradable grades fail it}`` for every check of ``grader.CHECKS``."""
    import numpy as np

    from . import grader, shapes
    from .grader import failure_counts

    scenes = shapes.make_scenes("test", 12, seed=3)
    images = shapes.render_batch(scenes)
    wrong = [scenes[(i + 1) % len(scenes)].caption for i in range(len(scenes))]  # each image against another caption
    blank = np.full_like(images[0], 255)
    cases = [[grader.grade(im, s.caption) for im, s in zip(images, scenes)],  # all match: every count 0
             [grader.grade(im, c) for im, c in zip(images, wrong)],
             [grader.grade(blank, "a red circle"), grader.grade(images[0], "a cat on a mat")]]  # count; ungradable
    for grades in cases:
        got = _attempt(fn, list(grades), without=("grader", "failure_counts"))
        if got is None:
            return _report("failure_counts", None, "for each name in grader.CHECKS, count the gradable grades whose "
                           "checks[name] is False (None means the caption does not state it)")
        expected = {k: v for k, v in failure_counts(grades).items() if v}  # checks left out count as 0
        got = {k: int(v) for k, v in dict(got).items() if int(v)}
        assert got == expected, f"{len(grades)} grades: got {got}, expected {expected} (checks not listed: 0)"
    return _report("failure_counts", True, "")
