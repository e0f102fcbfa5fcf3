"""Lessons 4 and 5: the exact best-of-N rates, the pictures, the widgets and the exercise checkers (tiny models, fast)."""

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dalle_mini_impl import exercises, grader, pipeline, shapes, viz, widgets  # noqa: E402
from dalle_mini_impl.clip import (  # noqa: E402
    CLIP,
    CLIPConfig,
    contrastive_loss,
    expected_any_match,
    expected_top1_match,
    zero_shot_probs,
)
from dalle_mini_impl.dvae import DVAE, DVAEConfig  # noqa: E402
from dalle_mini_impl.bpe import load_tokenizer  # noqa: E402
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig  # noqa: E402

TINY_CLIP = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)
TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
TINY_TRANSFORMER = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)


@pytest.fixture(scope="module")
def models():
    """Untrained tiny models with the course tokenizer: what the pipeline needs, in milliseconds."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    dvae = DVAE(DVAEConfig(**TINY_DVAE)).eval()
    transformer = DalleTransformer(TransformerConfig(text_vocab_size=tokenizer.vocab_size, **TINY_TRANSFORMER)).eval()
    clip_model = CLIP(CLIPConfig(**TINY_CLIP)).eval()
    return pipeline.Models(tokenizer, dvae, transformer, clip_model)


@pytest.fixture(scope="module")
def scenes():
    found = shapes.make_scenes("test", 6, seed=0)
    return found, shapes.render_batch(found)  # (6, 64, 64, 3)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def not_done(*args):
    raise NotImplementedError


# --- the exact best-of-N rates (clip.py) ------------------------------------------------------


def _brute_force(scores, matches, n):
    """Average over every n-subset: CLIP's pick (highest score, first on ties), and whether any matches."""
    subsets = list(itertools.combinations(range(len(scores)), n))
    top = np.mean([matches[max(c, key=lambda i: (scores[i], -i))] for c in subsets])
    anyone = np.mean([matches[list(c)].any() for c in subsets])
    return top, anyone


def test_expected_rates_equal_the_average_over_all_subsets():
    rng = np.random.default_rng(0)
    for M in (1, 3, 8):
        scores, matches = rng.random(M), rng.random(M) < 0.5
        for n in range(1, M + 1):
            top, anyone = _brute_force(scores, matches, n)
            assert expected_top1_match(scores, matches, n) == pytest.approx(top, abs=1e-12)
            assert expected_any_match(matches, n) == pytest.approx(anyone, abs=1e-12)


def test_expected_rates_known_answers_and_edges():
    assert expected_top1_match([0.9, 0.5, 0.1], [False, True, True], 2) == pytest.approx(1 / 3)
    assert expected_any_match([False, True, True], 2) == 1.0
    scores, matches = np.array([[0.2, 0.9, 0.4], [0.1, 0.3, 0.2]]), np.array([[1, 0, 1], [0, 0, 1]], bool)
    assert expected_top1_match(scores, matches, 1) == pytest.approx(matches.mean())  # N = 1: no reranking
    assert expected_top1_match(scores, matches, 3) == pytest.approx(np.mean([0, 0]))  # N = M: CLIP's favourite
    ties = np.zeros(4)  # equal scores: the first candidate wins, as in rerank
    assert expected_top1_match(ties, [True, False, False, False], 4) == 1.0
    with pytest.raises(ValueError, match="between 1 and"):
        expected_top1_match(scores, matches, 4)
    with pytest.raises(ValueError, match="same shape"):
        expected_top1_match(scores, matches[:, :2], 1)
    with pytest.raises(ValueError, match="between 1 and"):
        expected_any_match(matches, 0)


# --- lesson 4 pictures ---------------------------------------------------------------------------


def test_verdict_label_names_the_failed_checks():
    grade = grader.grade(np.full((64, 64, 3), 255, np.uint8), "a red circle")
    text, color = viz.verdict_label(grade)
    assert text.startswith("✗") and "count" in text and color == viz.BAD
    assert viz.verdict_label(True) == ("✓", viz.GOOD)
    assert viz.verdict_label(np.bool_(False)) == ("✗", viz.BAD)
    assert viz.verdict_label(grader.grade(np.zeros((64, 64, 3), np.uint8), "a cat"))[0] == "?"
    assert viz.verdict_label(None)[0] == ""


