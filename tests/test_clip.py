"""CLIP: the InfoNCE loss by hand, the temperature clamp, embeddings, reranking, zero-shot, training and checkpoints."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from dalle_mini_impl import DATA_DIR, grader, shapes
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
from dalle_mini_impl.clip import hard_negative, one_object_scenes
from dalle_mini_impl.clip import load as load_clip
from dalle_mini_impl.evaluate import relation_probe
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



# --- hard negatives --------------------------------------------------------------------------


def test_hard_negatives_enter_the_image_to_text_softmax_only():
    torch.manual_seed(0)
    v, t, h = (torch.nn.functional.normalize(torch.randn(3, 4), dim=-1) for _ in range(3))
    s = 5.0
    rows = s * torch.cat([v @ t.t(), v @ h.t()], dim=1)  # (3, 6): each image against 3 captions + 3 hard ones
    cols = s * (v @ t.t()).t()  # (3, 3): each caption against the 3 images only
    by_hand = 0.5 * (torch.nn.functional.cross_entropy(rows, torch.arange(3))
                     + torch.nn.functional.cross_entropy(cols, torch.arange(3)))
    assert contrastive_loss(v, t, s, hard_texts=h).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert contrastive_loss(v, t, s, hard_texts=h) > contrastive_loss(v, t, s)  # more wrong answers, more loss
    right = torch.zeros(3, 3, dtype=torch.bool)
    right[0, 0] = True  # a "hard negative" that is in fact image 0's caption: a positive, shared with its own
    q = torch.zeros(3, 6)
    q[0, [0, 3]], q[1, 1], q[2, 2] = 0.5, 1.0, 1.0
    by_hand = 0.5 * (torch.nn.functional.cross_entropy(rows, q) + torch.nn.functional.cross_entropy(cols, torch.arange(3)))
    assert contrastive_loss(v, t, s, hard_texts=h, hard_positives=right).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_a_hard_negative_changes_one_stated_attribute_and_stays_in_its_split():
    rng = np.random.default_rng(0)
    allowed = set(shapes.pairs_for_split("train"))
    relations = 0
    for scene in shapes.make_scenes("train", 300, seed=1):
        hard = hard_negative(scene.caption, rng)
        a, b = shapes.parse_caption(scene.caption), shapes.parse_caption(hard)
        assert hard != scene.caption and len(a.objects) == len(b.objects)
        changed = [x != y for x, y in zip(a.objects, b.objects)] + [a.relation != b.relation, a.position != b.position]
        assert sum(changed) == 1, (scene.caption, hard)
        assert all((o.color, o.shape) in allowed for o in b.objects)  # never a held-out pair in training text
        if len(b.objects) == 2:
            assert b.objects[0].color != b.objects[1].color
            relations += a.relation != b.relation
    assert 40 <= relations <= 110  # about half of the ~150 two-object captions


def test_the_relation_probe_is_chance_for_a_blind_model_and_perfect_for_an_oracle(tok):
    blind = _tiny(seed=3).eval()
    probe = relation_probe(blind, tok, n=40, seed=0)
    assert probe["n"] == 40 and 0.0 <= probe["accuracy"] <= 1.0
    shipped = load_clip(DATA_DIR / "clip", device="cpu")
    report = relation_probe(shipped, tok, n=200, seed=0)
    print(report)
    assert report["accuracy"] >= 0.95 and report["margin"] > 0.05  # measured: 100%, margin 0.128 (hard negatives;
    #                                                                   without them: 50%, margin 0.001)
