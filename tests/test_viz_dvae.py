"""Lesson 2's pictures, widgets and exercise checkers, on a tiny untrained dVAE (fast)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dalle_mini_impl import exercises, shapes, viz, widgets
from dalle_mini_impl.dvae import DVAE, DVAEConfig, code_histogram, kl_to_uniform, logit_laplace_log_prob

TINY = {"enc_width": 8, "dec_width": 8, "codebook_dim": 16, "vocab_size": 32}


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, 6 Shapes images (uint8) and their codes."""
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY)).eval()
    images = shapes.render_batch(shapes.make_scenes("test", 6, seed=0))  # (6, 64, 64, 3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return model, images, model.encode(x)  # codes (6, 8, 8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_hwc_uint8_converts_both_layouts_and_one_image():
    chw = torch.ones(2, 3, 8, 8) * 0.5
    out = viz.to_hwc_uint8(chw)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8 and (out == 128).all()
    hwc = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert viz.to_hwc_uint8(hwc) is hwc
    assert viz.to_hwc_uint8(chw[0]).shape == (8, 8, 3)


def test_draw_code_grid_writes_one_id_per_cell_and_outlines_highlights(tiny):
    _, images, codes = tiny
    _, ax = viz.draw_code_grid(images[0], codes[0], highlight=[(1, 2), (3, 4)])
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 64 and texts[0] == str(int(codes[0, 0, 0])) and texts[8 * 1 + 2] == str(int(codes[0, 1, 2]))
    outlined = [(p.get_x(), p.get_y()) for p in ax.patches]
    assert outlined == [(2 * 8 - 0.5, 1 * 8 - 0.5), (4 * 8 - 0.5, 3 * 8 - 0.5)]
    _, ax = viz.draw_code_grid(images[0])  # the grid alone
    assert not ax.texts and len(ax.lines) == 14  # 7 horizontal + 7 vertical lines


def test_draw_gumbel_softmax_samples_sharpen_and_hard_is_one_hot():
    logits = torch.tensor([1.0, 2.0, 0.5, 0.0])
    heights = {}
    for tau in (2.0, 0.05):
        _, axes = viz.draw_gumbel_softmax(logits, tau=tau, n_samples=3, seed=0, taus=[0.1, 1.0])
        assert len(axes) == 5
        heights[tau] = np.array([[bar.get_height() for bar in ax.patches] for ax in axes[1:4]])  # (3, K)
        first = np.array([bar.get_height() for bar in axes[0].patches])
        assert np.allclose(first, logits.softmax(-1).numpy(), atol=1e-6)
    assert np.allclose(heights[2.0].sum(1), 1, atol=1e-5) and (heights[0.05].max(1) > 0.95).all()
    assert (heights[0.05].max(1) > heights[2.0].max(1)).all()
    # the same noise at every τ: the winners agree
    assert (heights[2.0].argmax(1) == heights[0.05].argmax(1)).all()
    _, axes = viz.draw_gumbel_softmax(logits, tau=2.0, hard=True, n_samples=3, seed=0, taus=[1.0])
    hard = np.array([[bar.get_height() for bar in ax.patches] for ax in axes[1:4]])
    assert set(np.round(hard, 6).flatten().tolist()) <= {0.0, 1.0}


def test_draw_gumbel_softmax_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    viz.draw_gumbel_softmax(torch.zeros(4), tau=1.0, taus=[1.0])
    assert torch.equal(torch.rand(3), expected)


def test_plot_pixel_losses_minimum_sits_at_the_true_pixel():
    _, axes = viz.plot_pixel_losses(pixel=1.0, log_bs=(-1.0,))
    x_hat, nll = axes[0].lines[0].get_data()
    assert abs(x_hat[np.argmin(nll)] - 1.0) < 0.02
    x_hat, se = axes[1].lines[0].get_data()
    assert abs(x_hat[np.argmin(se)] - 1.0) < 0.02


def test_plot_training_draws_the_package_schedules():
    cfg = DVAEConfig()
    _, axes = viz.plot_training(None, cfg, 100)
    assert len(axes) == 2
    _, tau = axes[0].lines[0].get_data()
    assert tau[0] == pytest.approx(1.0) and tau[-1] == pytest.approx(1 / 16)
    _, axes = viz.plot_training({"loss": [3.0, 2.0, 1.0], "recon": [3.5, 2.5, 1.5]}, cfg, 100)
    assert len(axes) == 3 and [list(line.get_data()[1]) for line in axes[0].lines] == [[3.5, 2.5, 1.5], [3.0, 2.0, 1.0]]


def test_draw_reconstructions_marks_each_verdict(tiny):
    _, images, _ = tiny
    _, axes = viz.draw_reconstructions(images, images, ["a red circle"] * 6, [True, False] * 3, cols=4)
    assert axes.shape == (4, 4)
    marks = [t.get_text() for ax in axes[1::2].flat for t in ax.texts if t.get_text() in "✓✗"]
    assert marks == ["✓", "✗"] * 3
    assert not axes[2, 3].get_visible()  # 6 images in blocks of 4: two slots stay empty
    with pytest.raises(ValueError, match="one reconstruction per original"):
        viz.draw_reconstructions(images, images[:2])


def test_plot_code_usage_reports_perplexity_and_dead_codes():
    counts = torch.tensor([4, 4, 0, 0])
    _, ax = viz.plot_code_usage(counts)
    assert "perplexity 2.0" in ax.get_title(loc="left") and "2 of 4 codes used" in ax.get_title(loc="left")
    assert any("2 dead" in t.get_text() for t in ax.texts)