def test_similarity_matrix_outlines_the_diagonal_and_writes_values(scenes):
    found, images = scenes
    sims = np.eye(6) * 0.8 + 0.1
    fig, ax = viz.plot_similarity_matrix(sims, images, [s.caption for s in found])
    outlined = sorted((p.get_x(), p.get_y()) for p in ax.patches)
    assert outlined == [(i - 0.5, i - 0.5) for i in range(6)]
    assert sum(t.get_text() == "0.90" for t in ax.texts) == 6
    assert "t5: " + found[5].caption in ax.get_xlabel()
    with pytest.raises(ValueError, match="square"):
        viz.plot_similarity_matrix(np.zeros((3, 4)))


def test_plot_clip_training_draws_loss_chance_and_scale():
    history = {"loss": list(np.linspace(4.0, 1.0, 30)), "scale": list(np.linspace(14.3, 16.0, 30))}
    fig, axes = viz.plot_clip_training(history, batch_size=64, smooth=5)
    assert len(axes[0].lines) == 3  # raw, running mean, chance
    assert axes[0].lines[2].get_ydata()[0] == pytest.approx(math.log(64))
    assert len(axes[1].lines) == 1


def test_zero_shot_pictures(models, scenes):
    one = [shapes.sample_scene(shapes.scene_rng("test", 0, i), "test", n_objects=1) for i in range(3)]
    images = shapes.render_batch(one)
    probs = zero_shot_probs(models.clip, models.tokenizer, images)
    from dalle_mini_impl.clip import scene_attributes

    fig, axes = viz.draw_zero_shot_examples(images, probs, [scene_attributes(s) for s in one], top=3)
    assert axes.shape == (3, 5)
    assert all(len(ax.patches) == 3 for ax in axes[:, 2])  # three shape bars per image
    assert len(axes[0, 3].patches) == 2  # only two sizes
    accuracy = {"test": {"color": 0.9, "shape": 0.8, "size": 0.7, "position": 0.6},
                "compositional": {"color": 0.5, "shape": 0.4, "size": 0.7, "position": 0.6}}
    fig, ax = viz.plot_zero_shot_accuracy(accuracy)
    assert len(ax.patches) == 8
    chance = sorted(round(line.get_ydata()[0], 4) for line in ax.lines)
    assert chance == [round(1 / 9, 4), round(1 / 6, 4), round(1 / 5, 4), 0.5]


def test_draw_retrieval_ranks_by_similarity_and_grades(scenes):
    found, images = scenes
    captions = [found[2].caption, found[4].caption]
    sims = np.zeros((6, 2))
    sims[2, 0], sims[4, 1], sims[1, 1] = 0.9, 0.8, 0.7  # each caption's own image first
    fig, axes = viz.draw_retrieval(captions, images, sims, k=3)
    assert axes.shape == (2, 4)
    assert axes[0, 1].get_title() == "0.900" and axes[1, 2].get_title() == "0.700"
    assert np.array_equal(axes[0, 1].images[0].get_array(), images[2])
    assert axes[0, 1].get_xlabel() == "✓" and axes[1, 1].get_xlabel() == "✓"  # the grader reads its own caption
    with pytest.raises(ValueError, match="images, captions"):
        viz.draw_retrieval(captions, images, sims.T)


def test_draw_scored_images_writes_ranks_scores_and_verdicts(scenes):
    found, images = scenes
    grades = [grader.grade(image, found[0].caption) for image in images]
    fig, axes = viz.draw_scored_images(images[:5], [0.9, 0.8, 0.7, 0.6, 0.5], grades[:5], title="t", cols=4)
    assert axes.shape == (2, 4)
    assert axes[0, 0].get_title() == "#1  0.900" and axes[1, 0].get_title() == "#5  0.500"
    assert [t.get_text() for t in axes[0, 0].texts] == ["✓"]  # the image drawn for that caption
    assert not axes[1, 1].get_visible()  # unused slots are hidden
    fig, axes = viz.draw_scored_images(images[:2], labels=["a", "b"])
    assert axes[0, 1].get_title() == "b" and not axes[0, 1].texts


