"""The grader: reads what the spec's renderer draws, however damaged, and nothing that a person would hesitate over.

Both directions are measured on freshly drawn images: clean, noisy, blurred,
half-resolution and JPEG renders must match their captions; a bank of near
misses (rounded corners, pinched crosses, four-pointed stars, teardrops,
rounded diamonds, specks inside, shapes cut by the border) must not, each
rejected on the right check.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from _near_misses import draw, mixed_scenes, pinched_cross, rounded_diamond, rounded_square, star, teardrop
from _tiny_models import mismatched_grades
from dalle_mini_impl import grader as G
from dalle_mini_impl import shapes as S

OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur an (H, W, 3) image, repeating the edge pixels (an independent helper, not the package's)."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    a = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    a = sum(k[i] * a[i:i + image.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * a[:, i:i + image.shape[1]] for i in range(2 * r + 1))


def box_blur3(image: np.ndarray) -> np.ndarray:
    a = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    return sum(a[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9


def to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def test_thresholds_follow_the_spec():
    assert G.MIN_PATCH == 20  # "any patch of 20 px or more counts"
    assert G.size_of(22.9) == "small" and G.size_of(23) == "large"
    assert G.position_cell(23.9, 40.1) == (2, 0)  # x < 24 is left, y > 40 is bottom
    assert G.position_cell(24.0, 40.0) == (1, 1)
    assert G.relation_holds("to the left of", (10, 30), (40, 30))
    assert not G.relation_holds("to the right of", (10, 30), (40, 30))
    assert G.relation_holds("above", (30, 10), (30, 40)) and G.relation_holds("below", (30, 40), (30, 10))



def grade_rate(scenes, images) -> tuple[float, list]:
    grades = [G.grade(im, s.caption) for s, im in zip(scenes, images)]
    misses = [(s.caption, g.reason) for s, g in zip(scenes, grades) if not g.match]
    return 1 - len(misses) / len(scenes), misses


def test_grader_reads_clean_renders(capsys):
    scenes = mixed_scenes(1000, seed=21)
    rate, misses = grade_rate(scenes, S.render_batch(scenes))
    with capsys.disabled():
        print(f"\n[shapes] clean renders graded as matching: {rate:.2%} of {len(scenes)}")
    assert rate >= 0.995, misses[:5]


def test_grader_reads_noisy_blurred_renders(capsys):
    rng = np.random.default_rng(0)
    scenes = mixed_scenes(1000, seed=22)
    images = [to_uint8(gaussian_blur(im, 0.7) + rng.normal(0, 10, im.shape)) for im in S.render_batch(scenes)]
    rate, misses = grade_rate(scenes, images)
    box_scenes = mixed_scenes(500, seed=23)
    box_images = [to_uint8(box_blur3(im) + rng.normal(0, 10, im.shape)) for im in S.render_batch(box_scenes)]
    box_rate, box_misses = grade_rate(box_scenes, box_images)
    with capsys.disabled():
        print(f"\n[shapes] noise 10 + gaussian blur 0.7: {rate:.2%} of {len(scenes)}; "
              f"noise 10 + 3x3 box blur: {box_rate:.2%} of {len(box_scenes)}")
    assert rate >= 0.99, misses[:5]
    assert box_rate >= 0.99, box_misses[:5]


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_grader_survives_decoder_like_damage(capsys):
    """Heavier damage, like a dVAE's output: soft corners, lost detail, shifted colours."""
    rng = np.random.default_rng(1)
    damage = {
        "gaussian blur 1.2": lambda im: to_uint8(gaussian_blur(im, 1.2)),
        "half resolution and back": lambda im: np.asarray(
            Image.fromarray(im).resize((32, 32), Image.BILINEAR).resize((64, 64), Image.BILINEAR)),
        "jpeg quality 30": lambda im: jpeg(im, 30),
        "colours shifted by up to 25": lambda im: to_uint8(
            np.where((im < 250).any(-1, keepdims=True), im + rng.integers(-25, 26, 3), im)),
    }
    scenes = mixed_scenes(300, seed=25)
    images = S.render_batch(scenes)
    rates = {}
    for name, f in damage.items():
        rates[name], misses = grade_rate(scenes, [f(im) for im in images])
        assert rates[name] >= 0.98, (name, misses[:5])
    with capsys.disabled():
        print("\n[shapes] " + "; ".join(f"{k}: {v:.1%}" for k, v in rates.items()) + f" (of {len(scenes)} each)")


