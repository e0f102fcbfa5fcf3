"""evaluate: the capstone's fidelity report (random vs CLIP top-1 vs any of the top K), and the evaluate CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from _tiny_models import CharTokenizer, tiny_dvae, tiny_transformer

from dalle_mini_impl import DATA_DIR, checkpoints, cli, evaluate, grader, pipeline, shapes
from dalle_mini_impl.clip import CLIP, CLIPConfig, rerank
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.sampling import sample_images
from dalle_mini_impl.transformer import encode_captions
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
TINY = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)
TINY_CLIP = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)
SMALL = dict(n_prompts=6, candidates=4, keep=2, seed=0, prompts_per_batch=4, progress=False)  # batches of 4 and 2


@pytest.fixture(scope="module")
def models():
    """Tiny random models, with a tiny random CLIP: the wiring is under test, not the quality."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    dvae = DVAE(DVAEConfig(**TINY_DVAE)).eval()
    transformer = DalleTransformer(TransformerConfig(text_vocab_size=tokenizer.vocab_size, **TINY)).eval()
    clip = CLIP(CLIPConfig(text_vocab_size=tokenizer.vocab_size, **TINY_CLIP)).eval()
    return pipeline.Models(tokenizer, dvae, transformer, clip)


@pytest.fixture(scope="module")
def report(models):
    return evaluate.evaluate_pipeline(models, "seen", **SMALL)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, models):
    """A folder laid out like data/, holding the tiny models (no CLIP)."""
    root = tmp_path_factory.mktemp("models")
    (root / "tokenizer").mkdir()
    shutil.copy(DATA_DIR / "tokenizer" / "bpe.json", root / "tokenizer" / "bpe.json")
    checkpoints.save_model(models.dvae, models.dvae.config, root / "dvae", "dvae")
    checkpoints.save_model(models.transformer, models.transformer.config, root / "transformer", "transformer")
    return root


def rows_of(report):
    """Every row of a report: overall, per number of objects, per attribute."""
    return [report["overall"], *report["by_objects"].values(), *report["by_attribute"].values()]


# --- the report -----------------------------------------------------------------------------


def test_report_structure_and_counts(report):
    assert report["split"] == "seen" and report["shapes_split"] == "test" and report["reranked"] is True
    assert (report["n"], report["candidates"], report["keep"], report["seed"]) == (6, 4, 2, 0)
    assert report["sampling"] == {"temperature": 0.9, "top_k": None, "top_p": None, "condition_scale": 1.25,
                                  "prompts_per_batch": 4}
    captions = [s.caption for s in shapes.make_scenes("test", 6, 0)]
    assert [p["caption"] for p in report["prompts"]] == captions
    assert report["overall"]["n"] == 6
    assert set(report["by_objects"]) == {1, 2} and sum(r["n"] for r in report["by_objects"].values()) == 6
    assert list(report["by_attribute"]) == list(grader.CHECKS)
    for always in ("count", "color", "shape"):  # every caption states these
        assert report["by_attribute"][always]["n"] == 6
    for record in report["prompts"]:
        assert len(record["matches"]) == 4 and len(record["scores"]) == 4
        assert sorted(record["ranking"]) == [0, 1, 2, 3]
    json.dumps(report)  # plain data, ready for a JSON file


def test_rates_are_fractions_and_top_k_covers_top_1(report):
    for row in rows_of(report):
        assert set(row) == {"random", "top1", "any_of_top_k", "n"}
        if row["n"] == 0:
            assert row["random"] is row["top1"] is row["any_of_top_k"] is None
            continue
        assert all(0.0 <= row[r] <= 1.0 for r in evaluate.ROWS)
        assert row["any_of_top_k"] >= row["top1"]


def test_overall_rates_are_the_means_over_prompts(report):
    records = report["prompts"]
    assert report["overall"]["random"] == pytest.approx(np.mean([np.mean(r["matches"]) for r in records]))
    assert report["overall"]["top1"] == pytest.approx(np.mean([r["matches"][r["ranking"][0]] for r in records]))
    assert report["overall"]["any_of_top_k"] == pytest.approx(
        np.mean([any(r["matches"][i] for i in r["ranking"][:2]) for r in records]))


def test_same_seed_same_report(models, report):
    assert evaluate.evaluate_pipeline(models, "seen", **SMALL) == report
    other = evaluate.evaluate_pipeline(models, "seen", **{**SMALL, "seed": 1})
    assert [p["caption"] for p in other["prompts"]] != [p["caption"] for p in report["prompts"]]


