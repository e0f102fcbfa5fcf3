"""Tests for dalle_mini_impl.bpe: known answers, round trips, and parity with Hugging Face tokenizers.

Parity means: the same training sequences given to HF's ``BpeTrainer`` (with
the byte-level pre-tokenizer and the full 256-character initial alphabet) give
exactly our ``merges`` list, in order, and exactly our ``vocab``; and a
``tokenizer.json`` written by ``save_hf`` encodes every text to our ids.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dalle_mini_impl.bpe import (
    GPT2_SPLIT_PATTERN,
    ByteLevelBPE,
    bytes_to_unicode,
    get_stats,
    merge,
    pretokenize,
    split_lines,
    visible,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "python_docs_english.txt"
SPECIALS = ["<|endoftext|>", "<|pad|>"]

# Derandomized: the same examples on every run, so CI is reproducible.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def hf_train(texts, vocab_size, min_frequency=0, special_tokens=()) -> Tokenizer:
    """Train HF tokenizers' BPE with the conventions bpe.py reproduces."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def hf_merges_and_vocab(tok: Tokenizer) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The model's merges (in rank order) and vocab, read from its JSON form."""
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return merges, model["vocab"]


def assert_same_as_hf(ours: ByteLevelBPE, hf: Tokenizer) -> None:
    hf_merges, hf_vocab = hf_merges_and_vocab(hf)
    if ours.merges != hf_merges:
        i = next((k for k, (a, b) in enumerate(zip(ours.merges, hf_merges)) if a != b), min(len(ours.merges), len(hf_merges)))
        pytest.fail(
            f"merges differ at #{i}: ours {ours.merges[i:i + 3]} vs HF {hf_merges[i:i + 3]} "
            f"(lengths {len(ours.merges)} vs {len(hf_merges)})"
        )
    assert ours.vocab == hf_vocab


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Shapes-like captions, one per line: "a small red circle in the top left\\n", sometimes two objects."""
    rng = random.Random(seed)
    sizes = ["small", "large", "tiny", "big"]
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "gray"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "cross"]
    places = ["in the top left", "in the top right", "in the bottom left", "in the bottom right",
              "in the center", "at the top", "at the bottom", "on the left", "on the right"]

    def thing() -> str:
        return f"a {rng.choice(sizes)} {rng.choice(colors)} {rng.choice(shapes)} {rng.choice(places)}"

    captions = []  # list of str
    for _ in range(n):
        caption = thing() if rng.random() < 0.7 else f"{thing()} and {thing()}"
        captions.append(caption + "\n")
    return captions


def assigned_text(**kwargs):
    """Text made of characters assigned in this Python's Unicode tables.

    Characters assigned only in the newest Unicode version may be classified
    differently by the ``regex`` module and by HF's regex engine, so the HF
    parity properties stay on characters both know.
    """
    return st.text(
        alphabet=st.characters(exclude_categories=("Cs", "Cn")),
        **kwargs,
    )


@pytest.fixture(scope="module")
def english() -> str:
    return FIXTURE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def heldout_split(english) -> tuple[list[str], str]:
    """(training lines, held-out text): the last 10 % of the lines are never trained on."""
    lines = split_lines(english)
    cut = len(lines) * 9 // 10
    return lines[:cut], "".join(lines[cut:])


@pytest.fixture(scope="module")
def trained(heldout_split) -> ByteLevelBPE:
    """Our tokenizer trained on the training lines, with two special tokens."""
    return ByteLevelBPE.train(heldout_split[0], 2048, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def trained_hf(trained, tmp_path_factory) -> Tokenizer:
    """HF tokenizers loading the tokenizer.json that ``save_hf`` wrote."""
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    trained.save_hf(path)
    return Tokenizer.from_file(str(path))


# --------------------------------------------------------------------------- building blocks


def test_bytes_to_unicode_is_gpt2s_map():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord("!")] == "!" and table[0xFF] == "ÿ"
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[0] == "Ā"
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())


def test_pretokenize_examples():
    assert pretokenize("Hello world!\n") == ["Hello", "Ġworld", "!", "Ċ"]
    assert pretokenize("it's 42 €") == ["it", "'s", "Ġ42", "ĠâĤ¬"]
    assert pretokenize("a  b") == ["a", "Ġ", "Ġb"]  # the last space of a run goes with the word
    assert pretokenize("") == []


