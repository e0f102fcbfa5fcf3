"""The Shapes dataset: spec geometry, the caption grammar, splits and rendering.

Every number here is checked against `docs/shapes_dataset.md` (the grader: test_grader.py).
All tests are seeded.
"""

import re

import numpy as np
import pytest
import torch

from _near_misses import mixed_scenes
from dalle_mini_impl import grader as G
from dalle_mini_impl import shapes as S

SPEC_PALETTE = {
    "red": (220, 38, 38), "orange": (245, 130, 20), "yellow": (235, 200, 20),
    "green": (30, 160, 70), "blue": (40, 90, 220), "purple": (140, 60, 190),
}
SPEC_HELD_OUT = {("green", "triangle"), ("purple", "circle"), ("orange", "diamond"), ("blue", "cross"), ("yellow", "square")}


@pytest.fixture(scope="module")
def many_scenes() -> list[S.Scene]:
    return [s for split in S.SPLITS for s in S.make_scenes(split, 1500, seed=11)]


# ---------------------------------------------------------------------------
# The spec's constants
# ---------------------------------------------------------------------------


def test_constants_follow_the_spec():
    assert S.IMAGE_SIZE == 64
    assert S.PALETTE == SPEC_PALETTE and list(S.PALETTE) == list(SPEC_PALETTE)
    assert S.COLORS == tuple(SPEC_PALETTE)
    assert S.SHAPES == ("circle", "square", "triangle", "diamond", "cross")
    assert S.SIZES == {"small": (16, 20), "large": (26, 30)}
    assert S.RELATIONS == ("to the left of", "to the right of", "above", "below")
    assert S.HELD_OUT_PAIRS == SPEC_HELD_OUT
    assert S.SPLITS == ("train", "val", "test", "compositional")
    assert S.POSITION_PHRASES == {
        (0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right",
        (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
        (2, 0): "in the bottom left", (2, 1): "at the bottom", (2, 2): "in the bottom right",
    }
    assert len(S.pairs_for_split("train")) == 25 and set(S.pairs_for_split("compositional")) == SPEC_HELD_OUT
    with pytest.raises(ValueError, match="unknown split 'training'.*train, val, test, compositional"):
        S.pairs_for_split("training")


# ---------------------------------------------------------------------------
# Sampling: spec geometry, splits, determinism
# ---------------------------------------------------------------------------


def test_every_object_obeys_the_size_and_canvas_rules(many_scenes):
    for scene in many_scenes:
        for o in scene.objects:
            low, high = S.SIZES[o.size]
            assert low <= o.side <= high
            assert o.side / 2 - 1e-9 <= o.cx <= 64 - o.side / 2 + 1e-9
            assert o.side / 2 - 1e-9 <= o.cy <= 64 - o.side / 2 + 1e-9


def test_one_object_sits_in_its_cell_with_jitter_then_clamping(many_scenes):
    singles = [s for s in many_scenes if len(s.objects) == 1]
    assert len(singles) > 2000
    clamped = 0
    for scene in singles:
        o = scene.objects[0]
        desc = S.parse_caption(scene.caption)
        row, col = G.position_cell(o.cx, o.cy)  # the cell the grader sees
        if desc.position is not None:
            assert desc.position == (row, col), scene
        for c, cell in ((o.cx, col), (o.cy, row)):
            assert abs(c - S.CELL_CENTERS[cell]) <= 2 + 1e-9  # jitter, and clamping only moves inwards
            clamped += c in (o.side / 2, 64 - o.side / 2)
    assert clamped > 0, "large objects in edge cells hit the clamp"


def test_two_objects_obey_the_relation_rules(many_scenes):
    pairs = [s for s in many_scenes if len(s.objects) == 2]
    assert len(pairs) > 2000
    seen = set()
    for scene in pairs:
        a, b = scene.objects
        axis, sign = S.RELATION_AXIS[scene.relation]
        along = [(a.cx, b.cx), (a.cy, b.cy)][axis]
        across = [(a.cx, b.cx), (a.cy, b.cy)][1 - axis]
        assert sign * (along[0] - along[1]) >= 22 - 1e-9, scene
        assert abs(across[0] - across[1]) <= 8 + 1e-9, scene
        # The boxes never overlap: they are apart along the relation's axis.
        assert abs(along[0] - along[1]) >= (a.side + b.side) / 2, scene
        assert a.color != b.color
        assert scene.caption.split(" ")[-2:] == [b.color, b.shape]
        seen.add(scene.relation)
    assert seen == set(S.RELATIONS)


def test_held_out_pairs_appear_only_in_the_compositional_split():
    for split in S.SPLITS:
        scenes = S.make_scenes(split, 1500, seed=11)
        held = [(o.color, o.shape) in SPEC_HELD_OUT for s in scenes for o in s.objects]
        if split == "compositional":
            assert all(held)
            assert {(o.color, o.shape) for s in scenes for o in s.objects} == SPEC_HELD_OUT
        else:
            assert not any(held)
            assert len({(o.color, o.shape) for s in scenes for o in s.objects}) == 25


def test_sampling_rates_are_the_documented_constants(many_scenes):
    n = len(many_scenes)
    two = sum(len(s.objects) == 2 for s in many_scenes) / n
    assert abs(two - S.P_TWO_OBJECTS) < 0.03
    phrases = [p for s in many_scenes for p in S.parse_caption(s.caption).objects]
    assert abs(np.mean([p.size is not None for p in phrases]) - S.P_STATE_SIZE) < 0.03
    singles = [S.parse_caption(s.caption) for s in many_scenes if len(s.objects) == 1]
    assert abs(np.mean([d.position is not None for d in singles]) - S.P_STATE_POSITION) < 0.03
    # Omitted attributes are still uniform: sizes, cells, shapes and colours.
    objects = [o for s in many_scenes if len(s.objects) == 1 for o in s.objects]
    assert abs(np.mean([o.size == "small" for o in objects]) - 0.5) < 0.03
    cells = np.bincount([3 * r + c for r, c in (G.position_cell(o.cx, o.cy) for o in objects)], minlength=9)
    assert cells.min() > 0.8 * len(objects) / 9


def test_splits_are_deterministic_distinct_and_prefix_stable():
    assert S.make_scenes("train", 50, seed=3) == S.make_scenes("train", 50, seed=3)
    assert S.make_scenes("val", 10, 0) == S.make_scenes("val", 100, 0)[:10]
    captions = {split: [s.caption for s in S.make_scenes(split, 50, 0)] for split in S.SPLITS}
    assert len({tuple(c) for c in captions.values()}) == 4
    assert S.make_scenes("train", 50, 0) != S.make_scenes("train", 50, 1)
    assert S.make_scenes("test", 5, 7)[3] == S.sample_scene(S.scene_rng("test", 7, 3), "test")
    with pytest.raises(ValueError, match="n_objects must be 1, 2 or None"):
        S.sample_scene(np.random.default_rng(0), n_objects=3)


def test_scene_for_caption_draws_what_the_caption_says():
    rng = np.random.default_rng(0)
    for caption in ["a large red circle in the top left", "an orange cross", "a small blue diamond above a green square",
                    "a red circle to the left of a red square", "a large purple triangle below a small yellow cross"]:
        for _ in range(20):
            scene = S.scene_for_caption(caption, rng)
            assert scene.caption == caption
            assert G.grade(S.render(scene), caption).match, caption
    with pytest.raises(S.CaptionError):
        S.scene_for_caption("a red blob", rng)


# ---------------------------------------------------------------------------
# Captions: the grammar
# ---------------------------------------------------------------------------

CAPTION_RE = re.compile(r"^[a-z]+( [a-z]+)*$")


def test_every_generated_caption_obeys_the_grammar(many_scenes):
    for scene in many_scenes:
        c = scene.caption
        assert CAPTION_RE.match(c), c
        words = c.split(" ")
        for i, w in enumerate(words):
            if w in ("a", "an"):
                assert w == ("an" if words[i + 1][0] in "aeiou" else "a"), c
        assert "  " not in c and c == c.strip() and c == c.lower()
        # The caption is true of its scene.
        desc = S.parse_caption(c)
        assert len(desc.objects) == len(scene.objects)
        for p, o in zip(desc.objects, scene.objects):
            assert (p.color, p.shape) == (o.color, o.shape)
            assert p.size in (None, o.size)
        assert desc.relation == scene.relation


def test_articles_follow_english():
    assert S.format_caption(S.Description([S.ObjectPhrase("orange", "cross")])) == "an orange cross"
    assert S.format_caption(S.Description([S.ObjectPhrase("orange", "cross", "small")])) == "a small orange cross"
    two = S.Description([S.ObjectPhrase("red", "square", "small"), S.ObjectPhrase("orange", "circle")], relation="above")
    assert S.format_caption(two) == "a small red square above an orange circle"
    one = S.Description([S.ObjectPhrase("red", "circle", "large")], position=(0, 0))
    assert S.format_caption(one) == "a large red circle in the top left"


def all_descriptions():
    """Every one-object description, and every two-object one over a slice of the phrases."""
    phrases = [S.ObjectPhrase(c, s, z) for c in S.COLORS for s in S.SHAPES for z in (None, "small", "large")]
    for p in phrases:
        for pos in [None, *S.POSITION_PHRASES]:
            yield S.Description([p], position=pos)
    for i, (a, b) in enumerate((a, b) for a in phrases for b in phrases):
        if i % 7 == 0:
            yield S.Description([a, b], relation=S.RELATIONS[i % 4])


def test_parse_and_format_are_inverse():
    n = 0
    for desc in all_descriptions():
        caption = S.format_caption(desc)
        assert S.parse_caption(caption) == desc
        assert S.format_caption(S.parse_caption(caption)) == caption
        n += 1
    assert n == 90 * 10 + len(range(0, 90 * 90, 7))  # every one-object caption, 1 in 7 two-object ones
    for scene in S.make_scenes("train", 500, seed=5):
        assert S.format_caption(S.parse_caption(scene.caption)) == scene.caption


@pytest.mark.parametrize("caption, fix", [
    ("", "empty"),
    ("A red circle", "lower case: 'a red circle'"),
    ("a red circle.", "only the letters a-z"),
    ("a  red circle", "single spaces"),
    (" a red circle", "single spaces"),
    ("a orange cross", "write 'an orange'"),
    ("an red circle", "write 'a red'"),
    ("a pink circle", "expected a colour"),
    ("a red blob", "expected a shape"),
    ("the red circle", "expected 'a' or 'an'"),
    ("a huge red circle", "expected a colour"),
    ("a red circle in the top", "expected a position, a relation or the end"),
    ("a red circle to the left of", "found the end of the caption"),
    ("a red circle above a blue square in the center", "unexpected words after the second object"),
    ("a red circle and a blue square", "expected a position, a relation or the end"),
    ("draw me a cat", "expected 'a' or 'an'"),
])
def test_captions_outside_the_grammar_raise_a_clear_error(caption, fix):
    with pytest.raises(S.CaptionError) as err:
        S.parse_caption(caption)
    assert fix in str(err.value)
    assert "The Shapes grammar accepts" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_format_rejects_impossible_descriptions():
    red = S.ObjectPhrase("red", "circle")
    for bad in [S.Description([]), S.Description([red], relation="above"), S.Description([red, red]),
                S.Description([red, red], position=(0, 0), relation="above"), S.Description([red], position=(3, 0)),
                S.Description([S.ObjectPhrase("pink", "circle")])]:
        with pytest.raises(S.CaptionError):
            S.format_caption(bad)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def pixels_fully_inside(o: S.ShapeObject, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(H, W) bool: are all four corners of each pixel inside the shape? (Enough for these shapes.)"""
    u = (np.arange(x0, x1 + 1) - o.cx) / (o.side / 2)
    v = (np.arange(y0, y1 + 1) - o.cy) / (o.side / 2)
    corner = S.inside_shape(o.shape, u[None, :], v[:, None])  # (H + 1, W + 1)
    return corner[:-1, :-1] & corner[:-1, 1:] & corner[1:, :-1] & corner[1:, 1:]


def test_render_draws_flat_colours_on_white_with_soft_edges_only():
    for scene in mixed_scenes(200, seed=1):
        image = S.render(scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        touched = np.zeros((64, 64), dtype=bool)
        for o in scene.objects:
            colour = np.array(S.PALETTE[o.color])
            y0, y1 = int(np.floor(o.cy - o.side / 2)), int(np.ceil(o.cy + o.side / 2))
            x0, x1 = int(np.floor(o.cx - o.side / 2)), int(np.ceil(o.cx + o.side / 2))
            touched[y0:y1, x0:x1] = True
            inside = pixels_fully_inside(o, y0, y1, x0, x1)
            assert inside.sum() > 50
            assert (image[y0:y1, x0:x1][inside] == colour).all(), "interior pixels are exactly the palette colour"
            # Every other pixel of the box is a blend of white and this colour (anti-aliasing).
            box = image[y0:y1, x0:x1].reshape(-1, 3).astype(float)
            t = ((box - 255) @ (colour - 255)) / ((colour - 255) @ (colour - 255))
            blend = 255 + t[:, None] * (colour - 255)
            assert np.abs(box - blend).max() <= 1.0
            # Total coverage equals the shape's area (the cross's bars are s/3 thick, etc.).
            area = {"circle": np.pi / 4, "square": 1, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}[o.shape]
            assert t.sum() == pytest.approx(area * o.side ** 2, rel=0.02)  # a quarter-thinner cross bar would be 20% off
        assert (image[~touched] == 255).all(), "the background is pure white"


def test_render_batch_matches_render_and_the_dataset_holds_it():
    scenes = S.make_scenes("val", 40, seed=2)
    batch = S.render_batch(scenes)
    assert batch.shape == (40, 64, 64, 3) and batch.dtype == np.uint8
    assert all((batch[i] == S.render(s)).all() for i, s in enumerate(scenes))
    assert S.render_batch([]).shape == (0, 64, 64, 3)

    ds = S.ShapesDataset("val", size=40, seed=2)
    assert len(ds) == 40 and ds.scenes == scenes and ds.captions == [s.caption for s in scenes]
    assert (ds.images == batch).all()
    caption, image = ds[3]
    assert caption == scenes[3].caption
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert 0.0 <= image.min() and image.max() == 1.0
    assert torch.equal(image, torch.from_numpy(batch[3]).permute(2, 0, 1) / 255.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    captions, images = next(iter(loader))
    assert len(captions) == 8 and images.shape == (8, 3, 64, 64)


def test_images_all_draws_every_pair_and_leaves_the_splits_as_they_were():
    """The dVAE's image source: all 30 pairs; adding it must not change a single caption split."""
    assert len(S.pairs_for_split(S.IMAGES_ALL)) == 30
    pairs = {(o.color, o.shape) for s in S.make_scenes(S.IMAGES_ALL, 600, seed=0) for o in s.objects}
    assert SPEC_HELD_OUT <= pairs and len(pairs) == 30
    assert S.IMAGES_ALL not in S.SPLITS  # no caption model trains on it
    # the streams of the caption splits are the ones they always had: (seed, split index, scene index)
    first = S.sample_scene(np.random.default_rng([0, S.SPLITS.index("test"), 0]), "test")
    assert S.make_scenes("test", 1, seed=0)[0] == first
