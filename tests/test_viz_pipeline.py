"""viz_pipeline: lesson 5's pictures, the evaluation reports and the gallery of what breaks (tiny models, fast)."""

import pytest
from _tiny_models import mismatched_grades, tiny_models

from dalle_mini_impl import evaluate, grader, shapes, viz_pipeline


@pytest.fixture(scope="module")
def reports():
    return evaluate.evaluate_splits(tiny_models(), ("seen", "compositional"), n_prompts=3, candidates=2, keep=1, seed=0,
                                    progress=False)


def test_plot_evaluation_draws_three_bars_per_row(reports):
    fig, axes = viz_pipeline.plot_evaluation(reports)
    assert len(axes) == 2
    rows = 1 + 2 + 6  # all, 1 and 2 objects, the six checks
    assert len(axes[0].patches) == 3 * rows
    assert [t.get_text() for t in axes[0].get_xticklabels()][:3] == ["all", "1 obj.", "2 obj."]
    fig, axes = viz_pipeline.plot_evaluation(reports["seen"])  # one report works too
    assert len(axes) == 1 and axes[0].get_title(loc="left").startswith("seen: 3 captions")


def test_failure_gallery_shows_each_failing_check_most_frequent_first():
    images, captions, grades = mismatched_grades()
    counts = grader.failure_counts(grades)
    fig, axes = viz_pipeline.draw_failure_gallery(images, captions, grades, per_check=3)
    failing = [name for name, n in counts.items() if n]
    assert axes.shape == (len(failing), 4)
    assert axes[0, 0].texts[0].get_text() == failing[0]
    shown = [ax for ax in axes[0, 1:] if ax.get_visible()]
    assert len(shown) == min(3, counts[failing[0]]) and all(ax.images for ax in shown)
    matching = grader.grade(images[0], shapes.make_scenes("test", 8, seed=5)[0].caption)
    fig, axes = viz_pipeline.draw_failure_gallery(images[:1], ["x"], [matching])
    assert "no failures" in axes[0, 0].texts[0].get_text()
    with pytest.raises(ValueError, match="one of each"):
        viz_pipeline.draw_failure_gallery(images, captions[:2], grades)