def test_split_lines_keeps_line_ends():
    assert split_lines("a\nb\n\nc") == ["a\n", "b\n", "\n", "c"]
    assert split_lines("a\r\nb\x0cc\n") == ["a\r\n", "b\x0cc\n"]
    assert split_lines("") == []


@PROPERTY
@given(assigned_text(max_size=60))
def test_pretokenize_matches_hf(text):
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert pretokenize(text) == [piece for piece, _ in hf.pre_tokenize_str(text)]


@PROPERTY
@given(st.text(max_size=80))
def test_pretokenize_covers_the_whole_text(text):
    pieces = pretokenize(text)
    table = bytes_to_unicode()
    assert "".join(pieces) == "".join(table[b] for b in text.encode("utf-8"))


def test_get_stats_and_merge_examples():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([7, 7, 7]) == {(7, 7): 2}  # overlapping pairs both count
    counts = get_stats([1, 2], weight=3)
    assert get_stats([1, 2, 1], counts) == {(1, 2): 4, (2, 1): 1}  # adds to an existing dict
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([7, 7, 7], (7, 7), 8) == [8, 7]  # left to right, no overlap
    assert merge([7, 7, 7, 7], (7, 7), 8) == [8, 8]
    assert merge([], (1, 2), 3) == []


# --------------------------------------------------------------------------- known answer


def test_wikipedia_example_raw_bytes():
    """The Wikipedia BPE example in the raw-byte convention: ids are bytes, merges get 256, 257, ...

    Ties here go to the pair seen first in the text (``max`` over a dict in
    insertion order), which is the convention of the known answer
    ``[258, 100, 258, 97, 99]``: aa -> 256, (256, a) -> 257, (257, b) -> 258.
    """
    ids = list("aaabdaaabac".encode("utf-8"))
    merges = {}  # (int, int) -> int
    for k in range(3):
        stats = get_stats(ids)
        pair = max(stats, key=stats.get)
        merges[pair] = 256 + k
        ids = merge(ids, pair, 256 + k)
    assert ids == [258, 100, 258, 97, 99]
    assert merges == {(97, 97): 256, (256, 97): 257, (257, 98): 258}


def test_wikipedia_example_our_convention():
    """The same text in our (= HF's) convention.

    Ids: "a" is 64 and "c" 66, "d" 67, because the 256 byte characters are
    numbered in code point order from "!" (33). After ``a a`` -> 256 the pairs
    ``(aa, a)`` and ``(a, b)`` both occur twice; the tie goes to the smaller
    ids, ``(64, 65)`` = ``a b``, not to the pair seen first. The third merge
    ``aa ab`` -> 258 then gives the same pieces as the raw-byte answer:
    ``aaab d aaab a c`` -> ``[258, 67, 258, 64, 66]``.
    """
    tok = ByteLevelBPE.train(["aaabdaaabac"], vocab_size=259)
    assert tok.merges == [("a", "a"), ("a", "b"), ("aa", "ab")]
    assert tok.encode("aaabdaaabac") == [258, 67, 258, 64, 66]
    assert tok.tokens("aaabdaaabac") == ["aaab", "d", "aaab", "a", "c"]
    assert ByteLevelBPE.train_naive(["aaabdaaabac"], vocab_size=259).merges == tok.merges
    assert_same_as_hf(tok, hf_train(["aaabdaaabac"], 259))


# --------------------------------------------------------------------------- training rules


def test_words_are_weighted_by_their_count():
    # "c d" occurs in one word that appears 3 times; "a b" in two words that appear once each.
    texts = ["cd\n"] * 3 + ["ab\n", "abx\n"]
    tok = ByteLevelBPE.train(texts, 257)
    assert tok.merges == [("c", "d")]
    assert_same_as_hf(tok, hf_train(texts, 257))


def test_runs_merge_left_to_right_without_overlap():
    texts = ["aaa aaaa aaaaa\n", "aaa\n"]
    tok = ByteLevelBPE.train(texts, 270)
    naive = ByteLevelBPE.train_naive(texts, 270)
    assert tok.merges[0] == ("a", "a")
    assert tok.tokens("aaa", max_merges=1) == ["aa", "a"]
    assert tok.merges == naive.merges
    assert_same_as_hf(tok, hf_train(texts, 270))