def test_grader_measures_boxes_to_a_fraction_of_a_pixel():
    for scene in mixed_scenes(300, seed=24):
        found = G.detect_objects(S.render(scene))
        assert len(found) == len(scene.objects)
        for o in scene.objects:
            d = min(found, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
            assert (d.color, d.shape) == (o.color, o.shape)
            assert abs(d.side - o.side) <= 0.75 and abs(d.cx - o.cx) <= 0.6 and abs(d.cy - o.cy) <= 0.6


def change_one_attribute(scene: S.Scene, what: str, rng: np.random.Generator) -> str:
    """A caption that differs from what the image shows in exactly ``what``."""
    desc = S.parse_caption(scene.caption)
    i = int(rng.integers(len(desc.objects)))
    p, o = desc.objects[i], scene.objects[i]
    if what == "color":
        used = {x.color for x in scene.objects}
        p.color = rng.choice([c for c in S.COLORS if c not in used])
    elif what == "shape":
        p.shape = rng.choice([s for s in S.SHAPES if s != o.shape])
    elif what == "size":
        p.size = "large" if o.size == "small" else "small"
    elif what == "position":
        desc.position = [c for c in S.POSITION_PHRASES if c != G.position_cell(o.cx, o.cy)][rng.integers(8)]
    elif what == "relation":
        desc.relation = OPPOSITE[desc.relation]
    elif what == "count" and len(desc.objects) == 1:
        other = rng.choice([c for c in S.COLORS if c != o.color])
        desc = S.Description(desc.objects + [S.ObjectPhrase(other, rng.choice(S.SHAPES))], relation="above")
    elif what == "count":
        desc = S.Description(desc.objects[:1])
    return S.format_caption(desc)


@pytest.mark.parametrize("what", ["color", "shape", "size", "position", "relation", "count"])
def test_grader_rejects_a_caption_that_changes_one_attribute(what):
    rng = np.random.default_rng(hash(what) % 2**32)
    n_objects = 1 if what == "position" else 2 if what == "relation" else None
    scenes = [S.sample_scene(np.random.default_rng([31, i]), S.SPLITS[i % 4], n_objects) for i in range(150)]
    for scene, image in zip(scenes, S.render_batch(scenes)):
        wrong = change_one_attribute(scene, what, rng)
        assert wrong != scene.caption
        g = G.grade(image, wrong)
        assert g.gradable and not g.match, (scene.caption, wrong, g.reason)
        assert g.checks[what] is False, (scene.caption, wrong, g.checks)
        assert what in g.reason
        if what != "count":
            assert g.checks["count"] is True
            assert [k for k, v in g.checks.items() if v is False] == [what], (wrong, g.checks)


def test_checks_are_none_for_what_the_caption_does_not_state():
    scene = S.scene_for_caption("a blue diamond", np.random.default_rng(0))
    g = G.grade(S.render(scene), "a blue diamond")
    assert g.match and g.gradable and g.checks == {
        "count": True, "color": True, "shape": True, "size": None, "position": None, "relation": None}
    scene = S.scene_for_caption("a small green square to the left of a large purple cross", np.random.default_rng(0))
    g = G.grade(S.render(scene), scene.caption)
    assert g.match and g.checks["position"] is None and g.checks["relation"] is True and g.checks["size"] is True
    assert all(type(v) is bool for v in g.checks.values() if v is not None), "plain bools: `v is False` must work"
    assert all(type(getattr(d, k)) is float for d in g.found for k in ("side", "cx", "cy"))
    assert [(d.color, d.shape, d.size) for d in g.found] == [("green", "square", "small"), ("purple", "cross", "large")]


def test_a_caption_outside_the_grammar_is_not_gradable():
    image = S.render(S.make_scenes("train", 1)[0])
    for caption in ["a cat wearing a hat", "", "A red circle", "a red circle!", "a orange cross"]:
        g = G.grade(image, caption)
        assert g.gradable is False and g.match is False
        assert "outside the Shapes grammar" in g.reason
        assert set(g.checks) == {"count", "color", "shape", "size", "position", "relation"}
        assert all(v is None for v in g.checks.values())


def test_two_blobs_of_one_colour_are_two_objects_and_specks_are_ignored():
    rng = np.random.default_rng(3)
    scene = S.scene_for_caption("a red circle to the left of a red square", rng)
    image = S.render(scene)
    assert [(d.color, d.shape) for d in G.detect_objects(image)] == [("red", "circle"), ("red", "square")]
    assert G.grade(image, "a red circle to the left of a red square").match
    g = G.grade(image, "a red circle")
    assert not g.match and g.checks["count"] is False
    # A few stray pixels are not an object.
    one = S.render(S.scene_for_caption("a large blue square in the center", rng))
    one[2:4, 2:5] = S.PALETTE["green"]
    one[60, 60] = S.PALETTE["red"]
    assert G.grade(one, "a large blue square in the center").match
    # A blank canvas holds nothing.
    blank = np.full((64, 64, 3), 255, np.uint8)
    assert G.detect_objects(blank) == []
    g = G.grade(blank, "a red circle")
    assert not g.match and g.checks["count"] is False and "found 0" in g.reason


def test_grader_ignores_off_palette_colours():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[10:30, 10:30] = (90, 90, 90)  # a grey square
    image[35:55, 35:55] = (0, 0, 0)  # a black one
    assert G.detect_objects(image) == []


def test_grader_accepts_every_image_format():
    scene = S.scene_for_caption("a small orange triangle below a large green circle", np.random.default_rng(4))
    image = S.render(scene)
    big = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR))
    chw = torch.from_numpy(image).permute(2, 0, 1)
    formats = {
        "numpy uint8 HWC": image,
        "numpy float HWC": image / 255.0,
        "torch float CHW": chw.float() / 255,
        "torch uint8 CHW": chw,
        "torch batch of one": chw.float().unsqueeze(0) / 255,
        "PIL": Image.fromarray(image),
        "128 x 128": big,
        "PIL 256 x 256": Image.fromarray(image).resize((256, 256), Image.NEAREST),
    }
    for name, x in formats.items():
        assert G.grade(x, scene.caption).match, name
    with pytest.raises(ValueError, match="divide it by 255"):
        G.grade(image.astype(np.float32), scene.caption)
    with pytest.raises(ValueError, match="expected one RGB image"):
        G.grade(np.zeros((64, 64)), scene.caption)


