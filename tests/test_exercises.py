"""The exercise checkers: a right answer passes, a wrong one fails loudly, a missing one gets a hint."""

import pytest

from dalle_mini_impl import exercises
from dalle_mini_impl.bpe import ByteLevelBPE, get_stats, merge


def not_done(*args):
    raise NotImplementedError


def test_checkers_accept_the_right_answers(capsys):
    assert exercises.check_get_stats(get_stats)
    assert exercises.check_merge(merge)
    assert capsys.readouterr().out.count("✓ correct") == 2


def test_checkers_give_a_hint_before_an_attempt(capsys):
    assert not exercises.check_get_stats(not_done)
    assert not exercises.check_merge(not_done)
    assert not exercises.check_merges_until_single_token(None, tokenizer=None)
    assert capsys.readouterr().out.count("not done yet — hint:") == 3


def test_checkers_reject_wrong_answers():
    def overlapping_merge(ids, pair, idx):  # a classic bug: merges "a a a" twice
        return [idx if (a, b) == pair else a for a, b in zip(ids, ids[1:] + [None])]

    with pytest.raises(AssertionError, match="merge"):
        exercises.check_merge(overlapping_merge)
    with pytest.raises(AssertionError, match="get_stats"):
        exercises.check_get_stats(lambda ids: {})


def test_merges_until_single_token_counts_merges():
    tok = ByteLevelBPE.train(["aaab aaab aaab"], vocab_size=256 + 10)
    k = exercises.merges_until_single_token(tok, "aaab")
    assert len(tok.encode("aaab", max_merges=k)) == 1
    assert len(tok.encode("aaab", max_merges=k - 1)) > 1
    assert exercises.check_merges_until_single_token(k, tok, "aaab")
    with pytest.raises(AssertionError):
        exercises.check_merges_until_single_token(k - 1, tok, "aaab")