def test_draw_generation_shows_n_ranked_candidates_or_the_best_k(models):
    prompt = "a large red circle in the top left"
    fig, axes = viz.draw_generation(models, prompt, candidates=4, seed=0, device="cpu")
    titles = [ax.get_title() for ax in axes.flat]
    scores = [float(t.split()[1]) for t in titles]
    assert titles[0].startswith("#1") and scores == sorted(scores, reverse=True)
    result = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=4, keep=4,
                               seed=0, clip_model=models.clip, device="cpu")[0]
    assert np.array_equal(axes[0, 0].images[0].get_array(), result.images[0])  # the same images as generate
    header = fig.texts[0].get_text().replace("\n", " ")
    assert "4 candidates (seed 0)" in header and "the top one" in header
    fig, axes = viz.draw_generation(models, prompt, candidates=4, keep=2, seed=0, device="cpu")
    assert axes.size == 2 and "the best 2 of 4" in fig.texts[0].get_text().replace("\n", " ")
    fig, axes = viz.draw_generation(models, "a cat on a mat", candidates=2, device="cpu")
    assert "not graded" in fig.texts[0].get_text().replace("\n", " ")
    no_clip = pipeline.Models(models.tokenizer, models.dvae, models.transformer, None)
    fig, axes = viz.draw_generation(no_clip, prompt, candidates=2, device="cpu")
    assert "sampling order" in fig.texts[0].get_text().replace("\n", " ")
    assert axes[0, 0].get_title() == "#1"  # no scores without CLIP


def test_plot_fidelity_vs_n_draws_three_curves():
    ns = [1, 2, 4]
    fig, ax = viz.plot_fidelity_vs_n(ns, [0.2, 0.3, 0.4], [0.2, 0.4, 0.6], [0.2, 0.31, 0.4], n_prompts=3)
    assert len(ax.lines) == 4  # oracle, top-1, subsets, the N = 1 line
    assert list(ax.lines[1].get_ydata()) == [0.2, 0.3, 0.4]
    assert "3 prompts" in ax.get_title(loc="left")


def test_reranking_viewer_builds(models):
    view = widgets.reranking_viewer(models, candidates=2)
    assert view is not None


# --- lesson 4 checkers -----------------------------------------------------------------------------


def test_lesson4_checkers_accept_the_right_answers(capsys):
    assert exercises.check_contrastive_loss(contrastive_loss)
    assert exercises.check_expected_top1(expected_top1_match)
    assert exercises.check_recall_at_k(exercises.recall_at_k)
    assert capsys.readouterr().out.count("✓ correct") == 3


def test_lesson4_checkers_give_hints_before_an_attempt(capsys):
    assert not exercises.check_contrastive_loss(not_done)
    assert not exercises.check_expected_top1(not_done)
    assert not exercises.check_recall_at_k(not_done)
    assert capsys.readouterr().out.count("not done yet — hint:") == 3


def test_lesson4_checkers_reject_wrong_answers():
    def one_direction(v, t, s, positives):  # image -> text only, a classic slip
        logits = s * v @ t.T
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(v)))

    def ignores_positives(v, t, s, positives):
        return contrastive_loss(v, t, s)

    for wrong in (one_direction, ignores_positives):
        with pytest.raises(AssertionError, match="expected"):
            exercises.check_contrastive_loss(wrong)

    def best_of_all(scores, matches, n):  # forgets the subsets: always CLIP's overall favourite
        return float(matches[np.argmax(scores)])

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_expected_top1(best_of_all)

    def row_wise(sims, k):  # image -> text instead of text -> image
        return exercises.recall_at_k(np.asarray(sims).T, k)

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_recall_at_k(row_wise)


def test_recall_at_k_known_answers():
    assert exercises.recall_at_k([[0.9, 0.6], [0.8, 0.2]], 1) == 0.5
    assert exercises.recall_at_k([[0.9, 0.6], [0.8, 0.2]], 2) == 1.0
    assert exercises.recall_at_k(np.ones((3, 3)), 1) == 0.0  # ties count against the caption
    assert exercises.recall_at_k(torch.eye(3), 1) == 1.0


# --- capstone: evaluation pictures, failures, the playground, the checkers --------------------------


@pytest.fixture(scope="module")
def reports(models):
    from dalle_mini_impl import evaluate

    return evaluate.evaluate_splits(models, ("seen", "compositional"), n_prompts=3, candidates=2, keep=1, seed=0,
                                    progress=False)


def test_plot_evaluation_draws_three_bars_per_row(reports):
    fig, axes = viz.plot_evaluation(reports)
    assert len(axes) == 2
    rows = 1 + 2 + 6  # all, 1 and 2 objects, the six checks
    assert len(axes[0].patches) == 3 * rows
    assert [t.get_text() for t in axes[0].get_xticklabels()][:3] == ["all", "1 obj.", "2 obj."]
    fig, axes = viz.plot_evaluation(reports["seen"])  # one report works too
    assert len(axes) == 1 and axes[0].get_title(loc="left").startswith("seen: 3 captions")