def test_connected_components_known_answers():
    labels = np.array([
        [0, 0, -1, 1, 1],
        [-1, 0, -1, -1, 1],
        [2, -1, 0, -1, 1],  # (2, 2) touches (1, 1) at a corner: 8-connected
        [2, 2, -1, 1, -1],  # (3, 3) touches (2, 4) at a corner
    ])
    assert G.connected_components(labels).tolist() == [
        [1, 1, 0, 2, 2],
        [0, 1, 0, 0, 2],
        [3, 0, 1, 0, 2],
        [3, 3, 0, 2, 0],
    ]
    assert G.row_runs(np.array([[-1, 2, 2, -1, 0]])) == [(0, 1, 3, 2), (0, 4, 5, 0)]


# ---------------------------------------------------------------------------
# Near misses: each is rejected, on the right check
# ---------------------------------------------------------------------------

# (what the caption names, how the near miss is drawn, its parameter). Radii are fractions
# of the half side: 0.4 rounds each corner with a radius of a fifth of the side.
NEAR_MISSES = [
    *[("square", rounded_square, r) for r in (0.4, 0.55, 0.7)],  # (at 1.0 it is a circle)
    *[("diamond", rounded_diamond, r) for r in (0.3, 0.4)],
    *[("cross", star, k) for k in (0.2, 0.3, 0.4)],  # a four-pointed star
    *[("cross", pinched_cross, r) for r in (0.15, 0.25, 0.35)],  # fillets inside, tapered arms
    *[("circle", teardrop, k) for k in (1.0, 0.7)],
    *[("triangle", teardrop, k) for k in (1.0, 0.7)],
]


