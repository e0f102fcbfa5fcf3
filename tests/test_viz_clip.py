"""viz_clip: lesson 4's pictures of similarities, zero-shot reading, retrieval and reranked candidates (tiny models)."""

import math

import numpy as np
import pytest
from _tiny_models import tiny_models

from dalle_mini_impl import evaluate, grader, pipeline, shapes, viz_clip
from dalle_mini_impl.clip import retrieve, scene_attributes, zero_shot_probs


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def scenes():
    found = shapes.make_scenes("test", 6, seed=0)
    return found, shapes.render_batch(found)  # (6, 64, 64, 3)


def test_similarity_matrix_outlines_the_diagonal_and_writes_values(scenes):
    found, images = scenes
    sims = np.eye(6) * 0.8 + 0.1
    fig, ax = viz_clip.plot_similarity_matrix(sims, images, [s.caption for s in found])
    outlined = sorted((p.get_x(), p.get_y()) for p in ax.patches)
    assert outlined == [(i - 0.5, i - 0.5) for i in range(6)]
    assert sum(t.get_text() == "0.90" for t in ax.texts) == 6
    assert "t5: " + found[5].caption in ax.get_xlabel()
    with pytest.raises(ValueError, match="square"):
        viz_clip.plot_similarity_matrix(np.zeros((3, 4)))


def test_plot_clip_training_draws_loss_chance_and_scale():
    history = {"loss": list(np.linspace(4.0, 1.0, 30)), "scale": list(np.linspace(14.3, 16.0, 30))}
    fig, axes = viz_clip.plot_clip_training(history, batch_size=64, smooth=5)
    assert len(axes[0].lines) == 3  # raw, running mean, chance
    assert axes[0].lines[2].get_ydata()[0] == pytest.approx(math.log(64))
    assert len(axes[1].lines) == 1


def test_zero_shot_pictures(models, scenes):
    one = [shapes.sample_scene(shapes.scene_rng("test", 0, i), "test", n_objects=1) for i in range(3)]
    images = shapes.render_batch(one)
    probs = zero_shot_probs(models.clip, models.tokenizer, images)
    fig, axes = viz_clip.draw_zero_shot_examples(images, probs, [scene_attributes(s) for s in one], top=3)
    assert axes.shape == (3, 5)
    assert all(len(ax.patches) == 3 for ax in axes[:, 2])  # three shape bars per image
    assert len(axes[0, 3].patches) == 2  # only two sizes
    accuracy = {"test": {"color": 0.9, "shape": 0.8, "size": 0.7, "position": 0.6},
                "compositional": {"color": 0.5, "shape": 0.4, "size": 0.7, "position": 0.6}}
    fig, ax = viz_clip.plot_zero_shot_accuracy(accuracy)
    assert len(ax.patches) == 8
    chance = sorted(round(line.get_ydata()[0], 4) for line in ax.lines)
    assert chance == [round(1 / 9, 4), round(1 / 6, 4), round(1 / 5, 4), 0.5]


def test_draw_retrieval_draws_each_captions_best_images_with_scores_and_verdicts(scenes):
    found, images = scenes
    captions = [found[2].caption, found[4].caption]
    sims = np.zeros((6, 2))
    sims[2, 0], sims[4, 1], sims[1, 1] = 0.9, 0.8, 0.7  # each caption's own image first
    indices, matches = retrieve(captions, images, sims, k=3)
    fig, axes = viz_clip.draw_retrieval(captions, images, sims, indices, matches)
    assert axes.shape == (2, 4)
    assert axes[0, 1].get_title() == "0.900" and axes[1, 2].get_title() == "0.700"
    assert np.array_equal(axes[0, 1].images[0].get_array(), images[2])
    assert axes[0, 1].get_xlabel() == "✓" and axes[1, 1].get_xlabel() == "✓"  # the grader reads its own caption


def test_draw_scored_images_writes_ranks_scores_and_verdicts(scenes):
    found, images = scenes
    grades = [grader.grade(image, found[0].caption) for image in images]
    fig, axes = viz_clip.draw_scored_images(images[:5], [0.9, 0.8, 0.7, 0.6, 0.5], grades[:5], title="t", cols=4)
    assert axes.shape == (2, 4)
    assert axes[0, 0].get_title() == "#1  0.900" and axes[1, 0].get_title() == "#5  0.500"
    assert [t.get_text() for t in axes[0, 0].texts] == ["✓"]  # the image drawn for that caption
    assert not axes[1, 1].get_visible()  # unused slots are hidden
    fig, axes = viz_clip.draw_scored_images(images[:2], labels=["a", "b"])
    assert axes[0, 1].get_title() == "b" and not axes[0, 1].texts


def test_a_long_title_over_one_image_keeps_to_a_few_lines(scenes):
    found, images = scenes
    title = viz_clip.generation_title("a small green square to the left of a large purple cross",
                                      [grader.grade(image, found[0].caption) for image in images], True, 1, 0)
    for k in (1, 2, 8):
        fig, _ = viz_clip.draw_scored_images(images[:k], title=title, cols=k)
        lines = fig.texts[0].get_text().split("\n")
        assert len(lines) <= 3 and fig.get_figwidth() >= viz_clip.MIN_TITLED_WIDTH
    fig, _ = viz_clip.draw_scored_images(images[:1])  # no title: as narrow as the image
    assert fig.get_figwidth() < 2


def test_draw_generation_shows_n_ranked_candidates_or_the_best_k(models):
    prompt = "a large red circle in the top left"

    def draw(models, prompt, candidates, keep=None, seed=0):
        c = evaluate.graded_candidates(models, prompt, candidates=candidates, seed=seed, device="cpu")
        return viz_clip.draw_generation(c.prompt, c.images, c.scores, c.grades, keep=keep, seed=seed)

    fig, axes = draw(models, prompt, candidates=4, seed=0)
    titles = [ax.get_title() for ax in axes.flat]
    scores = [float(t.split()[1]) for t in titles]
    assert titles[0].startswith("#1") and scores == sorted(scores, reverse=True)
    result = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=4, keep=4,
                               seed=0, clip_model=models.clip, device="cpu")[0]
    assert np.array_equal(axes[0, 0].images[0].get_array(), result.images[0])  # the same images as generate
    header = fig.texts[0].get_text().replace("\n", " ")
    assert "4 candidates (seed 0)" in header and "the top one" in header
    fig, axes = draw(models, prompt, candidates=4, keep=2, seed=0)
    assert axes.size == 2 and "the best 2 of 4" in fig.texts[0].get_text().replace("\n", " ")
    fig, axes = draw(models, "a cat on a mat", candidates=2)
    assert "not graded" in fig.texts[0].get_text().replace("\n", " ")
    no_clip = pipeline.Models(models.tokenizer, models.dvae, models.transformer, None)
    fig, axes = draw(no_clip, prompt, candidates=2)
    assert "sampling order" in fig.texts[0].get_text().replace("\n", " ")
    assert axes[0, 0].get_title() == "#1"  # no scores without CLIP


def test_plot_fidelity_vs_n_draws_three_curves():
    ns = [1, 2, 4]
    fig, ax = viz_clip.plot_fidelity_vs_n(ns, [0.2, 0.3, 0.4], [0.2, 0.4, 0.6], [0.2, 0.31, 0.4], n_prompts=3)
    assert len(ax.lines) == 4  # oracle, top-1, subsets, the N = 1 line
    assert list(ax.lines[1].get_ydata()) == [0.2, 0.3, 0.4]
    assert "3 prompts" in ax.get_title(loc="left")