def test_code_locations_and_patches(tiny):
    _, images, codes = tiny
    assert viz.code_locations(torch.tensor([[[1, 2], [2, 3]]]), 2).tolist() == [[0, 0, 1], [0, 1, 0]]
    code = int(codes[0, 0, 0])
    n = int((codes == code).sum())
    _, axes = viz.draw_code_patches(images, codes, code, max_patches=8, cols=4)
    shown = [ax for ax in axes.flat if ax.images]
    assert len(shown) == min(n, 8)
    assert shown[0].images[0].get_array().shape == (16, 16, 3)  # the 8×8 cell and 4 pixels around it
    assert f"{n} cells" in axes.flat[0].get_title(loc="left")


def test_most_colourful_code_picks_the_code_under_the_colour():
    image = np.full((16, 16, 3), 255, dtype=np.uint8)
    image[8:, :8] = (220, 38, 38)  # one red cell of a 2×2 grid
    assert viz.most_colourful_code(image, np.array([[5, 5], [9, 5]])) == 9


def test_draw_codebook_explorer_defaults_to_the_most_colourful_code(tiny):
    _, images, codes = tiny
    _, (ax_map, patch_axes) = viz.draw_codebook_explorer(images, codes, image_index=1, max_patches=12)
    top = viz.most_colourful_code(images[1], codes[1])
    assert f"code {top}:" in patch_axes.flat[0].get_title(loc="left")
    assert len(ax_map.patches) == int((codes[1] == top).sum())  # every cell of image 1 with that code is outlined


def test_draw_code_edit_changes_only_what_the_new_code_changes(tiny):
    model, _, codes = tiny
    grid = codes[0]
    _, axes = viz.draw_code_edit(model, grid, 2, 5, int(grid[2, 5]))  # "editing" to the same code
    assert "(max 0.00)" in axes[2].get_title()
    new = (int(grid[2, 5]) + 1) % model.config.vocab_size
    _, axes = viz.draw_code_edit(model, grid, 2, 5, new)
    assert f"after: code {new}" in axes[1].get_title()
    assert torch.equal(grid, codes[0])  # the caller's grid is not modified


def test_widgets_build_with_their_controls(tiny):
    model, images, codes = tiny
    for view in (widgets.gumbel_softmax_slider(torch.tensor([0.0, 1.0])),
                 widgets.codebook_explorer(images, codes, model.config.vocab_size),
                 widgets.code_editor(model, codes[0])):
        assert view.widget.children  # the controls and the output area
    options = widgets._usage_options(codes, model.config.vocab_size)
    counts = np.bincount(codes.flatten().numpy(), minlength=model.config.vocab_size)
    assert options[0][1] == int(counts.argmax()) and len(options) == int((counts > 0).sum())


# --- the exercise checkers ---------------------------------------------------------------------


def not_done(*args):
    raise NotImplementedError


def gumbel_max(logits, n):
    return (logits - torch.log(-torch.log(torch.rand(n, len(logits))))).argmax(-1)


def exponential_race(logits, n):
    return (-torch.log(torch.rand(n, len(logits))) / logits.exp()).argmin(-1)


def my_kl(logits):
    log_q = F.log_softmax(logits, dim=1)
    return (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1).flatten(1).sum(1)


def test_lesson2_checkers_accept_right_answers(capsys):
    assert exercises.check_gumbel_max(gumbel_max)
    assert exercises.check_gumbel_max(exponential_race)
    assert exercises.check_logit_laplace_log_prob(logit_laplace_log_prob)
    assert exercises.check_kl_to_uniform(my_kl)
    assert exercises.check_kl_to_uniform(kl_to_uniform)
    assert capsys.readouterr().out.count("✓ correct") == 5


def test_lesson2_checkers_give_a_hint_before_an_attempt(capsys):
    assert not exercises.check_gumbel_max(not_done)
    assert not exercises.check_logit_laplace_log_prob(not_done)
    assert not exercises.check_kl_to_uniform(not_done)
    assert capsys.readouterr().out.count("not done yet — hint:") == 3


def test_lesson2_checkers_reject_wrong_answers():
    with pytest.raises(AssertionError, match="gumbel_max"):
        exercises.check_gumbel_max(lambda logits, n: logits.expand(n, -1).argmax(-1))  # no noise: always the mode
    with pytest.raises(AssertionError, match="gumbel_max"):  # the wrong sign of the noise
        exercises.check_gumbel_max(
            lambda logits, n: (logits + torch.log(-torch.log(torch.rand(n, len(logits))))).argmax(-1))
    with pytest.raises(AssertionError, match="gumbel_max"):
        exercises.check_gumbel_max(lambda logits, n: gumbel_max(logits, n // 2))
    with pytest.raises(AssertionError):  # forgot the Jacobian term -ln x - ln(1 - x)
        exercises.check_logit_laplace_log_prob(
            lambda x, mu, log_b: -math.log(2) - log_b - (torch.logit(x) - mu).abs() / log_b.exp())
    with pytest.raises(AssertionError):  # the mean over cells instead of the sum
        exercises.check_kl_to_uniform(lambda logits: my_kl(logits) / (logits.shape[2] * logits.shape[3]))
    with pytest.raises(AssertionError, match="shape"):  # per cell, not per image
        exercises.check_kl_to_uniform(lambda logits: my_kl(logits)[:, None])


def test_code_histogram_matches_the_usage_plot(tiny):
    model, _, codes = tiny
    hist = code_histogram(codes, model.config.vocab_size)
    _, ax = viz.plot_code_usage(hist)
    heights = [bar.get_height() for bar in ax.containers[0]]  # the bars, most used first
    assert heights == sorted(hist[hist > 0].tolist(), reverse=True)