@pytest.mark.parametrize("shape, maker, param", NEAR_MISSES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_near_misses_are_unrecognised_shapes(shape, maker, param):
    rng = np.random.default_rng(int(param * 100))
    for side in (16, 18, 20, 26, 28, 30):
        cx, cy = rng.uniform(20, 44, 2)
        color = S.COLORS[rng.integers(6)]
        caption = f"{S.article(color)} {color} {shape}"
        g = G.grade(draw(maker, param, side, cx, cy, color), caption)
        assert not g.match, (maker.__name__, param, side, g.reason)
        assert [f.check for f in g.failures] == ["shape"], g.reason
        assert g.found[0].shape is None and "unrecognised shape" in g.reason


def test_the_same_shapes_drawn_true_are_accepted():
    """The near-miss makers at parameter 0 (or the renderer's own) are the real shapes: accepted."""
    rng = np.random.default_rng(7)
    for side in (16, 20, 26, 30):
        cx, cy = rng.uniform(20, 44, 2)
        assert G.grade(draw(rounded_square, 0.0, side, cx, cy, "red"), "a red square").match
        assert G.grade(draw(rounded_diamond, 0.0, side, cx, cy, "blue"), "a blue diamond").match


def test_a_speck_inside_a_shape_is_an_extra_object():
    """Any patch of 20 px or more counts: a 5 x 5 speck inside a circle fails the count, not the circle's shape."""
    image = S.render(S.Scene((S.ShapeObject("purple", "circle", "large", 28.0, 32.0, 32.0),), "a large purple circle"))
    assert G.grade(image, "a large purple circle").match
    image[30:35, 30:35] = S.PALETTE["yellow"]  # 25 px
    g = G.grade(image, "a large purple circle")
    assert not g.match and g.checks["count"] is False and g.checks["shape"] is True, g.reason
    assert sorted(o.color for o in g.found) == ["purple", "yellow"]
    image[30:35, 30:35] = S.PALETTE["purple"]
    image[31:34, 31:34] = S.PALETTE["yellow"]  # 9 px: too small to be an object
    assert G.grade(image, "a large purple circle").checks["count"] is True


@pytest.mark.parametrize("shape", S.SHAPES)
def test_a_shape_cut_by_the_border_is_unrecognised(shape):
    for cx, cy in ((4.0, 32.0), (32.0, 4.0)):  # a third of the box off the canvas, left or top
        scene = S.Scene((S.ShapeObject("green", shape, "large", 28.0, cx, cy),), f"a large green {shape}")
        g = G.grade(S.render(scene), scene.caption)
        assert not g.match and g.checks["shape"] is False, (shape, cx, cy, g.reason)


def test_size_follows_the_fitted_box_side_with_the_spec_boundary():
    """Small is 16-20 px, large 26-30 px: the boundary is 23 px, read from the fitted box to a fraction of a pixel."""
    for side, size in ((22.4, "small"), (23.6, "large"), (16.0, "small"), (30.0, "large")):
        image = S.render(S.Scene((S.ShapeObject("red", "square", "large", side, 31.3, 32.6),), ""))
        (found,) = G.detect_objects(image)
        assert abs(found.side - side) <= 0.3 and found.size == size, (side, found)


def test_failures_come_as_data():
    scene = S.scene_for_caption("a small blue circle to the left of a large red square", np.random.default_rng(2))
    image = S.render(scene)
    g = G.grade(image, "a large green circle to the right of a large red square")
    assert [(f.check, f.expected) for f in g.failures] == [
        ("color", "green"), ("size", "large"), ("relation", "the green circle to the right of the red square")]
    assert g.reason == "no match: " + "; ".join(str(f) for f in g.failures)
    assert {f.check for f in g.failures} == {k for k, v in g.checks.items() if v is False}


def test_a_canvas_of_one_colour_is_no_shape():
    """A solid red image, of any size, is not "a large red square": no Shapes object is wider than 30 px."""
    for size in (1, 64, 200):
        g = G.grade(np.full((size, size, 3), S.PALETTE["red"], np.uint8), "a large red square")
        assert not g.match and g.checks["shape"] is False, (size, g.reason)


# ---------------------------------------------------------------------------
# What failed, by check
# ---------------------------------------------------------------------------


def test_failure_reasons_split_the_grader_reason_by_check():
    blank = np.full((64, 64, 3), 255, np.uint8)
    why = G.failure_reasons(G.grade(blank, "a red circle"))
    assert set(why) == {"count", "color", "shape"}
    assert why["count"] == "expected 1 object(s), found 0 (nothing)" and why["color"] == G.NO_OBJECT
    image = S.render(S.make_scenes("test", 1, seed=0)[0])
    assert G.failure_reasons(G.grade(image, S.make_scenes("test", 1, seed=0)[0].caption)) == {}
    for grade in mismatched_grades()[2]:
        failed = {name for name, ok in grade.checks.items() if ok is False}
        assert set(G.failure_reasons(grade)) == failed


def test_failure_counts_count_each_check_most_frequent_first():
    _, _, grades = mismatched_grades()
    counts = G.failure_counts(grades)
    assert list(counts) == sorted(counts, key=lambda k: -counts[k]) and set(counts) == set(G.CHECKS)
    for name, n in counts.items():
        assert n == sum(g.checks[name] is False for g in grades)