def test_training_stops_when_pairs_run_out():
    texts = ["ab ab\n"]
    tok = ByteLevelBPE.train(texts, 1000)
    assert tok.vocab_size < 1000 and all(len(tok.encode(p)) == 1 for p in ["ab", " ab", "\n"])
    assert_same_as_hf(tok, hf_train(texts, 1000))


def test_min_frequency_stops_training():
    texts = make_captions(300) + ["zq zq\n"]
    tok = ByteLevelBPE.train(texts, 1000, min_frequency=50)
    assert ("z", "q") not in tok.merges
    assert_same_as_hf(tok, hf_train(texts, 1000, min_frequency=50))


def test_merge_onto_an_existing_string_records_the_merge_but_no_new_id():
    """A special token spelled like text: HF records the merge (a, b) and reuses the special's id."""
    texts = ["ab ab abc abc\n", "xab\n"]
    tok = ByteLevelBPE.train(texts, 256 + 2 + 4, special_tokens=["<pad>", "ab"])
    hf = hf_train(texts, 256 + 2 + 4, special_tokens=["<pad>", "ab"])
    assert_same_as_hf(tok, hf)
    assert ("a", "b") in tok.merges and tok.vocab["ab"] == 1
    assert len(tok.merges) == tok.vocab_size - 258 + 1  # one merge made no new id
    # "ab" in text is the special token, cut out before BPE, as in HF.
    assert tok.encode("ab cab") == hf.encode("ab cab").ids


def test_overlapping_special_tokens_take_the_longest_match():
    specials = ["<|end|>", "<|end|>!", "nd|>"]
    texts = ["the end\n", "the <|end|>!\n"]
    tok = ByteLevelBPE.train(texts, 300, special_tokens=specials)
    hf = hf_train(texts, 300, special_tokens=specials)
    for text in ["a<|end|>!b", "<|end|><|end|>!!", "<|end|>", "end|>nd|>"]:
        assert tok.encode(text) == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
    assert tok.tokens("a<|end|>!b") == ["a", "<|end|>!", "b"]


def test_special_tokens_in_training_text_are_plain_text():
    texts = ["<|pad|> hello <|pad|>\n"] * 5 + ["hello\n"]
    tok = ByteLevelBPE.train(texts, 300, special_tokens=["<|pad|>"])
    assert ("<", "|") in tok.merges
    assert_same_as_hf(tok, hf_train(texts, 300, special_tokens=["<|pad|>"]))


def test_vocab_size_equal_to_the_alphabet_learns_nothing():
    tok = ByteLevelBPE.train(["hello\n"], 256 + 1, special_tokens=["<s>"])
    assert tok.merges == [] and tok.vocab_size == 257
    assert_same_as_hf(tok, hf_train(["hello\n"], 257, special_tokens=["<s>"]))


def test_texts_can_be_a_generator():
    tok = ByteLevelBPE.train((line for line in make_captions(50)), 300)
    assert tok.merges == ByteLevelBPE.train(make_captions(50), 300).merges


def test_progress_bar(capsys):
    tok = ByteLevelBPE.train(make_captions(50), 300, progress=True)
    assert tok.vocab_size == 300


# --------------------------------------------------------------------------- naive == fast == HF


def test_naive_equals_fast_on_a_small_corpus(english):
    texts = make_captions(200, seed=1) + split_lines(english[:20_000])
    for vocab_size, min_frequency, specials in [(600, 0, ()), (400, 3, SPECIALS)]:
        fast = ByteLevelBPE.train(texts, vocab_size, min_frequency, specials)
        naive = ByteLevelBPE.train_naive(texts, vocab_size, min_frequency, specials)
        assert fast.merges == naive.merges
        assert fast.vocab == naive.vocab
        assert len(fast.merges) == vocab_size - 256 - len(specials)


SMALL_PIECES = ["a", "b", "c", "ab", "aa", " ", "  ", "\n", "é", "🙂", "1", "!", "'s", " the"]


@PROPERTY
@given(
    texts=st.lists(st.lists(st.sampled_from(SMALL_PIECES), max_size=25).map("".join), min_size=1, max_size=15),
    extra=st.integers(0, 60),
    min_frequency=st.sampled_from([0, 1, 2, 4]),
    specials=st.sampled_from([(), ("<pad>",), ("<s>", "ab"), ("aa", "a a", "<pad>")]),
)
def test_random_small_corpora_naive_fast_and_hf_agree(texts, extra, min_frequency, specials):
    vocab_size = 256 + len(specials) + extra
    fast = ByteLevelBPE.train(texts, vocab_size, min_frequency, specials)
    naive = ByteLevelBPE.train_naive(texts, vocab_size, min_frequency, specials)
    assert fast.merges == naive.merges and fast.vocab == naive.vocab
    assert_same_as_hf(fast, hf_train(texts, vocab_size, min_frequency, specials))