def test_top1_is_the_clip_argmax_of_the_candidates(models, report):
    """Redo the evaluation by hand: the same samples, ``clip.rerank`` on each caption's candidates."""
    captions = [p["caption"] for p in report["prompts"]]
    text = encode_captions(models.tokenizer, captions, models.transformer.config.text_len)  # (n, Lt)
    generator = torch.Generator().manual_seed(0)
    images = []
    for start in (0, 4):  # prompts_per_batch = 4
        batch, _ = sample_images(models.transformer, models.dvae, text[start:start + 4].repeat_interleave(4, dim=0),
                                 temperature=0.9, condition_scale=1.25, generator=generator)
        images.extend(batch.reshape(-1, 4, *batch.shape[1:]))  # (P, N, H, W, C) -> P arrays of (N, H, W, C)
    for record, candidates in zip(report["prompts"], images):
        ranked, scores = rerank(models.clip, models.tokenizer, record["caption"], candidates)
        best = record["ranking"][0]
        assert np.array_equal(ranked[0], candidates[best])
        assert record["scores"][best] == pytest.approx(float(scores[0]), abs=1e-5)
        assert record["scores"][best] == max(record["scores"])
        assert record["matches"] == [grader.grade(image, record["caption"]).match for image in candidates]


def test_without_clip_top1_is_the_first_sample(models):
    plain = pipeline.Models(models.tokenizer, models.dvae, models.transformer)
    r = evaluate.evaluate_pipeline(plain, "compositional", **{**SMALL, "n_prompts": 3})
    assert r["reranked"] is False and r["split"] == "compositional"
    for record in r["prompts"]:
        assert record["scores"] is None and record["ranking"] == [0, 1, 2, 3]
        assert all((o.color, o.shape) in shapes.HELD_OUT_PAIRS
                   for o in shapes.scene_for_caption(record["caption"], np.random.default_rng(0)).objects)
    assert "not reranked" in evaluate.format_evaluation(r)


def test_ranking_breaks_ties_in_sampling_order():
    assert evaluate.ranking(np.array([0.1, 0.7, 0.7, 0.3]), 4).tolist() == [1, 2, 3, 0]
    assert evaluate.ranking(None, 3).tolist() == [0, 1, 2]


def fake_sampler(tokenizer):
    """Stands in for ``sample_images``: each row is, by a coin flip, its caption drawn exactly or a blank canvas."""

    def sample(model, dvae, text, *, generator=None, **settings):
        images = []
        for row in text.tolist():
            caption = tokenizer.decode([i for i in row if i > 2])  # drop <pad>, <bos>, <eos>
            coin = torch.rand(1, generator=generator).item()
            seed = int(torch.randint(0, 2**31, (1,), generator=generator))
            drawn = shapes.render(shapes.scene_for_caption(caption, np.random.default_rng(seed)))
            images.append(drawn if coin < 0.4 else np.full_like(drawn, 255))
        return np.stack(images), None

    return sample


def test_an_oracle_scorer_top1_beats_random(models, monkeypatch):
    monkeypatch.setattr(evaluate, "sample_images", fake_sampler(models.tokenizer))

    def oracle(captions, images):  # a perfect judge: 1 for an image that matches its caption, else 0
        return np.array([float(grader.grade(im, c).match) for c, im in zip(captions, images)])

    r = evaluate.evaluate_pipeline(models, "seen", **{**SMALL, "n_prompts": 8}, scorer=oracle)
    assert r["reranked"] is True
    assert 0 < r["overall"]["random"] < 1  # the coin gives both kinds of candidates
    for row in rows_of(r):
        if row["n"]:
            assert row["top1"] >= row["random"] and row["any_of_top_k"] == row["top1"]
    assert r["overall"]["top1"] > r["overall"]["random"]
    assert r["overall"]["top1"] == np.mean([any(p["matches"]) for p in r["prompts"]])  # top-1 finds any match


def test_bad_arguments_are_value_errors(models):
    with pytest.raises(ValueError, match=r"unknown split 'unseen'.*seen or compositional"):
        evaluate.evaluate_pipeline(models, "unseen", **SMALL)
    with pytest.raises(ValueError, match="keep"):
        evaluate.evaluate_pipeline(models, "seen", **{**SMALL, "keep": 5})
    with pytest.raises(ValueError, match="candidates"):
        evaluate.evaluate_pipeline(models, "seen", **{**SMALL, "candidates": 0})
    with pytest.raises(ValueError, match="n_prompts"):
        evaluate.evaluate_pipeline(models, "seen", **{**SMALL, "n_prompts": 0})
    assert evaluate.resolve_split("test") == ("seen", "test")
    assert evaluate.resolve_split("compositional") == ("compositional", "compositional")


def test_format_evaluation_is_an_aligned_table(report):
    text = evaluate.format_evaluation(report)
    lines = text.splitlines()
    assert "CLIP top-1" in text and "any of top 2" in text and "6 captions" in text
    table = [line for line in lines if line.split() and line.split()[0] in ("all", "1", "2", *grader.CHECKS)]
    assert [line.split()[0] for line in table] == ["all", "1", "2", *grader.CHECKS]
    assert len({len(line) for line in table}) == 1  # right-aligned columns: every row ends at the same place
    assert evaluate.format_evaluation(json.loads(json.dumps(report))) == text  # also from a JSON file


