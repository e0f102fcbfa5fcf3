"""Byte-level BPE (byte-pair encoding), trained from scratch.

Scope
-----
A tokenizer turns any text into a list of integer ids and back. This module
builds the byte-level BPE tokenizer that GPT-2 introduced, in four steps:

1. **Pre-tokenize**: split the text into word-like pieces with the GPT-2 regex
   (``GPT2_SPLIT_PATTERN``), so that merges never cross a word boundary, and
   write each piece's UTF-8 bytes as printable characters (``bytes_to_unicode``:
   the space byte becomes ``"Ġ"``, the newline byte ``"Ċ"``).
2. **Start from the 256 bytes**: every byte is a token, so any text can be
   encoded and nothing is ever "unknown".
3. **Train**: repeatedly find the most frequent pair of adjacent tokens and
   merge it into a new token, until the vocabulary has ``vocab_size`` entries.
   ``ByteLevelBPE.train_naive`` recounts every pair after every merge (short,
   the version to read first); ``ByteLevelBPE.train`` only updates the counts
   around the places that changed (an index from pairs to words plus a lazy
   max-heap), and gives exactly the same result, much faster.
4. **Encode / decode**: apply the learned merges in training order to each
   piece; decoding joins the pieces' bytes and reads them as UTF-8.

References followed
-------------------
- GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask
  Learners"): the split regex and the byte -> printable character map.
- Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword
  Units": the merge loop itself.
- The conventions of Hugging Face ``tokenizers`` (``models.BPE`` trained by
  ``trainers.BpeTrainer`` with the ``ByteLevel`` pre-tokenizer and
  ``initial_alphabet=ByteLevel.alphabet()``), which this module reproduces merge
  for merge and id for id:

  * ids: special tokens first, then the 256 byte characters sorted by their
    code point (``"!"`` = 33 comes first, ``"Ā"`` = 256 after ``"ÿ"``), then one
    id per new merged string;
  * the most frequent pair wins; equal counts go to the smallest
    ``(left_id, right_id)``;
  * inside a piece, a pair is merged left to right without overlap
    (``"aaa"`` -> ``"aa" "a"``), and each piece counts as many times as it occurs;
  * training stops at ``vocab_size`` entries (specials and the 256 bytes
    included), or earlier when no pair is left or the best count is below
    ``min_frequency``;
  * a merge whose string already has an id (for instance a special token
    spelled like ordinary text) is recorded in ``merges`` but reuses that id,
    so the vocabulary does not grow that step;
  * special tokens that appear literally in the text are cut out before
    pre-tokenization when encoding (but not when training).

Does not handle
---------------
- Text normalization (Unicode NFC/NFKC, lower-casing): text is taken as is.
- ``add_prefix_space``: ``" hello"`` and ``"hello"`` are different pieces, as in
  GPT-2.
- Other split patterns (the GPT-4 pattern), ``continuing_subword_prefix``,
  ``end_of_word_suffix``, ``limit_alphabet``, ``max_token_length`` and BPE
  dropout.
- Special tokens that are a single character of the byte alphabet (such as
  ``"a"`` or ``"Ġ"``): they would take the place of a byte, so they are refused.
- Offsets (which characters each id came from), padding and truncation.
- Characters assigned only in the newest Unicode version: the ``regex`` module
  and HF's regex engine may disagree on whether they are letters, and then split
  the text differently (every older character splits the same way).
- Large corpora: this is single-threaded Python that keeps every distinct word
  in memory. It is fine for megabytes (``bench/bench_bpe.py`` prints figures);
  for gigabytes use Hugging Face ``tokenizers``.

Example
-------
>>> tok = ByteLevelBPE.train(["a small red circle\\n", "a big red square\\n"] * 3, vocab_size=262)
>>> tok.merges[:4]
[('r', 'e'), ('Ġ', 's'), ('Ġ', 're'), ('Ġre', 'd')]
>>> tok.tokens("a red circle")
['a', ' red', ' ', 'c', 'i', 'r', 'c', 'l', 'e']
>>> tok.decode(tok.encode("any text, even 🙂")) == "any text, even 🙂"
True
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import regex

__all__ = [
    "GPT2_SPLIT_PATTERN", "bytes_to_unicode", "to_byte_chars", "from_byte_chars", "pretokenize", "split_lines",
    "get_stats", "merge", "ByteLevelBPE",
]

# ---------------------------------------------------------------------------
# 1. Pre-tokenization: the GPT-2 regex and the byte -> character map
# ---------------------------------------------------------------------------

# Contractions, then an optional space followed by letters / digits / other
# symbols, then runs of whitespace. `\s+(?!\S)` leaves the last space of a run
# for the next word, so " hello" keeps its leading space.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT_RE = regex.compile(GPT2_SPLIT_PATTERN)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each of the 256 byte values to a printable character.

    Bytes that are already printable (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
    map to themselves; the 68 others (control bytes, space, ...) are given the
    characters from U+0100 on, in byte order. Every token is then a plain
    string with no spaces or control characters in it.

    Example: ``bytes_to_unicode()[ord("a")] == "a"``, ``[32] == "Ġ"`` (space),
    ``[10] == "Ċ"`` (newline), ``[0] == "Ā"``.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_to_char = {b: chr(b) for b in printable}  # int -> str
    n = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(256 + n)
            n += 1
    return dict(sorted(byte_to_char.items()))


BYTE_TO_CHAR = bytes_to_unicode()  # int -> str, e.g. 32 -> "Ġ"
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}  # str -> int, e.g. "Ġ" -> 32


def to_byte_chars(text: str) -> str:
    """Write the UTF-8 bytes of ``text`` as byte-level characters.

    Example: ``"é!"`` is bytes ``c3 a9 21`` -> ``"Ã©!"``; ``" a"`` -> ``"Ġa"``.
    """
    # latin-1 turns each byte b into the character chr(b); translate then maps ord -> printable character.
    return text.encode("utf-8").decode("latin-1").translate(BYTE_TO_CHAR)


def from_byte_chars(chars: str) -> bytes:
    """The inverse of ``to_byte_chars``: ``"Ġa"`` -> ``b" a"``."""
    return bytes(CHAR_TO_BYTE[c] for c in chars)


def visible(piece: str) -> str:
    """Make white space readable, to print or draw a token: ``" red\\n"`` -> ``"·red⏎"``."""
    return piece.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")


def pretokenize(text: str) -> list[str]:
    """Split ``text`` with the GPT-2 regex, then write each piece in byte-level characters.

    Example: ``"Hello world!\\n"`` -> ``["Hello", "Ġworld", "!", "Ċ"]`` and
    ``"it's 42 €"`` -> ``["it", "'s", "Ġ42", "ĠâĤ¬"]`` (``€`` is 3 bytes).
    """
    return [to_byte_chars(piece) for piece in _SPLIT_RE.findall(text)]


def split_lines(text: str) -> list[str]:
    """Cut ``text`` into lines that keep their ``"\\n"``: the training sequences.

    Only ``"\\n"`` ends a line (unlike ``str.splitlines``, which also cuts at
    ``"\\r"``, ``"\\x0c"``, ``"\\u2028"``, ...).

    Example: ``"a\\nb\\n\\nc"`` -> ``["a\\n", "b\\n", "\\n", "c"]``.
    """
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]  # list of str
    if lines[-1]:
        out.append(lines[-1])
    return out


# ---------------------------------------------------------------------------
# 2. The two helpers of every BPE: count adjacent pairs, merge one pair
# ---------------------------------------------------------------------------


def get_stats(ids, counts=None, weight: int = 1) -> dict:
    """Count each pair of adjacent ids, adding ``weight`` per occurrence.

    Pass ``counts`` to add to an existing dict (to count over many words), and
    ``weight`` when ``ids`` stands for a word that occurs ``weight`` times.

    Example: ``[1, 2, 3, 1, 2]`` -> ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``.
    Overlaps count: ``[7, 7, 7]`` -> ``{(7, 7): 2}``.
    """
    counts = {} if counts is None else counts  # (int, int) -> int
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids, pair, idx) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``idx``, left to right, without overlap.

    Example: ``merge([1, 2, 3, 1, 2], (1, 2), 4)`` -> ``[4, 3, 4]``;
    ``merge([7, 7, 7], (7, 7), 8)`` -> ``[8, 7]`` (the leftmost pair wins).
    """
    out = []  # list of int
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---------------------------------------------------------------------------
# 3. The tokenizer
# ---------------------------------------------------------------------------

