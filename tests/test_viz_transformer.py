"""viz_transformer: lesson 3's pictures of masks, attention maps and samples (tiny untrained models, fast)."""

import numpy as np
import pytest
import torch
from _tiny_models import CharTokenizer, tiny_captions, tiny_dvae, tiny_transformer

from dalle_mini_impl import evaluate, viz_transformer
from dalle_mini_impl.attention import KEY_ALLOWED, KEY_SELF, build_mask, key_states


# --- masks, drawn -----------------------------------------------------------------------


def test_draw_mask_shows_the_mask():
    mask = build_mask("row", 6, 4)
    _, ax = viz_transformer.draw_mask(mask, 6)
    assert np.array_equal(ax.images[0].get_array(), mask.numpy())
    assert "entries allowed" in ax.get_title()


def test_plot_keys_per_query_draws_one_line_per_mask():
    masks = {kind: build_mask(kind, 6, 4, 3) for kind in ("row", "column", "causal")}
    _, ax = viz_transformer.plot_keys_per_query(masks, 6)
    assert len(ax.lines) == 3
    assert list(ax.lines[2].get_ydata()) == [6 + i + 1 for i in range(16)]  # causal: all text + codes 0..i


@pytest.mark.parametrize("kind", ["row", "column", "conv", "causal"])
def test_mask_explorer_colours_the_allowed_keys(kind):
    query = 32 + 3 * 8 + 4
    _, (ax_text, ax_grid, _) = viz_transformer.draw_mask_explorer(kind, query)
    _, image = key_states(kind, query, 32, 8)
    assert np.array_equal(ax_grid.images[0].get_array(), image)
    allowed = build_mask(kind, 32, 8)[query, 32:].view(8, 8).numpy()
    shown = np.isin(ax_grid.images[0].get_array(), [KEY_ALLOWED, KEY_SELF])
    assert np.array_equal(shown, allowed)
    assert (np.asarray(ax_text.images[0].get_array()) == KEY_ALLOWED).all()
    star = ax_grid.lines[0]  # ★ in the cell the query predicts: (3, 5)
    assert round(star.get_xdata()[0]) == 5 and round(star.get_ydata()[0]) == 3


# --- attention maps, drawn ---------------------------------------------------------------


def test_draw_attention_map_shows_one_query_row():
    model = tiny_transformer()
    config = model.config
    text = tiny_captions(config, B=1)
    codes = torch.randint(0, config.image_vocab_size, (1, config.n_image), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(text, codes)
    cell = (2, 1)
    query = config.text_len + 2 * 4 + 1
    _, (ax_grid, ax_text) = viz_transformer.draw_attention_map(maps, layer=1, head=2, cell=cell, text_len=8, grid=4,
                                                               mask_kinds=config.mask_kinds)
    row = maps[1][0, 2, query].numpy()
    heat = np.ma.filled(ax_grid.images[0].get_array().astype(float), np.nan).flatten()
    allowed = build_mask("column", 8, 4, 3)[query, 8:].numpy()  # layer 1 is a column layer
    assert allowed.sum() == 3  # codes 1, 5 and 9
    np.testing.assert_allclose(heat[allowed], row[8:][allowed], rtol=1e-6)
    assert np.isnan(heat[~allowed]).all(), "keys outside the mask and later cells stay clear"
    np.testing.assert_allclose([b.get_height() for b in ax_text.patches], row[:8], rtol=1e-6)
    assert "column" in ax_grid.get_title()
    assert ax_grid.images[0].get_clim() == (0, row.max()), "one colour scale for image and text keys"
    # the pads in grey, apart from the words
    labels = ["<bos>", "a", "b"] + ["<pad>"] * 5
    _, (_, ax_text) = viz_transformer.draw_attention_map(maps, layer=1, head=2, cell=cell, text_len=8, grid=4,
                                                         text_labels=labels)
    colours = [tuple(b.get_facecolor()) for b in ax_text.patches]
    assert colours[3] == colours[7] != colours[0] == colours[2]
    assert f"words {row[:3].sum():.0%}, pads {row[3:8].sum():.0%}" in ax_text.get_title(loc="left")
    # the mean of the heads, over an image
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    _, (ax_grid, _) = viz_transformer.draw_attention_map(maps, layer=0, head=None, cell=cell, text_len=8, grid=4,
                                                         image=image)
    mean = maps[0][0, :, query].mean(0).numpy()
    heat = np.ma.filled(ax_grid.images[1].get_array().astype(float), np.nan).flatten()
    allowed = build_mask("row", 8, 4, 3)[query, 8:].numpy()  # layer 0 is a row layer: codes 5 to 9
    np.testing.assert_allclose(heat[allowed], mean[8:][allowed], rtol=1e-5)
    assert np.isnan(heat[~allowed]).all()


def test_plot_transformer_training():
    history = {"loss": [3.0, 2.0, 1.5], "text": [2.0, 1.0, 0.5], "image": [3.1, 2.1, 1.6]}
    _, ax = viz_transformer.plot_transformer_training(history, image_vocab=512)
    assert len(ax.lines) == 4
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(np.log(512))


# --- samples, graded and drawn -------------------------------------------------------------


class Grade:
    def __init__(self, match, gradable=True):
        self.match, self.gradable = match, gradable
        self.checks = {}  # a failed grade that names no check: just ✗


def test_draw_graded_samples_marks_each_image():
    images = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    _, axes = viz_transformer.draw_graded_samples(images, [Grade(True), Grade(False), Grade(False, gradable=False)])
    marks = [ax.texts[0].get_text() for ax in axes.flat[:3]]
    assert marks == ["✓", "✗", "?"]
    assert viz_transformer.samples_title("a red circle", [Grade(True), Grade(False)]) == "'a red circle': 1 of 2 match"
    assert "not graded" in viz_transformer.samples_title("hello", [Grade(False, gradable=False)])


def test_graded_samples_of_an_ungradable_prompt_are_drawn_with_a_question_mark():
    dvae = tiny_dvae()
    model = tiny_transformer(grid=dvae.config.grid_size, text_len=16, image_vocab_size=24, n_layers=2)
    images, grades = evaluate.graded_samples(model, dvae, CharTokenizer(), "hello there", n=2, seed=3)
    fig, axes = viz_transformer.draw_graded_samples(images, grades,
                                                    title=viz_transformer.samples_title("hello there", grades))
    assert "not graded" in fig._suptitle.get_text()
    assert [ax.texts[0].get_text() for ax in axes.flat] == ["?", "?"]


def test_the_generation_strip_greys_the_cells_not_drawn_yet():
    dvae = tiny_dvae()
    N = dvae.config.grid_size ** 2
    codes = torch.arange(N) % 24
    _, axes = viz_transformer.draw_generation_strip(dvae, [codes[:0], codes[:10], codes], fill_code=0)
    assert len(axes) == 3
    assert [len(ax.patches) for ax in axes] == [N, N - 10, 0]  # one grey patch per cell not drawn yet
    assert [ax.get_title() for ax in axes] == [f"0/{N}", f"10/{N}", f"{N}/{N}"]