def test_match_rates_reproduce_the_report(reports):
    for report in reports.values():
        rates = exercises.match_rates(report["prompts"], report["keep"])
        for key, value in rates.items():
            assert value == pytest.approx(report["overall"][key])


def _grades():
    found = shapes.make_scenes("test", 8, seed=5)
    images = shapes.render_batch(found)
    captions = [found[(i + 1) % 8].caption for i in range(8)]  # every image against the next one's caption
    return images, captions, [grader.grade(im, c) for im, c in zip(images, captions)]


def test_failure_reasons_split_the_grader_reason_by_check():
    blank = np.full((64, 64, 3), 255, np.uint8)
    why = viz.failure_reasons(grader.grade(blank, "a red circle"))
    assert set(why) == {"count", "color", "shape"}
    assert why["count"] == "expected 1 object(s), found 0 (nothing)" and why["color"] == viz.NO_OBJECT
    image = shapes.render(shapes.make_scenes("test", 1, seed=0)[0])
    assert viz.failure_reasons(grader.grade(image, shapes.make_scenes("test", 1, seed=0)[0].caption)) == {}
    for grade in _grades()[2]:
        failed = {name for name, ok in grade.checks.items() if ok is False}
        assert set(viz.failure_reasons(grade)) == failed


def test_failure_counts_and_gallery():
    images, captions, grades = _grades()
    counts = viz.failure_counts(grades)
    assert list(counts) == sorted(counts, key=lambda k: -counts[k]) and set(counts) == set(grader.CHECKS)
    for name, n in counts.items():
        assert n == sum(g.checks[name] is False for g in grades)
    fig, axes = viz.draw_failure_gallery(images, captions, grades, per_check=3)
    failing = [name for name, n in counts.items() if n]
    assert axes.shape == (len(failing), 4)
    assert axes[0, 0].texts[0].get_text() == failing[0]
    shown = [ax for ax in axes[0, 1:] if ax.get_visible()]
    assert len(shown) == min(3, counts[failing[0]]) and all(ax.images for ax in shown)
    matching = grader.grade(images[0], shapes.make_scenes("test", 8, seed=5)[0].caption)
    fig, axes = viz.draw_failure_gallery(images[:1], ["x"], [matching])
    assert "no failures" in axes[0, 0].texts[0].get_text()
    with pytest.raises(ValueError, match="one of each"):
        viz.draw_failure_gallery(images, captions[:2], grades)


def test_prompt_playground_builds(models):
    assert widgets.prompt_playground(models, candidates=2, keep=1) is not None


def test_capstone_checkers_accept_the_right_answers(models, capsys):
    def my_generate(prompt, models, candidates, keep, seed):
        r = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates,
                              keep=keep, seed=seed, temperature=1.0, condition_scale=3.0, clip_model=models.clip)[0]
        return r.images, r.scores

    assert exercises.check_generate(my_generate, models)
    assert exercises.check_match_rates(exercises.match_rates)
    assert exercises.check_failure_counts(viz.failure_counts)
    assert capsys.readouterr().out.count("✓ correct") == 3


def test_capstone_checkers_give_hints_before_an_attempt(models, capsys):
    assert not exercises.check_generate(not_done, models)
    assert not exercises.check_match_rates(not_done)
    assert not exercises.check_failure_counts(not_done)
    assert capsys.readouterr().out.count("not done yet — hint:") == 3


def test_capstone_checkers_reject_wrong_answers(models):
    def unranked(prompt, models, candidates, keep, seed):  # forgets to rerank
        r = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates,
                              keep=keep, seed=seed, temperature=1.0, condition_scale=3.0)[0]
        return r.images, np.zeros(keep, np.float32)

    with pytest.raises(AssertionError, match="generate keeps|scores"):
        exercises.check_generate(unranked, models)

    def first_sample(prompts, keep):  # top-1 in sampling order instead of CLIP's order
        rates = exercises.match_rates(prompts, keep)
        rates["top1"] = float(np.mean([r["matches"][0] for r in prompts]))
        return rates

    with pytest.raises(AssertionError, match="top1"):
        exercises.check_match_rates(first_sample)

    def counts_ungradable(grades):  # counts None (not stated) as a failure
        return {name: sum(g.checks[name] is not True for g in grades) for name in grader.CHECKS}

    with pytest.raises(AssertionError, match="expected"):
        exercises.check_failure_counts(counts_ungradable)
