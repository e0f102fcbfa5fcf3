"""CLIP: the InfoNCE loss by hand, the temperature clamp, embeddings, reranking, zero-shot, training and checkpoints."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from dalle_mini_impl import DATA_DIR, checkpoints, grader, shapes
from dalle_mini_impl import train_clip as tc
from dalle_mini_impl.bpe import ByteLevelBPE
from dalle_mini_impl.clip import (
    CLIP,
    CLIPConfig,
    attribute_values,
    contrastive_loss,
    expected_any_match,
    expected_top1_match,
    rerank,
    retrieval_at_1,
    retrieve,
    same_caption,
    scene_attributes,
    zero_shot,
    zero_shot_captions,
)
from dalle_mini_impl.clip import load as load_clip
from dalle_mini_impl.clip import one_object_scenes
from dalle_mini_impl.train_common import TrainingDiverged
from dalle_mini_impl.transformer import encode_captions

TINY = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)  # runs in milliseconds


@pytest.fixture(scope="module")
def tok():
    return ByteLevelBPE.load(DATA_DIR / "tokenizer" / "bpe.json")


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(**{**TINY, **kw})).eval()


# --- the loss ---------------------------------------------------------------------------------


def _hand_infonce(v, t, s):
    """The formula, one term at a time, with Python floats."""
    B = len(v)
    logit = [[s * sum(a * b for a, b in zip(v[i], t[j])) for j in range(B)] for i in range(B)]
    i2t = -sum(math.log(math.exp(logit[i][i]) / sum(math.exp(logit[i][j]) for j in range(B))) for i in range(B)) / B
    t2i = -sum(math.log(math.exp(logit[j][j]) / sum(math.exp(logit[i][j]) for i in range(B))) for j in range(B)) / B
    return 0.5 * (i2t + t2i)


def test_infonce_equals_the_hand_computation_on_3x3():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=-1)
    got = contrastive_loss(v, t, 2.5).item()
    assert got == pytest.approx(_hand_infonce(v.tolist(), t.tolist(), 2.5), rel=1e-12)
    # the docstring's example: three orthogonal pairs at s = 1
    eye = torch.eye(3, dtype=torch.float64)
    assert contrastive_loss(eye, eye, 1.0).item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-12)


def test_infonce_is_symmetric_in_images_and_texts():
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    assert contrastive_loss(v, t, 7.0).item() == pytest.approx(contrastive_loss(t, v, 7.0).item(), rel=1e-6)


def test_identical_captions_are_positives_of_each_other(tok):
    ids = encode_captions(tok, ["a red circle", "a blue cross", "a red circle"], 16)
    pos = same_caption(ids)
    assert pos.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    # images 0 and 2 both match the (identical) texts 0 and 2: the target is ½ on each
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0], [0.9, 0.1]], dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64), dim=-1)
    s = 3.0
    logits = (s * v @ t.T).tolist()
    q = (pos.double() / pos.double().sum(1, keepdim=True)).tolist()
    row = -sum(q[i][j] * (logits[i][j] - math.log(sum(math.exp(x) for x in logits[i])))
               for i in range(3) for j in range(3)) / 3
    col = -sum(q[j][i] * (logits[i][j] - math.log(sum(math.exp(logits[k][j]) for k in range(3))))
               for i in range(3) for j in range(3)) / 3
    assert contrastive_loss(v, t, s, pos).item() == pytest.approx(0.5 * (row + col), rel=1e-12)
    # with the identity mask it is the plain InfoNCE
    assert contrastive_loss(v, t, s, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(
        contrastive_loss(v, t, s).item(), rel=1e-12)


# --- the model --------------------------------------------------------------------------------


def test_temperature_starts_at_the_paper_value_and_is_clamped():
    model = _tiny()
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(100.0)
    with torch.no_grad():
        model.log_scale.fill_(-3.0)
    assert model.logit_scale.item() == pytest.approx(1.0)


def test_embeddings_are_unit_vectors_of_the_right_shape(tok):
    model = _tiny()
    images = torch.rand(5, 3, 64, 64)
    ids = encode_captions(tok, ["a red circle", "a small blue cross in the center"], 16)
    v, t = model.encode_image(images), model.encode_text(ids)
    assert v.shape == (5, 16) and t.shape == (2, 16)
    assert torch.allclose(v.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    sim = model.similarity(images, ids)
    assert sim.shape == (5, 2) and sim.abs().max() <= 1 + 1e-5


def test_identical_inputs_give_identical_scores(tok):
    model = _tiny()
    image = torch.rand(1, 3, 64, 64)
    batch = torch.cat([image, torch.rand(2, 3, 64, 64), image])  # the same image at 0 and 3
    ids = encode_captions(tok, ["a green square at the top"], 16)
    sim = model.similarity(batch, ids)[:, 0]
    assert sim[0] == sim[3]
    assert torch.allclose(model.similarity(image, ids)[0, 0], sim[0], atol=1e-6)  # the batch does not matter
    # pads are masked out: padding a caption further does not change it
    short = encode_captions(tok, ["a green square at the top"], 10)
    assert torch.allclose(model.encode_text(short), model.encode_text(ids), atol=1e-6)


def test_position_embeddings_tell_where_the_shape_is():
    """Move a shape by 8 px (one grid cell): the convolutions only carry their features along, so without
    position embeddings the encoder sees the same set of tokens and cannot tell the two apart; with them it can."""
    model = _tiny()
    here = shapes.ShapeObject("red", "circle", "small", side=18.0, cx=28.0, cy=28.0)
    there = dataclasses.replace(here, cx=36.0, cy=36.0)
    pair = torch.from_numpy(shapes.render_batch([shapes.Scene((here,), ""), shapes.Scene((there,), "")]))
    pair = pair.permute(0, 3, 1, 2).float() / 255  # (2, 3, 64, 64)
    with torch.no_grad():
        v = model.encode_image(pair)
        with_position = (v[0] - v[1]).abs().max().item()
        model.image.pos_emb.zero_()
        v = model.encode_image(pair)
        without = (v[0] - v[1]).abs().max().item()
    assert without < 1e-6, without  # a bag of tokens: the same set, in another order
    assert with_position > 100 * max(without, 1e-8), (with_position, without)


def test_bad_inputs_get_clear_errors(tok):
    model = _tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model.encode_image(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match="text_len=16"):
        model.encode_text(torch.ones(1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        model.encode_text(torch.full((1, 4), 600))
    with pytest.raises(ValueError, match="unknown preset"):
        CLIPConfig.preset("tpu")
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(d_model=30, n_heads=4)


# --- reranking --------------------------------------------------------------------------------


def test_rerank_sorts_by_score_and_permutes_the_images(tok):
    model = _tiny()
    scenes = shapes.make_scenes("test", 6, seed=3)
    images = shapes.render_batch(scenes)  # (6, 64, 64, 3) uint8
    prompt = "a large red circle in the top left"
    ranked, scores = rerank(model, tok, prompt, images)
    assert isinstance(ranked, np.ndarray) and ranked.dtype == np.uint8 and ranked.shape == images.shape
    assert isinstance(scores, np.ndarray) and scores.shape == (6,)
    assert np.all(np.diff(scores) <= 0), scores  # best first
    # the same images, permuted: each ranked image is one of the inputs, each used once
    order = [next(i for i in range(6) if np.array_equal(r, images[i])) for r in ranked]
    assert sorted(order) == list(range(6))
    # and the scores are the cosine similarities of those images
    ids = encode_captions(tok, [prompt], 16)
    direct = model.similarity(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, ids)[:, 0]
    assert np.allclose(scores, direct[order].detach().numpy(), atol=1e-5)
    # a float tensor in, tensors out
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    ranked_t, scores_t = rerank(model, tok, prompt, x)
    assert torch.is_tensor(ranked_t) and ranked_t.shape == x.shape and torch.allclose(scores_t, torch.from_numpy(scores))
    assert torch.equal(ranked_t, x[order])


def test_rerank_refuses_an_empty_prompt(tok):
    with pytest.raises(ValueError, match="prompt is empty"):
        rerank(_tiny(), tok, "  ", np.zeros((2, 64, 64, 3), np.uint8))


# --- how much reranking helps, exactly ------------------------------------------------------


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


# --- zero-shot and retrieval ------------------------------------------------------------------


def test_zero_shot_prompts_are_inside_the_grammar():
    captions = zero_shot_captions()
    assert len(captions) == 2 * 6 * 5 * 9 == len({c for c, _ in captions})
    for caption, values in captions[::37]:
        desc = shapes.parse_caption(caption)  # raises if outside the grammar
        o = desc.objects[0]
        assert (o.color, o.shape, o.size) == (values["color"], values["shape"], values["size"])
        assert shapes.POSITION_PHRASES[desc.position] == values["position"]
    assert captions[0][0] == "a small red circle in the top left"


def test_zero_shot_accuracy_and_its_errors(tok):
    model = _tiny()
    scenes = one_object_scenes("test", 8, seed=0)
    images = shapes.render_batch(scenes)
    truth = [scene_attributes(s)["color"] for s in scenes]
    acc = zero_shot(model, tok, images, "color", truth)
    assert 0.0 <= acc <= 1.0
    cells = [grader.position_cell(s.objects[0].cx, s.objects[0].cy) for s in scenes]
    phrases = [scene_attributes(s)["position"] for s in scenes]
    assert zero_shot(model, tok, images, "position", cells) == zero_shot(model, tok, images, "position", phrases)
    with pytest.raises(ValueError, match="unknown color values"):
        zero_shot(model, tok, images, "color", ["pink"] * 8)
    with pytest.raises(ValueError, match="unknown attribute"):
        attribute_values("texture")


def test_retrieve_ranks_by_similarity_and_grades():
    found = shapes.make_scenes("test", 6, seed=0)
    images = shapes.render_batch(found)  # (6, 64, 64, 3)
    captions = [found[2].caption, found[4].caption]
    sims = np.zeros((6, 2))
    sims[2, 0], sims[4, 1], sims[1, 1] = 0.9, 0.8, 0.7  # each caption's own image first
    indices, matches = retrieve(captions, images, sims, k=3)
    assert indices.shape == matches.shape == (2, 3)
    assert indices[0, 0] == 2 and indices[1].tolist()[:2] == [4, 1]
    assert matches[0, 0] and matches[1, 0]  # the grader reads its own caption
    with pytest.raises(ValueError, match="images, captions"):
        retrieve(captions, images, sims.T)


# --- learning ---------------------------------------------------------------------------------


def test_a_tiny_clip_overfits_a_small_batch(tok):
    scenes = shapes.make_scenes("train", 40, seed=0)
    scenes = list({s.caption: s for s in scenes}.values())[:16]  # 16 distinct captions
    images = torch.from_numpy(shapes.render_batch(scenes)).permute(0, 3, 1, 2).float() / 255  # (16, 3, 64, 64)
    captions = [s.caption for s in scenes]
    ids = encode_captions(tok, captions, 16)
    model = _tiny().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for step in range(100):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 20)  # a short warm-up, as in training
        loss, _ = model(images, ids)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert first > math.log(16) and loss.item() < 0.1 * math.log(16), (first, loss.item())  # ln B: chance
    assert retrieval_at_1(model, tok, images, captions, count_equivalent=False) == 1.0
    logits = model(images, ids)[1]
    assert torch.equal(logits.argmax(1), torch.arange(16))  # image -> text as well


def _tiny_run(out_dir, **kw):
    return tc.train_clip(CLIPConfig(**TINY), steps=6, batch_size=8, seed=1, out_dir=out_dir, checkpoint_every=2,
                         eval_every=0, progress=False, threads=1, log=lambda s: None, **kw)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    straight = _tiny_run(tmp_path / "a")
    _tiny_run(tmp_path / "b", until=3)  # "killed" after step 3
    cfg = CLIPConfig(**TINY)
    model = CLIP(cfg)
    step, extra = checkpoints.load_training_state(tmp_path / "b" / checkpoints.STATE_NAME, model,
                                                  tc.make_optimizer(model, cfg), cfg, restore_rng=False)
    assert step == 3 and extra["steps"] == 6
    resumed = _tiny_run(tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_clip(tmp_path / "b", device="cpu")
    assert loaded.config == cfg and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                              straight.state_dict().values()))


def test_a_second_run_in_the_same_folder_needs_resume(tmp_path):
    _tiny_run(tmp_path, until=2)
    with pytest.raises(checkpoints.CheckpointError, match="resume"):
        _tiny_run(tmp_path)


def test_a_checkpoint_from_another_config_gives_a_clear_error(tmp_path):
    _tiny_run(tmp_path, until=2)
    other = CLIPConfig(**{**TINY, "embed_dim": 24})
    with pytest.raises(checkpoints.CheckpointError, match="another config.*embed_dim: saved 16 vs now 24"):
        tc.train_clip(other, steps=6, batch_size=8, seed=1, out_dir=tmp_path, resume=True, eval_every=0,
                      progress=False, threads=1, log=lambda s: None)
    checkpoints.save_config(other, tmp_path, "clip")  # config.json now disagrees with the weights
    with pytest.raises(checkpoints.CheckpointError, match=r"text_proj.weight.*\(16, 32\).*\(24, 32\)"):
        load_clip(tmp_path, device="cpu")
    with pytest.raises(checkpoints.CheckpointError, match="expected model_type 'clip', found 'dvae'"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "dvae"}))
        load_clip(tmp_path, device="cpu")
    with pytest.raises(checkpoints.CheckpointError, match="no such folder"):
        load_clip(tmp_path / "missing", device="cpu")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _tiny_run(tmp_path, until=2)
    before = (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes()
    # a broken positives mask (no positive at all) makes the targets 0/0: a NaN loss
    monkeypatch.setattr(tc, "same_caption", lambda ids: torch.zeros(len(ids), len(ids), dtype=torch.bool))
    with pytest.raises(TrainingDiverged, match="last good checkpoint.*step 2"):
        _tiny_run(tmp_path, resume=True)
    assert (tmp_path / checkpoints.WEIGHTS_NAME).read_bytes() == before


def test_training_batches_are_a_pure_function_of_seed_and_step():
    a = tc.training_batch(3, 4, seed=5)
    assert [s.caption for s in a] == [s.caption for s in shapes.make_scenes("train", 16, seed=5)[12:]]
    assert tc.lr_at(0, 100, CLIPConfig()) < tc.lr_at(4, 100, CLIPConfig()) == pytest.approx(CLIPConfig().lr)
    assert tc.lr_at(99, 100, CLIPConfig()) == pytest.approx(CLIPConfig().lr * CLIPConfig().lr_end_frac, rel=1e-2)


def test_cli_parses_train_clip():
    from dalle_mini_impl.cli import build_parser, run_train_clip

    args = build_parser().parse_args(["train-clip", "--preset", "gpu", "--steps", "7", "--batch-size", "4",
                                      "--seed", "2", "--out", "x", "--resume"])
    assert (args.preset, args.steps, args.batch_size, args.seed, str(args.out), args.resume) == ("gpu", 7, 4, 2, "x", True)
    assert args.func is run_train_clip