# --------------------------------------------------------------------------- parity on real text


@pytest.mark.parametrize("vocab_size", [512, 1024])
def test_hf_parity_on_captions(vocab_size):
    texts = make_captions(3000)
    ours = ByteLevelBPE.train(texts, vocab_size, special_tokens=SPECIALS)
    assert_same_as_hf(ours, hf_train(texts, vocab_size, special_tokens=SPECIALS))


def test_hf_parity_on_captions_with_min_frequency():
    texts = make_captions(3000, seed=2)
    ours = ByteLevelBPE.train(texts, 1024, min_frequency=40)
    assert_same_as_hf(ours, hf_train(texts, 1024, min_frequency=40))


def test_fixture_is_over_a_megabyte(english, heldout_split):
    size = len(english.encode("utf-8"))
    assert 1_000_000 <= size <= 2_000_000
    assert len("".join(heldout_split[0]).encode("utf-8")) >= 1_000_000


@pytest.mark.parametrize("vocab_size", [2048, 8192])
def test_hf_parity_on_a_megabyte_of_english(english, vocab_size):
    texts = split_lines(english)
    ours = ByteLevelBPE.train(texts, vocab_size)
    assert len(ours.merges) == vocab_size - 256
    assert_same_as_hf(ours, hf_train(texts, vocab_size))


def test_hf_parity_with_special_tokens(heldout_split, trained):
    assert_same_as_hf(trained, hf_train(heldout_split[0], 2048, special_tokens=SPECIALS))


def test_hf_encoding_parity_on_heldout_text(trained, trained_hf, heldout_split):
    heldout = heldout_split[1]
    lines = split_lines(heldout)
    assert [trained.encode(line) for line in lines] == [e.ids for e in trained_hf.encode_batch(lines)]
    assert trained.encode(heldout) == trained_hf.encode(heldout).ids


TRICKY = [
    "", "a", " ", "\n", "\r\n", "\t", "\x00", "é", "🙂",
    "   leading and trailing spaces   ", "a\n\n\nb", "\n \n  \n",
    "Hello, world! It's 2024 and we're 42 years old.",
    "naïve café — “quotes” and ‘apostrophes’…",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ελληνικά, русский, עברית, العربية, हिन्दी",
    "emoji: 👩‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️",
    "mixed: abc123ДЕЖ中文🙂\u200d\u2028\u00a0end",
    "<|endoftext|>", "a<|endoftext|>b<|pad|><|pad|>", "<|endoftext|  <|pad", "<<|pad|>>",
    "a small red circle in the top left\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_round_trip_and_match_hf(trained, trained_hf, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert ids == trained_hf.encode(text).ids
    assert trained_hf.decode(ids, skip_special_tokens=False) == text


@PROPERTY
@given(st.text())
def test_round_trip_any_unicode(trained, text):
    assert trained.decode(trained.encode(text)) == text


# Dense in the hard cases: whitespace runs, line ends, multi-byte and combining characters, emoji sequences.
TRICKY_CHARS = [" ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "a", "Z", "7", "'s", "!", "é", "e\u0301",
                "中", "ж", "🙂", "👍🏽", "\u200d", "🇫🇷", "\x00", "\U0010ffff"]


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(TRICKY_CHARS), st.characters(exclude_categories=("Cs",))), max_size=40).map("".join))
def test_round_trip_whitespace_emoji_and_mixed_scripts(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert trained.decode(trained.encode(text, max_merges=7)) == text


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=20)), max_size=6).map("".join))
def test_round_trip_with_special_tokens(trained, text):
    assert trained.decode(trained.encode(text)) == text


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(SPECIALS), assigned_text(max_size=30)), max_size=5).map("".join))
def test_hf_encoding_parity_any_text(trained, trained_hf, text):
    assert trained.encode(text) == trained_hf.encode(text).ids


# --------------------------------------------------------------------------- encode details


