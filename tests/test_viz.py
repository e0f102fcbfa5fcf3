"""The drawing functions behind every static picture and widget."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dalle_mini_impl import viz  # noqa: E402


def test_visible_marks_white_space():
    assert viz.visible(" red\n\t") == "·red⏎⇥"


def test_draw_tokens_draws_one_box_and_one_id_per_token_and_wraps():
    pieces = ["a", " small", " red", " circle"] * 6
    fig, ax = viz.draw_tokens(pieces, list(range(len(pieces))), line_chars=30)
    assert len(ax.patches) == len(pieces)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("·small") == 6 and "23" in texts
    ys = {round(p.get_y(), 2) for p in ax.patches}
    assert len(ys) > 1, "a long text wraps onto several lines"
    plt.close(fig)


def test_draw_tokens_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="one id per piece"):
        viz.draw_tokens(["a", "b"], [1])


def test_show_images_accepts_both_layouts():
    hwc = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    chw = np.ones((3, 3, 8, 8), dtype=np.float32)
    for images in (hwc, chw):
        fig, axes = viz.show_images(images, titles=["x", "y", "z"], cols=2)
        assert axes.shape == (2, 2)
        assert axes.flat[0].images[0].get_array().shape == (8, 8, 3)
        plt.close(fig)
