"""viz_bpe: lesson 1's pictures, text as token boxes and the tokenizer after k merges."""

import matplotlib.pyplot as plt
import pytest

from dalle_mini_impl import viz_bpe
from dalle_mini_impl.bpe import ByteLevelBPE


def test_draw_tokens_draws_one_box_and_one_id_per_token_and_wraps():
    pieces = ["a", " small", " red", " circle"] * 6
    fig, ax = viz_bpe.draw_tokens(pieces, list(range(len(pieces))), line_chars=30)
    assert len(ax.patches) == len(pieces)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("·small") == 6 and "23" in texts
    ys = {round(p.get_y(), 2) for p in ax.patches}
    assert len(ys) > 1, "a long text wraps onto several lines"
    plt.close(fig)


def test_draw_tokens_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="one id per piece"):
        viz_bpe.draw_tokens(["a", "b"], [1])


def test_draw_merge_step_shows_the_text_after_k_merges():
    tok = ByteLevelBPE.train(["a red circle\n", "a red square\n"] * 3, vocab_size=256 + 8)
    fig, (ax_tokens, ax_curve, ax_merges) = viz_bpe.draw_merge_step(tok, "a red circle", 3)
    assert ax_tokens.get_title(loc="left").startswith(f"after 3 of {len(tok.merges)} merges: "
                                                      f"{len(tok.encode('a red circle', max_merges=3))} tokens")
    assert "   3: " in ax_merges.texts[0].get_text() and "   4: " not in ax_merges.texts[0].get_text()
    assert list(ax_curve.lines[1].get_xdata()) == [3]
    plt.close(fig)


def test_readable_writes_byte_characters_as_text():
    assert viz_bpe.readable("Ġc") == "·c"