def test_evaluate_splits_runs_each_split(models):
    reports = evaluate.evaluate_splits(models, ("seen", "compositional"), **{**SMALL, "n_prompts": 2,
                                                                               "candidates": 2, "keep": 1})
    assert list(reports) == ["seen", "compositional"]
    assert [r["shapes_split"] for r in reports.values()] == ["test", "compositional"]


# --- one prompt, every image graded ---------------------------------------------------------


def test_graded_samples_are_repeatable_and_graded():
    dvae = tiny_dvae()
    model = tiny_transformer(grid=dvae.config.grid_size, text_len=16, image_vocab_size=24, n_layers=2)
    tok = CharTokenizer()
    images, grades = evaluate.graded_samples(model, dvae, tok, "a red circle", n=2, top_k=5, top_p=0.9, seed=3)
    again, _ = evaluate.graded_samples(model, dvae, tok, "a red circle", n=2, top_k=5, top_p=0.9, seed=3)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again)
    assert len(grades) == 2 and all(g.gradable for g in grades)
    _, grades = evaluate.graded_samples(model, dvae, tok, "hello there", n=2, seed=3)
    assert not any(g.gradable for g in grades)


def test_graded_candidates_are_the_images_of_generate_each_graded(models):
    prompt = "a large red circle in the top left"
    found = evaluate.graded_candidates(models, prompt, candidates=4, seed=0, device="cpu")
    kept = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=4, keep=2, seed=0,
                             clip_model=models.clip, device="cpu")[0]
    assert found.images.shape == (4, 64, 64, 3) and np.array_equal(found.images[:2], kept.images)
    assert list(found.scores) == sorted(found.scores, reverse=True)
    assert [g.reason for g in found.grades] == [grader.grade(image, prompt).reason for image in found.images]
    no_clip = pipeline.Models(models.tokenizer, models.dvae, models.transformer, None)
    assert evaluate.graded_candidates(no_clip, prompt, candidates=2, device="cpu").scores is None


# --- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    ["--candidates", "2", "--keep", "3"],
    ["--candidates", "-1"],
    ["--prompts", "0"],
    ["--split", "train"],
], ids=["keep-above-candidates", "negative-candidates", "no-prompts", "unknown-split"])
def test_evaluate_cli_bad_arguments_exit_2(models_dir, tmp_path, bad, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("models were loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_models", never)
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--models", str(models_dir), "--out", str(out), *bad])
    assert exc.value.code == 2 and not out.exists()
    assert "error" in capsys.readouterr().err


def test_evaluate_cli_missing_models_exit_2(tmp_path, capsys):
    assert cli.main(["evaluate", "--models", str(tmp_path / "nothing"), "--prompts", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train-tokenizer" in err


def test_evaluate_cli_prints_the_table_and_writes_json(models_dir, tmp_path, capsys):
    out = tmp_path / "reports" / "fidelity.json"
    argv = ["evaluate", "--split", "seen", "--prompts", "3", "--candidates", "2", "--keep", "1", "--seed", "0",
            "--models", str(models_dir), "--out", str(out), "--top-k", "8"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "seen captions" in printed and "first sample" in printed and str(out) in printed
    reports = json.loads(out.read_text())
    assert list(reports) == ["seen"]
    seen = reports["seen"]
    assert seen["n"] == 3 and seen["candidates"] == 2 and seen["keep"] == 1 and seen["sampling"]["top_k"] == 8
    assert seen["reranked"] is False and sum(r["n"] for r in seen["by_objects"].values()) == 3
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary file left behind


@pytest.mark.xfail(strict=True, reason="under the strict grader the shipped models' samples are nearly all "
                   "unrecognised shapes (the dVAE draws rounded squares and pinched crosses): on these 48 captions "
                   "CLIP top-1 4.2% against 4.4% at random — remove this mark when models that meet the bars ship")
def test_shipped_pipeline_reranking_picks_better_images_than_chance():
    """The shipped models, 48 seen captions, 8 candidates each: CLIP's pick matches far more often than a random one."""
    if not (DATA_DIR / "transformer" / checkpoints.WEIGHTS_NAME).exists():
        pytest.skip("no shipped models in data/")
    torch.set_num_threads(1)
    report = evaluate.evaluate_pipeline(pipeline.load_models(device="cpu"), "seen", n_prompts=48, candidates=8,
                                        keep=4, seed=0, progress=False)
    overall = report["overall"]
    assert overall["top1"] >= 0.80, evaluate.format_evaluation(report)
    assert overall["top1"] >= overall["random"] + 0.05
    assert overall["any_of_top_k"] >= overall["top1"]