_FORMAT = "dalle_mini_impl.bpe.ByteLevelBPE"
_FORMAT_VERSION = 1


def _word_counts(texts: Iterable[str]) -> Counter:
    """How often each pre-tokenized piece occurs over all training sequences.

    Example: ``["a cat\\n", "a cat\\n"]`` -> ``{"a": 2, "Ġcat": 2, "Ċ": 2}``.
    """
    if isinstance(texts, str):
        raise TypeError(
            "texts must be an iterable of strings (one training sequence each), not one string; "
            "use split_lines(text) to train on the lines of a text"
        )
    counts = Counter()  # str -> int
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"every training sequence must be a str, got {type(text).__name__}")
        counts.update(pretokenize(text))
    return counts


def _initial_vocab(vocab_size: int, special_tokens: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Special tokens first, then the 256 byte characters sorted by code point.

    Returns ``(vocab, specials)`` where ``vocab`` maps token string -> id and
    ``specials`` is the list of special tokens without repeats.
    """
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a list of strings, e.g. ['<|pad|>'], not one string")
    specials = list(dict.fromkeys(special_tokens))  # keeps order, drops repeats
    for token in specials:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
        if token in CHAR_TO_BYTE:
            raise ValueError(
                f"special token {token!r} is a single character of the byte alphabet and would replace "
                f"byte {CHAR_TO_BYTE[token]}; use a longer string such as '<|{token}|>'"
            )
    vocab = {token: i for i, token in enumerate(specials)}  # str -> int
    for char in sorted(CHAR_TO_BYTE):  # sorted by code point: "!" ... "~" ... "ÿ", "Ā" ... "Ń"
        vocab[char] = len(vocab)
    if not isinstance(vocab_size, int) or vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: the {len(specials)} special token(s) and the 256 bytes "
            f"already take {len(vocab)} ids; pass vocab_size >= {len(vocab)} "
            f"({len(vocab)} means no merges at all)"
        )
    return vocab, specials


def _add_merge(vocab: dict[str, int], id_to_token: list[str], pair: tuple[int, int]) -> tuple[int, tuple[str, str]]:
    """Give the merged string of ``pair`` an id: a new one, or the one it already has.

    Returns ``(id, (left_string, right_string))``.
    """
    left, right = id_to_token[pair[0]], id_to_token[pair[1]]
    merged = left + right
    if merged not in vocab:  # the usual case: a brand-new token
        vocab[merged] = len(id_to_token)
        id_to_token.append(merged)
    return vocab[merged], (left, right)


class ByteLevelBPE:
    """A trained byte-level BPE tokenizer: a vocabulary plus an ordered list of merges.

    Build one with ``ByteLevelBPE.train(texts, vocab_size)`` (or ``train_naive``),
    or read one with ``ByteLevelBPE.load(path)``.

    Example (the Wikipedia text; after ``a a`` the pairs ``aa a`` and ``a b``
    both occur twice, and the tie goes to the smaller ids: ``a`` (64) < ``aa`` (256)):

    >>> tok = ByteLevelBPE.train(["aaabdaaabac"], vocab_size=259)
    >>> tok.merges
    [('a', 'a'), ('a', 'b'), ('aa', 'ab')]
    >>> tok.encode("aaabdaaabac"), tok.tokens("aaabdaaabac")
    ([258, 67, 258, 64, 66], ['aaab', 'd', 'aaab', 'a', 'c'])
    """

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]], special_tokens: Iterable[str] = ()):
        self.vocab = dict(vocab)  # str -> int: byte-level token string (or special token text) -> id
        self.merges = [tuple(m) for m in merges]  # list of (str, str), in training order
        self.special_tokens = list(special_tokens)  # list of str, cut out of the text before encoding
        self._build()

    def _build(self) -> None:
        """Check the vocabulary and merges, then make the lookup tables used by encode/decode."""
        n = len(self.vocab)
        if sorted(self.vocab.values()) != list(range(n)):
            raise ValueError("vocab ids must be exactly 0 .. len(vocab)-1, each used once")
        self._id_to_token = [""] * n  # list of str, id -> token string
        for token, i in self.vocab.items():
            self._id_to_token[i] = token
        missing = [t for t in self.special_tokens if t not in self.vocab]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self._special_ids = {self.vocab[t] for t in self.special_tokens}  # set of int
        # The bytes each id stands for: special tokens stand for their own text.
        self._id_to_bytes = []  # list of bytes, id -> bytes
        for i, token in enumerate(self._id_to_token):
            if i in self._special_ids:
                self._id_to_bytes.append(token.encode("utf-8"))
            elif all(c in CHAR_TO_BYTE for c in token):
                self._id_to_bytes.append(from_byte_chars(token))
            else:
                raise ValueError(f"token {token!r} (id {i}) is neither a special token nor made of byte characters")
        missing_bytes = [c for c in CHAR_TO_BYTE if c not in self.vocab]
        if missing_bytes:
            raise ValueError(f"the vocabulary must contain all 256 byte characters; missing {missing_bytes[:5]}")
        self._byte_ids = [self.vocab[BYTE_TO_CHAR[b]] for b in range(256)]  # list of int, byte value -> id
        # A pair of ids -> (rank, merged id). If a pair occurs twice in `merges`, the later rank counts.
        self._ranks = {}  # (int, int) -> (int, int)
        for rank, (left, right) in enumerate(self.merges):
            if left not in self.vocab or right not in self.vocab or left + right not in self.vocab:
                raise ValueError(f"merge #{rank} {(left, right)!r} uses a string that is not in the vocabulary")
            self._ranks[(self.vocab[left], self.vocab[right])] = (rank, self.vocab[left + right])
        self._special_re = None
        if self.special_tokens:  # longest first, so "<|a|><|ab|>"-style overlaps pick the longest
            alternatives = sorted(self.special_tokens, key=len, reverse=True)
            self._special_re = regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")
        self._cache = {}  # str -> list of int: byte-level piece -> ids, with all merges

    # ----------------------------------------------------------- training

    @classmethod
    def train_naive(cls, texts, vocab_size: int, min_frequency: int = 0, special_tokens=()) -> "ByteLevelBPE":
        """Train by recounting every pair after every merge: the textbook loop.

        1. count how often each pre-tokenized word occurs;
        2. start each word as its list of byte ids;
        3. repeat: count all adjacent pairs (each word weighted by its count),
           take the most frequent (ties: the smallest ``(left_id, right_id)``),
           give the merged string an id, and merge the pair in every word.

        Cost: every merge rereads the whole corpus. ``train`` gives the same
        result without that.

        Example:

        >>> ByteLevelBPE.train_naive(["low lower lowest\\n"], vocab_size=258).merges
        [('l', 'o'), ('lo', 'w')]
        """
        vocab, specials = _initial_vocab(vocab_size, special_tokens)  # str -> int
        id_to_token = list(vocab)  # list of str, id -> token
        word_counts = _word_counts(texts)  # str -> int
        words = [[vocab[c] for c in word] for word in word_counts]  # list of list of int
        counts = list(word_counts.values())  # list of int, counts[i] is how often words[i] occurs
        merges = []  # list of (str, str)

        while len(vocab) < vocab_size:
            stats = {}  # (int, int) -> int
            for ids, count in zip(words, counts):
                get_stats(ids, stats, weight=count)
            if not stats:
                break  # every word is a single token: nothing left to merge
            # Most frequent pair; among equals, the smallest (left_id, right_id).
            pair = min(stats, key=lambda p: (-stats[p], p))
            if stats[pair] < max(min_frequency, 1):
                break
            idx, strings = _add_merge(vocab, id_to_token, pair)
            merges.append(strings)
            words = [merge(ids, pair, idx) for ids in words]
        return cls(vocab, merges, specials)

    @classmethod
    def train(cls, texts, vocab_size: int, min_frequency: int = 0, special_tokens=(), progress: bool = False) -> "ByteLevelBPE":
        """Train incrementally: same result as ``train_naive``, without recounting.

        Three structures make each merge cost only what it changes:

        - ``pair_counts``: the current count of every adjacent pair;
        - ``where``: for every pair, the indices of the words that contain it,
          so a merge visits only those words;
        - ``heap``: a max-heap of ``(-count, left_id, right_id)``. When a count
          changes we push the new entry and leave the old one in place; an
          entry whose count no longer matches ``pair_counts`` is stale and is
          skipped when it reaches the top ("lazy deletion"). Python tuples
          compare element by element, so the top is the largest count and,
          among equal counts, the smallest ``(left_id, right_id)``.

        Merging ``(a, b) -> n`` at one place in a word ``... x a b y ...``
        changes exactly four pair counts (times the word's count): ``(x, a)``
        and ``(b, y)`` disappear, ``(x, n)`` and ``(n, y)`` appear; the merged
        pair itself goes down by one.

        HF's trainer keeps its bookkeeping slightly differently (a word list per
        heap entry, and the merged pair's count is never lowered). That can only
        matter if a pair reappears after it was merged, which needs one string
        to be built by two different merges; the tests compare both trainers
        with HF on random small corpora and on a megabyte of text.

        Example:

        >>> ByteLevelBPE.train(["low lower lowest\\n"], vocab_size=258).merges
        [('l', 'o'), ('lo', 'w')]
        """
        vocab, specials = _initial_vocab(vocab_size, special_tokens)  # str -> int
        id_to_token = list(vocab)  # list of str, id -> token
        word_counts = _word_counts(texts)  # str -> int
        words = [[vocab[c] for c in word] for word in word_counts]  # list of list of int
        counts = list(word_counts.values())  # list of int

        pair_counts = {}  # (int, int) -> int
        where = {}  # (int, int) -> set of word indices that (may) contain the pair
        for wi, ids in enumerate(words):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] = pair_counts.get(pair, 0) + counts[wi]
                where.setdefault(pair, set()).add(wi)
        heap = [(-count, a, b) for (a, b), count in pair_counts.items()]  # list of (int, int, int)
        heapq.heapify(heap)

        merges = []  # list of (str, str)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=vocab_size - len(vocab), desc="BPE merges")
        while len(vocab) < vocab_size and heap:
            neg_count, a, b = heapq.heappop(heap)
            pair = (a, b)
            if pair_counts.get(pair, 0) != -neg_count:
                continue  # stale entry: this pair's count has changed since it was pushed
            if -neg_count < max(min_frequency, 1):
                break
            idx, strings = _add_merge(vocab, id_to_token, pair)
            merges.append(strings)
            if bar is not None:
                bar.update(1)

            changed = {}  # (int, int) -> int: count change of each pair touched by this merge
            for wi in where.pop(pair):
                ids = words[wi]
                count = counts[wi]
                new_ids = []  # list of int: the word after merging
                i = 0
                while i < len(ids):
                    if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                        changed[pair] = changed.get(pair, 0) - count
                        if new_ids:  # left neighbour x: (x, a) -> (x, n)
                            x = new_ids[-1]
                            changed[(x, a)] = changed.get((x, a), 0) - count
                            changed[(x, idx)] = changed.get((x, idx), 0) + count
                            where.setdefault((x, idx), set()).add(wi)
                        if i + 2 < len(ids):  # right neighbour y: (b, y) -> (n, y)
                            y = ids[i + 2]
                            changed[(b, y)] = changed.get((b, y), 0) - count
                            changed[(idx, y)] = changed.get((idx, y), 0) + count
                            where.setdefault((idx, y), set()).add(wi)
                        new_ids.append(idx)
                        i += 2
                    else:
                        new_ids.append(ids[i])
                        i += 1
                words[wi] = new_ids
            # Apply the changes, and push one fresh heap entry per pair whose count moved.
            for p, delta in changed.items():
                if delta == 0:
                    continue
                new_count = pair_counts.get(p, 0) + delta
                if new_count > 0:
                    pair_counts[p] = new_count
                    heapq.heappush(heap, (-new_count, p[0], p[1]))
                else:
                    pair_counts.pop(p, None)
                    where.pop(p, None)
        if bar is not None:
            bar.close()
        return cls(vocab, merges, specials)

    # ----------------------------------------------------------- encoding

    @property
    def vocab_size(self) -> int:
        """The number of ids: special tokens + 256 bytes + merged tokens."""
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string (byte-level, e.g. ``"Ġred"``), or None."""
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        """The token string of an id (byte-level, e.g. ``"Ġred"``)."""
        self._check_id(i)
        return self._id_to_token[i]

    def _check_id(self, i) -> None:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self._id_to_token):
            raise ValueError(f"unknown token id {i!r}: this tokenizer's ids are 0..{len(self._id_to_token) - 1}")

    def _encode_piece(self, piece: str, max_merges: int | None) -> list[int]:
        """BPE on one pre-tokenized piece: apply the merges by rank, lowest first.

        Example (merges ``a a`` = rank 0, ``aa a`` = rank 1): ``"aaaa"`` ->
        ``[aa, aa]`` because rank 0 is applied everywhere before rank 1.
        """
        limit = len(self.merges) if max_merges is None else max_merges
        ids = [self._byte_ids[CHAR_TO_BYTE[c]] for c in piece]  # list of int
        while len(ids) >= 2:
            best = None  # (rank, pair, merged id) of the earliest learned merge present
            for pair in zip(ids, ids[1:]):
                found = self._ranks.get(pair)
                if found is not None and found[0] < limit and (best is None or found[0] < best[0]):
                    best = (found[0], pair, found[1])
            if best is None:
                break
            ids = merge(ids, best[1], best[2])
        return ids

    def encode(self, text: str, max_merges: int | None = None) -> list[int]:
        """Text -> list of ids.

        Special tokens that appear in ``text`` become their own id; the rest is
        pre-tokenized and each piece is merged with the learned merges.
        ``max_merges=k`` uses only the first ``k`` merges (``0`` gives raw bytes).

        Example (with a tokenizer that learned ``Ġ r``, ``Ġr e``, ``Ġre d``):
        ``tokens("a red")`` -> ``["a", " red"]``.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if max_merges is not None and (not isinstance(max_merges, int) or max_merges < 0):
            raise ValueError(f"max_merges must be None or an int >= 0, got {max_merges!r}")
        chunks = self._special_re.split(text) if self._special_re is not None else [text]
        ids = []  # list of int
        # After a split with one capturing group, odd positions are the special tokens.
        for k, chunk in enumerate(chunks):
            if k % 2 == 1:
                ids.append(self.vocab[chunk])
                continue
            for piece in pretokenize(chunk):
                if max_merges is None:
                    cached = self._cache.get(piece)
                    if cached is None:
                        cached = self._encode_piece(piece, None)
                        if len(self._cache) < 200_000:  # bound the memory a long stream of new words can take
                            self._cache[piece] = cached
                    ids.extend(cached)
                else:
                    ids.extend(self._encode_piece(piece, max_merges))
        return ids

    def decode(self, ids) -> str:
        """List of ids -> text. Bytes that are not valid UTF-8 become ``"\\ufffd"``.

        Example: ``decode(encode(s)) == s`` for every string ``s``.
        """
        parts = []  # list of bytes
        for i in ids:
            self._check_id(i)
            parts.append(self._id_to_bytes[i])
        return b"".join(parts).decode("utf-8", errors="replace")

    def tokens(self, text: str, max_merges: int | None = None) -> list[str]:
        """The pieces of ``encode(text)`` as readable text.

        A token that holds only part of a multi-byte character shows ``"\\ufffd"``.

        Example: ``tokens("a red circle")`` -> ``["a", " red", " circle"]``
        with a tokenizer trained on such captions.
        """
        return [self._id_to_bytes[i].decode("utf-8", errors="replace") for i in self.encode(text, max_merges)]

    def __repr__(self) -> str:
        return (
            f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={self.special_tokens!r})"
        )

    # ----------------------------------------------------------- files

    def to_dict(self) -> dict:
        """Our own small format: what ``save`` writes."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "pattern": GPT2_SPLIT_PATTERN,
            "special_tokens": self.special_tokens,
            "vocab": self.vocab,
            "merges": [list(m) for m in self.merges],
        }

    def save(self, path) -> None:
        """Write the tokenizer as JSON (``{"format", "version", "pattern", "special_tokens", "vocab", "merges"}``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> "ByteLevelBPE":
        """Read a file written by ``save``. A missing, corrupt or foreign file raises ValueError."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer file at {path}; train one and call .save({str(path)!r})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save the tokenizer") from err
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            hint = " (it looks like a Hugging Face tokenizer.json: load it with tokenizers.Tokenizer.from_file)" if (
                isinstance(data, dict) and "model" in data) else ""
            raise ValueError(f"{path} is not a {_FORMAT} file{hint}")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has format version {data.get('version')!r}; this code reads {_FORMAT_VERSION}")
        if data.get("pattern") != GPT2_SPLIT_PATTERN:
            raise ValueError(f"{path} was made with another split pattern; this code only knows GPT-2's")
        try:
            return cls(data["vocab"], [tuple(m) for m in data["merges"]], data["special_tokens"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is corrupt: {err}") from err

    def to_hf_dict(self) -> dict:
        """The same tokenizer in Hugging Face's ``tokenizer.json`` layout."""
        added = [
            {"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in self.special_tokens
        ]
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": None,
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": dict(sorted(self.vocab.items(), key=lambda kv: kv[1])),
                "merges": [list(m) for m in self.merges],
            },
        }

    def save_hf(self, path) -> None:
        """Write a ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` loads and that encodes like us."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# the shipped tokenizer
# ---------------------------------------------------------------------------


def load_tokenizer(path: str | Path | None = None) -> ByteLevelBPE:
    """The course tokenizer (default: the shipped ``data/tokenizer/bpe.json``)."""
    from . import DATA_DIR, checkpoints

    path = Path(path) if path is not None else DATA_DIR / "tokenizer" / "bpe.json"
    if not path.is_file():
        raise checkpoints.CheckpointError(
            f"{path}: file not found; expected the course tokenizer. Create it with: dalle-mini-impl train-tokenizer"
        )
    return ByteLevelBPE.load(path)


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of a tokenizer's vocabulary, merges and special tokens: two tokenizers that split alike share it.

    A CLIP records it (``training.json``): with another tokenizer of the same
    size it would read every id as another token and rank images at random.
    """
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()
