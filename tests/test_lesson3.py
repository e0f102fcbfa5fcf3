"""Lesson 3's additions: attention maps and the sampling callback, its pictures, widgets' drawing functions and checkers."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl import exercises, viz
from dalle_mini_impl.attention import build_mask
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.sampling import sample, top_p_filter
from dalle_mini_impl.transformer import (
    DalleTransformer,
    TransformerConfig,
    attention_weights,
    next_token_loss,
)

matplotlib.use("Agg")  # no display needed: the tests only read the figures back


def tiny_model(seed: int = 0, **overrides) -> DalleTransformer:
    torch.manual_seed(seed)
    values = {"text_vocab_size": 40, "image_vocab_size": 24, "text_len": 8, "grid": 4, "d_model": 32, "n_heads": 4,
              "n_layers": 4, "conv_kernel": 3}
    return DalleTransformer(TransformerConfig(**{**values, **overrides})).eval()


def captions(config: TransformerConfig, B: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.text_vocab_size, (B, config.text_len), generator=g)
    text[:, 0] = config.bos_id
    text[-1, 4:] = config.pad_id
    return text


def not_done(*args):
    raise NotImplementedError


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --- attention maps --------------------------------------------------------------------


def test_attention_weights_are_the_layers_own_probabilities():
    model = tiny_model()
    config = model.config
    text = captions(config)
    codes = torch.randint(0, config.image_vocab_size, (2, config.n_image), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(text, codes)
    S = config.seq_len
    assert len(maps) == config.n_layers
    for block, A in zip(model.blocks, maps):
        assert A.shape == (2, config.n_heads, S, S)
        torch.testing.assert_close(A.sum(-1), torch.ones(2, config.n_heads, S))
        assert (A[:, :, ~block.attn.mask] == 0).all(), "no weight outside the mask"
    # the weights reproduce the layer's output: proj(A V) == attn(x)
    block = model.blocks[1]
    x = block.ln_1(torch.randn(2, S - 1, config.d_model))
    A = attention_weights(block.attn, x)  # (B, nh, T, T)
    d, nh = config.d_model, config.n_heads
    v = block.attn.qkv(x).split(d, dim=2)[2].view(2, S - 1, nh, d // nh).transpose(1, 2)  # (B, nh, T, hs)
    y = block.attn.proj((A @ v).transpose(1, 2).reshape(2, S - 1, d))
    with torch.no_grad():
        torch.testing.assert_close(y, block.attn(x), atol=1e-5, rtol=1e-4)


def test_attention_maps_match_the_forward_pass_for_a_partial_grid():
    model = tiny_model(layer_masks=("row", "column", "conv", "causal"))
    text = captions(model.config, B=1)
    maps = model.attention_maps(text, torch.tensor([[3, 4, 5]]))
    assert maps[0].shape == (1, 4, 8 + 3, 8 + 3)
    assert model.attention_maps(text)[0].shape == (1, 4, 8, 8)


# --- the sampling callback -------------------------------------------------------------


def test_the_callback_sees_every_prefix_and_changes_nothing():
    model = tiny_model()
    text = captions(model.config, B=3)
    seen = []
    codes = sample(model, text, generator=torch.Generator().manual_seed(0), condition_scale=2.0,
                   callback=lambda j, prefix: seen.append((j, prefix)))
    plain = sample(model, text, generator=torch.Generator().manual_seed(0), condition_scale=2.0)
    assert torch.equal(codes, plain)
    N = model.config.n_image
    assert [j for j, _ in seen] == list(range(N))
    for j, prefix in seen:
        assert prefix.shape == (3, j + 1)
        assert torch.equal(prefix, codes.flatten(1)[:, :j + 1])


# --- masks, drawn -----------------------------------------------------------------------


def test_draw_mask_shows_the_mask():
    mask = build_mask("row", 6, 4)
    _, ax = viz.draw_mask(mask, 6)
    assert np.array_equal(ax.images[0].get_array(), mask.numpy())
    assert "entries allowed" in ax.get_title()


def test_plot_keys_per_query_draws_one_line_per_mask():
    masks = {kind: build_mask(kind, 6, 4, 3) for kind in ("row", "column", "causal")}
    _, ax = viz.plot_keys_per_query(masks, 6)
    assert len(ax.lines) == 3
    assert list(ax.lines[2].get_ydata()) == [6 + i + 1 for i in range(16)]  # causal: all text + codes 0..i


def test_key_states_follow_the_mask():
    text, image = viz.key_states("row", 6 + 5, 6, 4)
    assert (text == viz.KEY_ALLOWED).all()
    assert image.tolist() == [[0, 1, 1, 1], [1, 2, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]]
    text, image = viz.key_states("column", 2, 6, 4)  # a text query
    assert text.tolist() == [1, 1, 2, 3, 3, 3] and (image == viz.KEY_FUTURE).all()
    with pytest.raises(ValueError, match="query must be a position"):
        viz.key_states("row", 22, 6, 4)


@pytest.mark.parametrize("kind", ["row", "column", "conv", "causal"])
def test_mask_explorer_colours_the_allowed_keys(kind):
    query = 32 + 3 * 8 + 4
    _, (ax_text, ax_grid, _) = viz.draw_mask_explorer(kind, query)
    _, image = viz.key_states(kind, query, 32, 8)
    assert np.array_equal(ax_grid.images[0].get_array(), image)
    allowed = build_mask(kind, 32, 8)[query, 32:].view(8, 8).numpy()
    shown = np.isin(ax_grid.images[0].get_array(), [viz.KEY_ALLOWED, viz.KEY_SELF])
    assert np.array_equal(shown, allowed)
    assert (np.asarray(ax_text.images[0].get_array()) == viz.KEY_ALLOWED).all()
    star = ax_grid.lines[0]  # ★ in the cell the query predicts: (3, 5)
    assert round(star.get_xdata()[0]) == 5 and round(star.get_ydata()[0]) == 3


# --- attention maps, drawn ---------------------------------------------------------------


def test_draw_attention_map_shows_one_query_row():
    model = tiny_model()
    config = model.config
    text = captions(config, B=1)
    codes = torch.randint(0, config.image_vocab_size, (1, config.n_image), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(text, codes)
    cell = (2, 1)
    query = config.text_len + 2 * 4 + 1
    _, (ax_grid, ax_text) = viz.draw_attention_map(maps, layer=1, head=2, cell=cell, text_len=8, grid=4,
                                                     mask_kinds=config.mask_kinds)
    row = maps[1][0, 2, query].numpy()
    heat = np.ma.filled(ax_grid.images[0].get_array().astype(float), np.nan).flatten()
    allowed = build_mask("column", 8, 4, 3)[query, 8:].numpy()  # layer 1 is a column layer
    assert allowed.sum() == 3  # codes 1, 5 and 9
    np.testing.assert_allclose(heat[allowed], row[8:][allowed], rtol=1e-6)
    assert np.isnan(heat[~allowed]).all(), "keys outside the mask and later cells stay clear"
    np.testing.assert_allclose([b.get_height() for b in ax_text.patches], row[:8], rtol=1e-6)
    assert "column" in ax_grid.get_title()
    # the mean of the heads, over an image
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    _, (ax_grid, _) = viz.draw_attention_map(maps, layer=0, head=None, cell=cell, text_len=8, grid=4, image=image)
    mean = maps[0][0, :, query].mean(0).numpy()
    heat = np.ma.filled(ax_grid.images[1].get_array().astype(float), np.nan).flatten()
    allowed = build_mask("row", 8, 4, 3)[query, 8:].numpy()  # layer 0 is a row layer: codes 5 to 9
    np.testing.assert_allclose(heat[allowed], mean[8:][allowed], rtol=1e-5)
    assert np.isnan(heat[~allowed]).all()


def test_plot_transformer_training():
    history = {"loss": [3.0, 2.0, 1.5], "text": [2.0, 1.0, 0.5], "image": [3.1, 2.1, 1.6]}
    _, ax = viz.plot_transformer_training(history, image_vocab=512)
    assert len(ax.lines) == 4
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(np.log(512))


# --- samples, graded and drawn -------------------------------------------------------------


class Grade:
    def __init__(self, match, gradable=True):
        self.match, self.gradable = match, gradable


def test_draw_graded_samples_marks_each_image():
    images = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    _, axes = viz.draw_graded_samples(images, [Grade(True), Grade(False), Grade(False, gradable=False)])
    marks = [ax.texts[0].get_text() for ax in axes.flat[:3]]
    assert marks == ["✓", "✗", "?"]
    assert viz.samples_title("a red circle", [Grade(True), Grade(False)]) == "'a red circle': 1 of 2 match"
    assert "not graded" in viz.samples_title("hello", [Grade(False, gradable=False)])


def tiny_dvae() -> DVAE:
    torch.manual_seed(0)
    config = DVAEConfig.preset("cpu", vocab_size=24, enc_width=8, dec_width=8, codebook_dim=16,
                               blocks_per_group=1)
    return DVAE(config).eval()


class CharTokenizer:
    """One id per letter: enough for encode_captions."""

    vocab_size = 40

    def encode(self, text: str) -> list[int]:
        return [3 + (ord(ch) % 37) for ch in text]

    def token_to_id(self, token: str):
        return {"<pad>": 0, "<bos>": 1, "<eos>": 2}.get(token)


def test_playground_samples_are_repeatable_and_graded():
    dvae = tiny_dvae()
    grid = dvae.config.grid_size
    model = tiny_model(grid=grid, text_len=16, image_vocab_size=24, n_layers=2)
    tok = CharTokenizer()
    images, grades = viz.playground_samples(model, dvae, tok, "a red circle", n=2, top_k=5, top_p=0.9, seed=3)
    again, _ = viz.playground_samples(model, dvae, tok, "a red circle", n=2, top_k=5, top_p=0.9, seed=3)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again)
    assert len(grades) == 2 and all(g.gradable for g in grades)
    fig, axes = viz.draw_sampling_playground(model, dvae, tok, "hello there", n=2, seed=3)
    assert "not graded" in fig._suptitle.get_text()
    assert [ax.texts[0].get_text() for ax in axes.flat] == ["?", "?"]


def test_partial_grids_and_the_generation_strip():
    grids = viz.partial_grids([torch.tensor([5]), torch.tensor([5, 6, 7])], grid=2, fill_code=0)
    assert grids.tolist() == [[[5, 0], [0, 0]], [[5, 6], [7, 0]]]
    dvae = tiny_dvae()
    N = dvae.config.grid_size ** 2
    codes = torch.arange(N) % 24
    _, axes = viz.draw_generation_strip(dvae, [codes[:0], codes[:10], codes], fill_code=0)
    assert len(axes) == 3
    assert [len(ax.patches) for ax in axes] == [N, N - 10, 0]  # one grey patch per cell not drawn yet
    assert [ax.get_title() for ax in axes] == [f"0/{N}", f"10/{N}", f"{N}/{N}"]


# --- the exercise checkers ----------------------------------------------------------------


def test_checkers_accept_the_right_answers(capsys):
    assert exercises.check_build_mask(build_mask)
    assert exercises.check_top_p_filter(top_p_filter)
    assert exercises.check_next_token_loss(lambda *args: next_token_loss(*args).loss)
    assert capsys.readouterr().out.count("✓ correct") == 3


def test_checkers_give_a_hint_before_an_attempt(capsys):
    assert not exercises.check_build_mask(not_done)
    assert not exercises.check_top_p_filter(not_done)
    assert not exercises.check_next_token_loss(not_done)
    assert capsys.readouterr().out.count("not done yet — hint:") == 3


def test_checkers_reject_wrong_answers():
    def same_row_only(kind, text_len, grid, kernel):  # the classic misreading of the row mask
        mask = build_mask(kind, text_len, grid, kernel)
        if kind == "row":
            i = torch.arange(grid * grid)
            mask[text_len:, text_len:] &= (i.view(-1, 1) // grid) == (i.view(1, -1) // grid)
        return mask

    with pytest.raises(AssertionError, match="build_mask\\('row'"):
        exercises.check_build_mask(same_row_only)

    def top_p_keeping_one_too_few(logits, p):  # drops the token that crosses p
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        drop = probs.cumsum(-1) > p
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))

    with pytest.raises(AssertionError, match="top_p_filter"):
        exercises.check_top_p_filter(top_p_keeping_one_too_few)

    def equal_weights(text_logits, image_logits, text, codes):  # 1 : 1 instead of 1 : 7
        return (F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:].flatten())
                + F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())) / 2

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_next_token_loss(equal_weights)


# --- the widgets: each control calls its drawing function ------------------------------------


def test_widgets_build_and_redraw(monkeypatch):
    from dalle_mini_impl import widgets

    monkeypatch.setattr(plt, "show", lambda: plt.close("all"))
    show = widgets.mask_explorer(text_len=6, grid=4, kernel=3)
    assert show.widget.children[1].max == 6 + 16 - 1
    show("conv", 12)

    dvae = tiny_dvae()
    G = dvae.config.grid_size
    model = tiny_model(grid=G, text_len=16, image_vocab_size=24, n_layers=2)
    text = captions(model.config, B=1)
    codes = torch.randint(0, 24, (1, G * G), generator=torch.Generator().manual_seed(0))
    maps = model.attention_maps(text, codes)
    show = widgets.attention_explorer(maps, 16, G, mask_kinds=model.config.mask_kinds)
    assert [o[1] for o in show.widget.children[1].options] == [-1, 0, 1, 2, 3]  # the mean, then each head
    show(1, 2, 4, 5)

    show = widgets.sampling_playground(model, dvae, CharTokenizer(), "a red circle", n=2)
    show("a blue square", 0.8, 5, 0.9, 2.0, 7)

    show = widgets.generation_slider(dvae, codes.view(G, G), fill_code=0)
    show(20)