def test_max_merges_slider(trained):
    text = "The tokenizer merges bytes into words."
    raw = trained.encode(text, max_merges=0)
    assert raw == [trained.token_to_id(bytes_to_unicode()[b]) for b in text.encode("utf-8")]
    lengths = [len(trained.encode(text, max_merges=k)) for k in range(0, 200, 10)]
    assert lengths == sorted(lengths, reverse=True)  # more merges, never more tokens
    assert trained.encode(text, max_merges=len(trained.merges)) == trained.encode(text)
    for k in (0, 5, 50):
        assert trained.decode(trained.encode(text, max_merges=k)) == text


def test_visible_marks_white_space():
    assert visible(" red\n\t") == "·red⏎⇥"


def test_tokens_are_readable_pieces(trained):
    assert "".join(trained.tokens("A plain sentence, with words.")) == "A plain sentence, with words."
    assert trained.tokens("🙂", max_merges=0) == ["\ufffd"] * 4  # each byte alone is not valid UTF-8
    assert "<|pad|>" in trained.tokens("x<|pad|>y")


def test_token_lookup(trained):
    assert trained.vocab_size == len(trained.vocab) == 2048
    assert trained.token_to_id("<|endoftext|>") == 0 and trained.token_to_id("!") == 2
    assert trained.id_to_token(2) == "!"
    assert trained.token_to_id("no such token") is None
    i = trained.token_to_id("Ġthe")
    assert i is not None and trained.id_to_token(i) == "Ġthe" and trained.decode([i]) == " the"


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "sub" / "bpe.json"
    trained.save(path)
    loaded = ByteLevelBPE.load(path)
    assert loaded.vocab == trained.vocab and loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens
    text = "a held-out sentence <|pad|> with ünïcödé"
    assert loaded.encode(text) == trained.encode(text)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["pattern"] == GPT2_SPLIT_PATTERN and data["version"] == 1


def test_save_hf_special_tokens_are_added_special_tokens(trained, tmp_path):
    path = tmp_path / "tokenizer.json"
    trained.save_hf(path)
    hf = Tokenizer.from_file(str(path))
    added = {tok.content: tok.special for tok in hf.get_added_tokens_decoder().values()}
    assert added == {"<|endoftext|>": True, "<|pad|>": True}
    assert hf.get_vocab_size() == trained.vocab_size
    assert hf.decode(hf.encode("x <|pad|> y").ids) == "x  y"  # HF skips special tokens by default


def test_load_errors_are_clear(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        ByteLevelBPE.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        ByteLevelBPE.load(bad)
    hf_file = tmp_path / "tokenizer.json"
    trained.save_hf(hf_file)
    with pytest.raises(ValueError, match="Hugging Face"):
        ByteLevelBPE.load(hf_file)
    ours = tmp_path / "ours.json"
    trained.save(ours)
    data = json.loads(ours.read_text(encoding="utf-8"))
    data["merges"].append(["no", "such"])
    ours.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt"):
        ByteLevelBPE.load(ours)


# --------------------------------------------------------------------------- errors


def test_vocab_size_too_small_names_the_minimum():
    with pytest.raises(ValueError, match=r"vocab_size >= 258"):
        ByteLevelBPE.train(["hello\n"], 257, special_tokens=SPECIALS)
    with pytest.raises(ValueError, match=r"vocab_size >= 256"):
        ByteLevelBPE.train_naive(["hello\n"], 100)


def test_decode_unknown_id(trained):
    for bad in (-1, trained.vocab_size, 10**9, "3", 2.0):
        with pytest.raises(ValueError, match="unknown token id"):
            trained.decode([5, bad])
    with pytest.raises(ValueError, match="unknown token id"):
        trained.id_to_token(trained.vocab_size)


def test_bad_arguments():
    with pytest.raises(TypeError, match="split_lines"):
        ByteLevelBPE.train("one string, not a list", 300)
    with pytest.raises(TypeError, match="must be a str"):
        ByteLevelBPE.train(["ok", 3], 300)
    with pytest.raises(ValueError, match="single character"):
        ByteLevelBPE.train(["hello"], 300, special_tokens=["Ġ"])
    with pytest.raises(TypeError, match="list of strings"):
        ByteLevelBPE.train(["hello"], 300, special_tokens="<pad>")
    tok = ByteLevelBPE.train(["hello"], 260)
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="max_merges"):
        tok.encode("hello", max_merges=-1)
