"""viz_dvae: lesson 2's pictures, on a tiny untrained dVAE (fast)."""

import numpy as np
import pytest
import torch
from _tiny_models import tiny_dvae_with_codes

from dalle_mini_impl import viz_dvae
from dalle_mini_impl.dvae import DVAEConfig, code_histogram, most_colourful_code


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, 6 Shapes images (uint8) and their codes."""
    return tiny_dvae_with_codes()


def test_draw_code_grid_writes_one_id_per_cell_and_outlines_highlights(tiny):
    _, images, codes = tiny
    _, ax = viz_dvae.draw_code_grid(images[0], codes[0], highlight=[(1, 2), (3, 4)])
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 64 and texts[0] == str(int(codes[0, 0, 0])) and texts[8 * 1 + 2] == str(int(codes[0, 1, 2]))
    outlined = [(p.get_x(), p.get_y()) for p in ax.patches]
    assert outlined == [(2 * 8 - 0.5, 1 * 8 - 0.5), (4 * 8 - 0.5, 3 * 8 - 0.5)]
    _, ax = viz_dvae.draw_code_grid(images[0])  # the grid alone
    assert not ax.texts and len(ax.lines) == 14  # 7 horizontal + 7 vertical lines


def test_draw_gumbel_softmax_samples_sharpen_and_hard_is_one_hot():
    logits = torch.tensor([1.0, 2.0, 0.5, 0.0])
    heights = {}
    for tau in (2.0, 0.05):
        _, axes = viz_dvae.draw_gumbel_softmax(logits, tau=tau, n_samples=3, seed=0, taus=[0.1, 1.0])
        assert len(axes) == 5
        heights[tau] = np.array([[bar.get_height() for bar in ax.patches] for ax in axes[1:4]])  # (3, K)
        first = np.array([bar.get_height() for bar in axes[0].patches])
        assert np.allclose(first, logits.softmax(-1).numpy(), atol=1e-6)
    assert np.allclose(heights[2.0].sum(1), 1, atol=1e-5) and (heights[0.05].max(1) > 0.95).all()
    assert (heights[0.05].max(1) > heights[2.0].max(1)).all()
    # the same noise at every τ: the winners agree
    assert (heights[2.0].argmax(1) == heights[0.05].argmax(1)).all()
    _, axes = viz_dvae.draw_gumbel_softmax(logits, tau=2.0, hard=True, n_samples=3, seed=0, taus=[1.0])
    hard = np.array([[bar.get_height() for bar in ax.patches] for ax in axes[1:4]])
    assert set(np.round(hard, 6).flatten().tolist()) <= {0.0, 1.0}


def test_draw_gumbel_softmax_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    viz_dvae.draw_gumbel_softmax(torch.zeros(4), tau=1.0, taus=[1.0])
    assert torch.equal(torch.rand(3), expected)


def test_plot_pixel_losses_minimum_sits_at_the_true_pixel():
    _, axes = viz_dvae.plot_pixel_losses(pixel=1.0, log_bs=(-1.0,))
    x_hat, nll = axes[0].lines[0].get_data()
    assert abs(x_hat[np.argmin(nll)] - 1.0) < 0.02
    x_hat, se = axes[1].lines[0].get_data()
    assert abs(x_hat[np.argmin(se)] - 1.0) < 0.02


def test_plot_pixel_losses_zoom_puts_both_losses_on_one_axis_and_labels_the_mark():
    _, axes = viz_dvae.plot_pixel_losses(pixel=1.0, log_bs=(-2.0,), zoom=(0.85, 1.02), mark=0.95)
    assert len(axes) == 3 and axes[2].get_xlim() == (0.85, 1.02)
    (x_ll, ll), (x_se, se) = (line.get_data() for line in axes[2].lines[:2])
    assert x_ll.min() >= 0.85 and x_ll.max() <= 1.02 and ll.min() == pytest.approx(0, abs=1e-3)
    i = np.argmin(np.abs(x_ll - 0.95))
    assert ll[i] > 2.0 and se[i] == pytest.approx(0.0025, abs=2e-4)  # nats against a squared error of 0.05²
    label = axes[2].texts[0].get_text()
    assert f"+{ll[i]:.1f} nats" in label and "+0.0025 squared error" in label


def test_plot_training_draws_the_package_schedules():
    cfg = DVAEConfig()
    _, axes = viz_dvae.plot_training(None, cfg, 100)
    assert len(axes) == 2
    _, tau = axes[0].lines[0].get_data()
    assert tau[0] == pytest.approx(1.0) and tau[-1] == pytest.approx(1 / 16)
    _, axes = viz_dvae.plot_training({"loss": [3.0, 2.0, 1.0], "recon": [3.5, 2.5, 1.5]}, cfg, 100)
    assert len(axes) == 3 and [list(line.get_data()[1]) for line in axes[0].lines] == [[3.5, 2.5, 1.5], [3.0, 2.0, 1.0]]
    history = {"loss": [3.0, 2.0], "recon": [2.5, 1.5], "beta_kl": [0.3, 0.3], "diversity": [0.2, 0.2]}
    _, axes = viz_dvae.plot_training(history, cfg, 100)
    labels = [line.get_label() for line in axes[0].lines]
    assert labels == ["recon", "β·kl", "w·diversity", "loss = recon + β·kl + w·diversity"]


def test_draw_reconstructions_marks_each_verdict(tiny):
    _, images, _ = tiny
    _, axes = viz_dvae.draw_reconstructions(images, images, ["a red circle"] * 6, [True, False] * 3, cols=4)
    assert axes.shape == (4, 4)
    marks = [t.get_text() for ax in axes[1::2].flat for t in ax.texts if t.get_text() in "✓✗"]
    assert marks == ["✓", "✗"] * 3
    assert not axes[2, 3].get_visible()  # 6 images in blocks of 4: two slots stay empty
    with pytest.raises(ValueError, match="one reconstruction per original"):
        viz_dvae.draw_reconstructions(images, images[:2])


def test_plot_code_usage_reports_perplexity_and_dead_codes():
    counts = torch.tensor([4, 4, 0, 0])
    _, ax = viz_dvae.plot_code_usage(counts)
    assert "perplexity 2.0" in ax.get_title(loc="left") and "2 of 4 codes used" in ax.get_title(loc="left")
    assert any("2 dead" in t.get_text() for t in ax.texts)


def test_draw_code_patches(tiny):
    _, images, codes = tiny
    code = int(codes[0, 0, 0])
    n = int((codes == code).sum())
    _, axes = viz_dvae.draw_code_patches(images, codes, code, max_patches=8, cols=4)
    shown = [ax for ax in axes.flat if ax.images]
    assert len(shown) == min(n, 8)
    assert shown[0].images[0].get_array().shape == (16, 16, 3)  # the 8×8 cell and 4 pixels around it
    assert f"{n} cells" in axes.flat[0].get_title(loc="left")


def test_draw_codebook_explorer_defaults_to_the_most_colourful_code(tiny):
    _, images, codes = tiny
    _, (ax_map, patch_axes) = viz_dvae.draw_codebook_explorer(images, codes, image_index=1, max_patches=12)
    top = most_colourful_code(images[1], codes[1])
    assert f"code {top}:" in patch_axes.flat[0].get_title(loc="left")
    assert len(ax_map.patches) == int((codes[1] == top).sum())  # every cell of image 1 with that code is outlined


def test_draw_code_edit_changes_only_what_the_new_code_changes(tiny):
    model, _, codes = tiny
    grid = codes[0]
    _, axes = viz_dvae.draw_code_edit(model, grid, 2, 5, int(grid[2, 5]))  # "editing" to the same code
    assert "(max 0.00)" in axes[2].get_title()
    new = (int(grid[2, 5]) + 1) % model.config.vocab_size
    _, axes = viz_dvae.draw_code_edit(model, grid, 2, 5, new)
    assert f"after: code {new}" in axes[1].get_title()
    assert torch.equal(grid, codes[0])  # the caller's grid is not modified


def test_code_histogram_matches_the_usage_plot(tiny):
    model, _, codes = tiny
    hist = code_histogram(codes, model.config.vocab_size)
    _, ax = viz_dvae.plot_code_usage(hist)
    heights = [bar.get_height() for bar in ax.containers[0]]  # the bars, most used first
    assert heights == sorted(hist[hist > 0].tolist(), reverse=True)


def test_draw_snapshots_one_row_per_step_with_the_failed_checks(tiny):
    _, images, _ = tiny
    from dalle_mini_impl import grader

    n = 4
    captions = ["a red circle"] * n
    grades = {10: [grader.grade(im, c) for im, c in zip(images[:n], captions)],
              5: [grader.grade(im, c) for im, c in zip(images[:n], captions)]}
    fig, axes = viz_dvae.draw_snapshots(images[:n], {10: images[:n], 5: images[:n]}, captions, grades)
    assert axes.shape == (3, n)
    assert [axes[r, 0].get_ylabel() for r in range(3)] == ["original", "step 5", "step 10"]  # steps in order
    verdict = axes[1, 0].texts[0].get_text()
    assert verdict == "✓" if grades[5][0].match else verdict.startswith("✗ ")
    with pytest.raises(ValueError, match="one reconstruction per original"):
        viz_dvae.draw_snapshots(images[:n], {1: images[:n - 1]}, captions)
