"""The Shapes dataset: a renderer, a caption grammar, seeded splits and an exact grader.

Every model in the course trains on small pictures of coloured shapes with a
caption that describes them, such as ``"a large red circle in the top left"``
or ``"a small green square to the left of a large purple cross"``. Because we
draw the pictures ourselves, we also know exactly what every caption means in
pixels, so a generated image can be *graded*: does it show what was asked?

This module follows ``specs/shapes_dataset.md`` (spec v1) to the letter. It
reads top to bottom in five parts:

1. **The spec as constants**: palette, shapes, sizes, grid, relations, splits.
2. **Scenes**: what is in a picture (`ShapeObject`, `Scene`) and how a random
   scene is sampled (`sample_scene`, `make_scenes`, `scene_for_caption`).
3. **Rendering**: a scene -> a 64 x 64 RGB image (`render`, `render_batch`),
   and `ShapesDataset`, the torch dataset the models train on.
4. **Captions**: the grammar both ways (`format_caption`, `parse_caption`).
5. **Grading**: find the objects in any image (`detect_objects`) and check
   them against a caption (`grade`).

Coordinates. ``x`` grows to the right and ``y`` grows *downwards*, as in an
image array ``image[y, x]``. Pixel ``(row i, column j)`` covers the square
``[j, j + 1) x [i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)`` and the
canvas centre is ``(32.0, 32.0)``. An object of side ``s`` centred at
``(cx, cy)`` fills the box ``[cx - s/2, cx + s/2] x [cy - s/2, cy + s/2]``.

Choices the spec leaves open (all module constants below): the probability of
a two-object scene (`P_TWO_OBJECTS`), of stating a size (`P_STATE_SIZE`) or a
position (`P_STATE_POSITION`), a minimum gap between two objects' boxes
(`MIN_BOX_GAP`), the anti-aliasing (`SUPERSAMPLE`) and the grader's tolerances.

Does not handle:
- overlapping or touching objects (the spec never draws them; the grader sees
  two touching blobs of one colour as one object),
- more than two objects in a caption, or colours and shapes outside the spec,
- captions with capitals, punctuation, synonyms or extra spaces:
  `parse_caption` is strict and its error says how to fix the caption,
- rotated shapes, outlines, textures, or backgrounds that are not near white.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

# ---------------------------------------------------------------------------
# 1. The spec, as constants
# ---------------------------------------------------------------------------

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)

PALETTE: dict[str, tuple[int, int, int]] = {  # name -> RGB, in the spec's order
    "red": (220, 38, 38),
    "orange": (245, 130, 20),
    "yellow": (235, 200, 20),
    "green": (30, 160, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

SIZES: dict[str, tuple[int, int]] = {"small": (16, 20), "large": (26, 30)}  # side range in px
SIZE_THRESHOLD = 23.0  # the grader: a box side >= 23 px is "large", below is "small"

CELL_CENTERS = (16.0, 32.0, 48.0)  # the 3 x 3 grid, the same on both axes
JITTER = 2.0  # an object's centre is its cell centre +- up to 2 px (then clamped)
POSITION_LOW, POSITION_HIGH = 24.0, 40.0  # the grader: < 24 is left/top, > 40 right/bottom

POSITION_PHRASES: dict[tuple[int, int], str] = {  # (row, col) -> phrase; 0, 1, 2 = top/left, middle, bottom/right
    (0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the bottom left", (2, 1): "at the bottom", (2, 2): "in the bottom right",
}

RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
# relation -> (axis, sign): "A rel B" means sign * (A - B) > 0 along axis (0 = x, 1 = y).
RELATION_AXIS: dict[str, tuple[int, int]] = {
    "to the left of": (0, -1), "to the right of": (0, +1), "above": (1, -1), "below": (1, +1),
}
RELATION_MIN_GAP = 22.0  # centres differ by at least this along the relation's axis
RELATION_MAX_OFFSET = 8.0  # ... and by at most this on the other axis
MIN_BOX_GAP = 3.0  # our choice: empty pixels between two boxes, so blur never joins them

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("green", "triangle"), ("purple", "circle"), ("orange", "diamond"), ("blue", "cross"), ("yellow", "square"),
})
SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")  # "test" = seen pairs

# Sampling choices the spec leaves to us. Whatever a caption omits is still sampled uniformly.
P_TWO_OBJECTS = 0.5  # probability that a scene has two objects (and a relation)
P_STATE_SIZE = 0.5  # probability that an object phrase says "small"/"large"
P_STATE_POSITION = 0.8  # probability that a one-object caption says where it is

# Anti-aliasing: each pixel of an object's box is tested at 16 points placed like
# 16 rooks that never attack each other (one per 1/16 column and per 1/16 row), so
# a straight edge is resolved to 1/16 px for the price of a 4 x 4 grid.
SUPERSAMPLE = 16
ROOK_STEP = 5  # sample k sits at column k and row 5k mod 16 of the pixel's 16 x 16 sub-grid


# ---------------------------------------------------------------------------
# 2. Scenes and how to sample them
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One shape on the canvas: what it is and where its box is (pixels, see module docstring)."""

    color: str  # a key of PALETTE
    shape: str  # one of SHAPES
    size: str  # "small" or "large"
    side: float  # box side s, in SIZES[size]
    cx: float  # box centre, x to the right
    cy: float  # box centre, y downwards


@dataclass(frozen=True)
class Scene:
    """A picture's content and its caption. ``relation`` is set only for two objects (A rel B)."""

    objects: tuple[ShapeObject, ...]
    caption: str
    relation: str | None = None


def pairs_for_split(split: str) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs a split may use: 5 for ``compositional``, the other 25 otherwise.

    Example: ``pairs_for_split("compositional")[0] -> ("orange", "diamond")``
    """
    _check_split(split)
    every = [(c, s) for c in COLORS for s in SHAPES]
    if split == "compositional":
        return tuple(p for p in every if p in HELD_OUT_PAIRS)
    return tuple(p for p in every if p not in HELD_OUT_PAIRS)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _sample_side(rng: np.random.Generator, size: str) -> float:
    low, high = SIZES[size]
    return float(rng.uniform(low, high))


def _place_in_cell(rng: np.random.Generator, cell: int, side: float) -> float:
    """One coordinate: the cell centre + uniform jitter, clamped so the box stays on the canvas."""
    centre = CELL_CENTERS[cell] + rng.uniform(-JITTER, JITTER)
    return float(np.clip(centre, side / 2, IMAGE_SIZE - side / 2))


def _place_pair(
    rng: np.random.Generator, side_a: float, side_b: float, relation: str
) -> tuple[float, float, float, float]:
    """Centres ``(ax, ay, bx, by)`` for "A <relation> B" that obey the spec.

    Along the relation's axis the centres are ``d`` apart with
    ``max(22, (sa + sb)/2 + gap) <= d <= 64 - (sa + sb)/2``: far enough for the
    spec and for the boxes not to touch, near enough for both to fit. Across,
    they differ by ``e`` in [-8, 8]. Then the pair slides to a uniform place.
    """
    axis, sign = RELATION_AXIS[relation]
    half_sum = (side_a + side_b) / 2
    d = rng.uniform(max(RELATION_MIN_GAP, half_sum + MIN_BOX_GAP), IMAGE_SIZE - half_sum)
    # Along the axis: the object with the smaller coordinate comes first.
    side_low, side_high = (side_a, side_b) if sign < 0 else (side_b, side_a)
    low = rng.uniform(side_low / 2, IMAGE_SIZE - side_high / 2 - d)
    a_along, b_along = (low, low + d) if sign < 0 else (low + d, low)
    # Across the axis: b = a + e, and both boxes inside the canvas.
    e = rng.uniform(-RELATION_MAX_OFFSET, RELATION_MAX_OFFSET)
    lo = max(side_a / 2, side_b / 2 - e)
    hi = min(IMAGE_SIZE - side_a / 2, IMAGE_SIZE - side_b / 2 - e)
    a_across = rng.uniform(lo, hi)
    b_across = a_across + e
    if axis == 0:
        return float(a_along), float(a_across), float(b_along), float(b_across)
    return float(a_across), float(a_along), float(b_across), float(b_along)


def sample_scene(rng: np.random.Generator, split: str = "train", n_objects: int | None = None) -> Scene:
    """Draw one random scene and its caption for ``split``.

    Every choice is uniform (pair, size word, side, cell, jitter, relation)
    except how many objects there are and which attributes the caption states
    (`P_TWO_OBJECTS`, `P_STATE_SIZE`, `P_STATE_POSITION`). In the compositional
    split every object uses a held-out pair; in the others none does.
    """
    pairs = pairs_for_split(split)
    if n_objects is None:
        n_objects = 2 if rng.random() < P_TWO_OBJECTS else 1
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1, 2 or None (random), got {n_objects!r}")

    # What: the (colour, shape) pairs. Two objects always differ in colour.
    first = pairs[rng.integers(len(pairs))]
    chosen = [first]
    if n_objects == 2:
        others = [p for p in pairs if p[0] != first[0]]
        chosen.append(others[rng.integers(len(others))])
    sizes = [("small", "large")[rng.integers(2)] for _ in chosen]
    sides = [_sample_side(rng, size) for size in sizes]
    stated = [rng.random() < P_STATE_SIZE for _ in chosen]  # does the caption say the size word?

    # Where: a grid cell for one object, a relation for two.
    if n_objects == 1:
        row, col = int(rng.integers(3)), int(rng.integers(3))
        centres = [(_place_in_cell(rng, col, sides[0]), _place_in_cell(rng, row, sides[0]))]
        relation = None
        position = (row, col) if rng.random() < P_STATE_POSITION else None
    else:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        ax, ay, bx, by = _place_pair(rng, sides[0], sides[1], relation)
        centres = [(ax, ay), (bx, by)]
        position = None

    objects = tuple(
        ShapeObject(color=c, shape=s, size=size, side=side, cx=x, cy=y)
        for (c, s), size, side, (x, y) in zip(chosen, sizes, sides, centres)
    )
    phrases = [ObjectPhrase(o.color, o.shape, o.size if say else None) for o, say in zip(objects, stated)]
    caption = format_caption(Description(phrases, position, relation))
    return Scene(objects=objects, caption=caption, relation=relation)


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of ``split``: one independent stream per (seed, split, index).

    Giving every scene its own stream makes a split a pure function of its
    seed, lets any scene be redrawn alone, and makes lists prefix-stable.
    """
    _check_split(split)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, SPLITS.index(split), index])


def make_scenes(split: str, n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes of ``split``; a deterministic function of ``(split, n, seed)``.

    Prefix-stable: ``make_scenes(s, 10, 0) == make_scenes(s, 100, 0)[:10]``.
    """
    return [sample_scene(scene_rng(split, seed, i), split) for i in range(n)]


def scene_for_caption(caption: str, rng: np.random.Generator) -> Scene:
    """A random scene that ``caption`` describes truthfully; what it omits is sampled uniformly.

    Raises `CaptionError` when the caption is outside the grammar. Pairs are
    not restricted to a split: any of the 30 (colour, shape) pairs can be drawn.
    A caption with two objects of one colour is drawn as asked (the dataset
    itself never samples one).
    """
    desc = parse_caption(caption)
    sizes = [p.size if p.size is not None else ("small", "large")[rng.integers(2)] for p in desc.objects]
    sides = [_sample_side(rng, size) for size in sizes]
    if desc.relation is None:
        row, col = desc.position if desc.position is not None else (int(rng.integers(3)), int(rng.integers(3)))
        centres = [(_place_in_cell(rng, col, sides[0]), _place_in_cell(rng, row, sides[0]))]
    else:
        ax, ay, bx, by = _place_pair(rng, sides[0], sides[1], desc.relation)
        centres = [(ax, ay), (bx, by)]
    objects = tuple(
        ShapeObject(color=p.color, shape=p.shape, size=size, side=side, cx=x, cy=y)
        for p, size, side, (x, y) in zip(desc.objects, sizes, sides, centres)
    )
    return Scene(objects=objects, caption=caption, relation=desc.relation)


# ---------------------------------------------------------------------------
# 3. Rendering
# ---------------------------------------------------------------------------


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points ``(u, v)`` lie inside ``shape``, in box coordinates.

    ``u = (x - cx) / (s/2)`` and ``v = (y - cy) / (s/2)``, so the box is
    ``[-1, 1] x [-1, 1]`` and ``v = -1`` is its top edge. Arrays broadcast.

    - circle:   u^2 + v^2 <= 1
    - square:   |u| <= 1 and |v| <= 1
    - triangle: apex (0, -1), base v = 1:  |u| <= (v + 1) / 2
    - diamond:  |u| + |v| <= 1
    - cross:    two bars of thickness s/3 (half-width 1/3 in box units)

    Example: ``inside_shape("diamond", np.array([0.0, 0.9]), np.array([0.0, 0.9])) -> [True, False]``
    """
    au, av = np.abs(u), np.abs(v)
    in_box = (au <= 1) & (av <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return in_box
    if shape == "triangle":
        return in_box & (au <= (v + 1) / 2)
    if shape == "diamond":
        return au + av <= 1
    if shape == "cross":
        return in_box & ((au <= 1 / 3) | (av <= 1 / 3))
    raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def _pixel_span(centre: float, half: float) -> tuple[int, int]:
    """The pixels a box edge-to-edge touches on one axis: ``[start, stop)`` clipped to the canvas."""
    start = max(int(np.floor(centre - half)), 0)
    stop = min(int(np.ceil(centre + half)), IMAGE_SIZE)
    return start, stop


def sample_offsets(n: int = SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Where inside a pixel the ``n`` coverage samples sit: x and y offsets in (0, 1).

    Sample ``k`` is at column ``k`` and row ``ROOK_STEP * k mod n`` of an n x n
    sub-grid: every column and every row holds exactly one sample.
    Example: ``sample_offsets(4)[1] * 4 - 0.5 -> [0., 1., 2., 3.]`` (a step of 5 is 1 mod 4).
    """
    if np.gcd(ROOK_STEP, n) != 1:
        raise ValueError(f"the number of samples must share no factor with {ROOK_STEP}, got {n}")
    k = np.arange(n)
    return (k + 0.5) / n, ((ROOK_STEP * k) % n + 0.5) / n


def coverage(obj: ShapeObject, samples: int = SUPERSAMPLE) -> tuple[slice, slice, np.ndarray]:
    """The fraction of each pixel of ``obj``'s box that the shape covers.

    Returns ``(rows, cols, cov)`` with ``cov`` of shape (H, W) for
    ``image[rows, cols]``. Each pixel is tested at ``samples`` points
    (`sample_offsets`), and only inside the object's box, which is what makes
    rendering fast. A pixel wholly inside the shape has every point inside,
    so its coverage is exactly 1.0.
    """
    half = obj.side / 2
    x0, x1 = _pixel_span(obj.cx, half)
    y0, y1 = _pixel_span(obj.cy, half)
    ox, oy = sample_offsets(samples)
    u = (np.arange(x0, x1)[None, :, None] + ox - obj.cx) / half  # (1, W, n)
    v = (np.arange(y0, y1)[:, None, None] + oy - obj.cy) / half  # (H, 1, n)
    inside = inside_shape(obj.shape, u, v)  # (H, W, n)
    return slice(y0, y1), slice(x0, x1), inside.mean(axis=-1)


def _draw(canvas: np.ndarray, obj: ShapeObject) -> None:
    """Paint ``obj`` onto a uint8 (64, 64, 3) canvas in place: ``pixel += cov * (colour - pixel)``."""
    rows, cols, cov = coverage(obj)
    region = canvas[rows, cols].astype(np.float32)  # (H, W, 3)
    colour = np.asarray(PALETTE[obj.color], dtype=np.float32)
    region += cov[..., None].astype(np.float32) * (colour - region)  # cov = 1 gives exactly the colour
    canvas[rows, cols] = np.rint(region).astype(np.uint8)


def render(scene: Scene) -> np.ndarray:
    """Draw a scene: uint8 array (64, 64, 3), white background, flat colours, soft edges only."""
    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    for obj in scene.objects:
        _draw(canvas, obj)
    return canvas


def render_batch(scenes) -> np.ndarray:
    """Draw many scenes: uint8 array (N, 64, 64, 3)."""
    scenes = list(scenes)
    images = np.full((len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    for image, scene in zip(images, scenes):
        for obj in scene.objects:
            _draw(image, obj)  # `image` is a view: draws straight into the batch
    return images


class ShapesDataset(torch.utils.data.Dataset):
    """``size`` captioned Shapes images of one split, rendered once and kept in memory.

    ``dataset[i] -> (caption, image)`` with ``image`` a float tensor (3, 64, 64)
    in [0, 1]. ``.scenes``, ``.captions`` and ``.images`` (uint8 (N, 64, 64, 3))
    hold everything for quick plotting or re-use.
    """

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0) -> None:
        self.split, self.seed = split, seed
        self.scenes: list[Scene] = make_scenes(split, size, seed)
        self.captions: list[str] = [scene.caption for scene in self.scenes]
        self.images: np.ndarray = render_batch(self.scenes)  # (N, 64, 64, 3) uint8

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float() / 255.0  # (3, 64, 64)
        return self.captions[index], image

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, size={len(self)}, seed={self.seed})"


# ---------------------------------------------------------------------------
# 4. Captions: the grammar both ways
# ---------------------------------------------------------------------------

GRAMMAR_HELP = (
    "The Shapes grammar accepts '<object> [<position>]' or '<object> <relation> <object>', where "
    "<object> is 'a|an [small|large] <colour> <shape>' (colour: " + ", ".join(COLORS) + "; shape: "
    + ", ".join(SHAPES) + "), <position> is one of: " + ", ".join(POSITION_PHRASES.values())
    + ", and <relation> is one of: " + ", ".join(RELATIONS) + ". Lower case, single spaces, "
    "no punctuation, e.g. 'a large red circle in the top left' or "
    "'a small green square to the left of an orange cross'."
)


class CaptionError(ValueError):
    """A caption outside the Shapes grammar; the message says what is wrong and what is accepted."""


@dataclass
class ObjectPhrase:
    """``a [size] color shape``; ``size`` is None when the caption does not say it."""

    color: str
    shape: str
    size: str | None = None


@dataclass
class Description:
    """A parsed caption: one object (maybe with a position cell) or two objects and a relation."""

    objects: list[ObjectPhrase]
    position: tuple[int, int] | None = None  # (row, col), only for one object
    relation: str | None = None  # only for two objects: objects[0] <relation> objects[1]


def article(word: str) -> str:
    """The English indefinite article before ``word``.

    Example: ``article("orange") -> "an"``, ``article("red") -> "a"``
    """
    return "an" if word[:1] in "aeiou" else "a"


def format_object(phrase: ObjectPhrase) -> str:
    """Example: ``ObjectPhrase("orange", "cross") -> "an orange cross"``."""
    words = ([phrase.size] if phrase.size is not None else []) + [phrase.color, phrase.shape]
    return " ".join([article(words[0])] + words)


def format_caption(desc: Description) -> str:
    """The caption that says exactly ``desc``; raises `CaptionError` for an impossible description.

    Example: ``Description([ObjectPhrase("red", "circle", "large")], (0, 0)) -> "a large red circle in the top left"``
    """
    for p in desc.objects:
        if p.color not in PALETTE or p.shape not in SHAPES or (p.size is not None and p.size not in SIZES):
            raise CaptionError(f"{p} is not an object the grammar can say. {GRAMMAR_HELP}")
    if len(desc.objects) == 1 and desc.relation is None:
        text = format_object(desc.objects[0])
        if desc.position is not None:
            if desc.position not in POSITION_PHRASES:
                raise CaptionError(f"position must be a (row, col) with 0..2 each, got {desc.position!r}")
            text += " " + POSITION_PHRASES[desc.position]
        return text
    if len(desc.objects) == 2 and desc.relation in RELATIONS and desc.position is None:
        a, b = desc.objects
        return f"{format_object(a)} {desc.relation} {format_object(b)}"
    raise CaptionError(
        "a description is one object with an optional position, or two objects with a relation "
        f"(and no position); got {len(desc.objects)} object(s), position={desc.position!r}, "
        f"relation={desc.relation!r}"
    )


_PHRASE_TO_CELL = {phrase: cell for cell, phrase in POSITION_PHRASES.items()}


def _parse_object(words: list[str], i: int) -> tuple[ObjectPhrase, int]:
    """Read ``a|an [size] colour shape`` starting at ``words[i]``; return it and the next index."""
    start = i

    def expect(what: str, options) -> str:
        nonlocal i
        got = words[i] if i < len(words) else None
        if got not in options:
            before = " ".join(words[start:i]) or "the start"
            found = f"'{got}'" if got is not None else "the end of the caption"
            raise CaptionError(f"expected {what} after '{before}', found {found}. {GRAMMAR_HELP}")
        i += 1
        return got

    art = expect("'a' or 'an'", ("a", "an"))
    size = words[i] if i < len(words) and words[i] in SIZES else None
    if size is not None:
        i += 1
    color = expect(f"a colour ({', '.join(COLORS)})", PALETTE)
    shape = expect(f"a shape ({', '.join(SHAPES)})", SHAPES)
    first = size if size is not None else color
    if art != article(first):
        raise CaptionError(f"write '{article(first)} {first}', not '{art} {first}' (English a/an). {GRAMMAR_HELP}")
    return ObjectPhrase(color, shape, size), i


def parse_caption(caption: str) -> Description:
    """Read a caption back into a `Description`: the exact inverse of `format_caption`.

    Raises `CaptionError` for anything outside the grammar, saying what is
    wrong. Example: ``parse_caption("an orange cross at the top")
    -> Description([ObjectPhrase("orange", "cross", None)], (0, 1), None)``
    """
    if not isinstance(caption, str):
        raise CaptionError(f"a caption is a str, got {type(caption).__name__}")
    if not caption.strip():
        raise CaptionError(f"the caption is empty. {GRAMMAR_HELP}")
    if caption != caption.lower():
        raise CaptionError(f"write the caption in lower case: {caption.lower()!r}. {GRAMMAR_HELP}")
    tidy = " ".join(caption.split())
    if caption != tidy:
        raise CaptionError(f"use single spaces and no spaces at the ends: {tidy!r}. {GRAMMAR_HELP}")
    bad = sorted({ch for ch in caption if not ("a" <= ch <= "z" or ch == " ")})
    if bad:
        raise CaptionError(f"only the letters a-z and spaces are allowed, found {''.join(bad)!r}. {GRAMMAR_HELP}")

    words = caption.split(" ")
    first, i = _parse_object(words, 0)
    rest = " ".join(words[i:])
    if not rest:
        return Description([first])
    if rest in _PHRASE_TO_CELL:
        return Description([first], position=_PHRASE_TO_CELL[rest])
    for relation in RELATIONS:
        n = len(relation.split(" "))
        if words[i:i + n] == relation.split(" "):
            second, j = _parse_object(words, i + n)
            if j != len(words):
                raise CaptionError(f"unexpected words after the second object: {' '.join(words[j:])!r}. {GRAMMAR_HELP}")
            return Description([first, second], relation=relation)
    raise CaptionError(
        f"after '{' '.join(words[:i])}' expected a position, a relation or the end, found {rest!r}. {GRAMMAR_HELP}"
    )


# ---------------------------------------------------------------------------
# 5. Grading: find the objects in an image, then check the caption
# ---------------------------------------------------------------------------

# Grader tolerances (our choices; the tests measure them on noisy, blurred images).
MIN_ALPHA = 0.5  # a pixel belongs to an object when it is at least half way from white to a colour
OFF_PALETTE = 0.35  # ... and lies within 0.35 x its distance from white of that white->colour line
OFF_PALETTE_OBJECT = 0.2  # an object whose median pixel is further off than this is not a palette colour
#                           (plain grey is 0.31 off green's line; JPEG or a decoder shifts single pixels more)
MIN_OBJECT_AREA = 30  # components smaller than this are specks: merged into a touching object, else ignored
EMBEDDED_CONTACT = 0.4  # a component whose edge mostly touches a bigger one is part of it (colour bleed)

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (K, 3)
_TOWARDS = _PALETTE_RGB - 255.0  # (K, 3): from white to each colour
_TOWARDS_SQ = (_TOWARDS ** 2).sum(axis=1)  # (K,)


@dataclass
class DetectedObject:
    """An object the grader found: its colour, best-fitting shape and pixel box (centre, side = max(w, h))."""

    color: str
    shape: str
    side: float
    cx: float
    cy: float
    area: int  # number of pixels
    shape_scores: dict[str, float] = field(default_factory=dict, repr=False)  # shape -> fit (IoU)

    @property
    def size(self) -> str:
        return size_of(self.side)

    @property
    def cell(self) -> tuple[int, int]:
        return position_cell(self.cx, self.cy)


@dataclass
class Grade:
    """Whether an image shows its caption. ``checks[attr]`` is None when the caption does not state it."""

    match: bool
    gradable: bool
    reason: str
    checks: dict[str, bool | None]
    found: list[DetectedObject]


def size_of(side: float) -> str:
    """Example: ``size_of(18) -> "small"``, ``size_of(28) -> "large"`` (threshold 23 px)."""
    return "large" if side >= SIZE_THRESHOLD else "small"


def _band(c: float) -> int:
    return 0 if c < POSITION_LOW else 2 if c > POSITION_HIGH else 1


def position_cell(cx: float, cy: float) -> tuple[int, int]:
    """The (row, col) grid cell of a centre. Example: ``position_cell(50.0, 10.0) -> (0, 2)`` (top right)."""
    return _band(cy), _band(cx)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Does centre ``a`` stand in ``relation`` to centre ``b``? Example: ``relation_holds("above", (5, 10), (9, 40)) -> True``"""
    axis, sign = RELATION_AXIS[relation]
    return bool(sign * (a[axis] - b[axis]) > 0)


def to_rgb_array(image) -> np.ndarray:
    """Any RGB image -> float32 (64, 64, 3) in [0, 255].

    Accepts numpy HWC (uint8, or float in [0, 1]), torch CHW or HWC (float in
    [0, 1] or uint8), a leading batch axis of 1, or a PIL image. Other sizes
    are resized to 64 x 64 (bilinear, anti-aliased).
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected one RGB image (H, W, 3) or (3, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        high = float(np.nanmax(arr)) if arr.size else 0.0
        if high > 1.5:
            raise ValueError(f"a float image must be in [0, 1] (max is {high:.1f}): divide it by 255")
        arr = np.clip(np.nan_to_num(arr.astype(np.float32), nan=1.0), 0.0, 1.0) * 255.0
    else:
        raise ValueError(f"expected uint8 or float pixels, got {arr.dtype}")
    if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        pil = Image.fromarray(np.rint(arr).astype(np.uint8))
        arr = np.asarray(pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float32)
    return arr


def classify_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label each pixel with a palette colour index, or -1 for background.

    Every pixel an object can produce lies on a line from white to its colour
    (an edge pixel is a blend ``white + alpha * (colour - white)``). So each
    pixel is projected onto the six lines: ``alpha`` says how far along, the
    residual how far off. It gets the colour whose line is nearest, if it is
    at least `MIN_ALPHA` of the way there and not too far off the line (grey,
    black and other off-palette pixels count as background).
    This is nearest-colour matching that also reads anti-aliased edges right:
    a half-covered orange pixel is nearer yellow than orange, but it lies on
    the orange line.

    With ``d = pixel - white`` and ``t = colour - white``:
    ``alpha = max(d.t / |t|^2, 0)`` and ``residual^2 = |d|^2 - 2 alpha d.t + alpha^2 |t|^2``.

    Returns ``(labels, alpha, off)``: int (H, W) in -1..5, and float (H, W)
    each: how far along and how far off (as a fraction of the distance from
    white) the nearest line each pixel is (both 0 for pixels so near white
    that they cannot be half way to any colour: those are skipped).
    """
    h, w, _ = rgb.shape
    labels = np.full(h * w, -1, dtype=np.int64)
    alphas = np.zeros(h * w, dtype=np.float32)
    offs = np.zeros(h * w, dtype=np.float32)
    d = rgb.reshape(-1, 3) - 255.0  # (P, 3): from white to each pixel
    far2 = (d ** 2).sum(axis=1)  # squared distance from white
    # alpha >= MIN_ALPHA needs |d| >= d.t / |t| >= MIN_ALPHA |t|: nearer white is background.
    idx = np.flatnonzero(far2 >= MIN_ALPHA ** 2 * _TOWARDS_SQ.min())
    d, far2 = d[idx], far2[idx]
    dot = d @ _TOWARDS.T  # (P', K)
    alpha = np.maximum(dot / _TOWARDS_SQ, 0.0)
    residual2 = np.maximum(far2[:, None] - 2 * alpha * dot + alpha ** 2 * _TOWARDS_SQ, 0.0)  # (P', K)
    k = residual2.argmin(axis=1)
    a = alpha[np.arange(len(k)), k]
    r2 = residual2[np.arange(len(k)), k]
    off = np.sqrt(r2 / far2)
    ok = (a >= MIN_ALPHA) & (off <= OFF_PALETTE)
    labels[idx[ok]] = k[ok]
    alphas[idx], offs[idx] = a, off
    return labels.reshape(h, w), alphas.reshape(h, w), offs.reshape(h, w)


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, with ``fill`` off the edge."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = a[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    return out


def row_runs(labels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Every run of equal, non-negative labels in every row: ``(row, start, stop, label)``, reading order.

    Example: ``[[-1, 2, 2, -1, 0]] -> [(0, 1, 3, 2), (0, 4, 5, 0)]``
    """
    h, w = labels.shape
    starts_here = np.ones((h, w), dtype=bool)
    starts_here[:, 1:] = labels[:, 1:] != labels[:, :-1]  # a run starts where the label changes
    ys, starts = np.nonzero(starts_here)  # reading order
    last_in_row = np.append(ys[1:] != ys[:-1], True)
    stops = np.where(last_in_row, w, np.append(starts[1:], w))  # a run stops where the next starts
    runs = zip(ys.tolist(), starts.tolist(), stops.tolist(), labels[ys, starts].tolist())
    return [run for run in runs if run[3] >= 0]


def connected_components(labels: np.ndarray) -> np.ndarray:
    """Split a label image into 8-connected regions of equal label (label -1 = background).

    Returns int (H, W): 0 for background, 1..n per region, numbered in the
    order their first pixel is met reading top to bottom, left to right.

    The classic idea on runs: cut every row into runs of one label; a run
    joins each run of the same label in the row above that touches it
    (overlaps, or meets it at a corner); a union-find keeps track of which
    runs ended up in one region. Example: ``[[0, 0, -1, 1]] -> [[1, 1, 0, 2]]``
    """
    runs = row_runs(labels)
    parent = list(range(len(runs)))  # union-find: run -> a run in the same region

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    above: list[int] = []  # the runs of the previous row
    current: list[int] = []  # the runs of this row so far
    for i, (y, start, stop, label) in enumerate(runs):
        if current and runs[current[0]][0] != y:  # a new row begins
            above = current if runs[current[0]][0] == y - 1 else []
            current = []
        for j in above:
            _, a_start, a_stop, a_label = runs[j]
            if a_label == label and a_start <= stop and a_stop >= start:  # touches, corners included
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
        current.append(i)
    out = np.zeros(labels.shape, dtype=np.int64)
    number: dict[int, int] = {}  # root run -> region number
    for i, (y, start, stop, _) in enumerate(runs):
        out[y, start:stop] = number.setdefault(find(i), len(number) + 1)
    return out


def _merge_fragments(regions: np.ndarray, labels: np.ndarray) -> dict[int, list[int]]:
    """Group regions into objects: specks and colour bleed join the object they touch.

    A region joins the biggest region it touches when it is a speck (fewer
    than `MIN_OBJECT_AREA` pixels) or when at least `EMBEDDED_CONTACT` of its
    outline touches that bigger region (a patch of the wrong colour inside or
    along an object). Isolated specks are dropped. Returns root region ->
    members, the root being the region whose colour the object takes.
    """
    n = int(regions.max())
    areas = np.bincount(regions.ravel(), minlength=n + 1)
    owner = list(range(n + 1))  # region -> the region it joined

    def root(r: int) -> int:
        while owner[r] != r:
            r = owner[r]
        return r

    for r in sorted(range(1, n + 1), key=lambda r: areas[r]):  # smallest first
        mask = regions == r
        grown = mask.copy()
        for dy, dx in _NEIGHBOURS:
            grown |= _shift(mask, dy, dx, False)
        touching = np.unique(regions[grown & ~mask & (regions > 0)])
        bigger = [t for t in touching if areas[root(t)] > areas[r] and root(t) != r]
        if not bigger:
            if areas[r] < MIN_OBJECT_AREA:
                owner[r] = 0  # an isolated speck: ignored
            continue
        best = max(bigger, key=lambda t: areas[root(t)])
        outline = mask & ~np.logical_and.reduce([_shift(mask, dy, dx, False) for dy, dx in _NEIGHBOURS])
        contact = np.zeros_like(mask)
        best_mask = regions == best
        for dy, dx in _NEIGHBOURS:
            contact |= _shift(best_mask, dy, dx, False)
        ratio = (contact & outline).sum() / max(outline.sum(), 1)
        if areas[r] < MIN_OBJECT_AREA or ratio >= EMBEDDED_CONTACT:
            target = root(best)
            owner[r] = target
            areas[target] += areas[r]
    groups: dict[int, list[int]] = {}
    for r in range(1, n + 1):
        top = root(r)
        if top != 0:
            groups.setdefault(top, []).append(r)
    return groups


# Area of each shape as a fraction of its box (s x s), and how far its centroid
# sits below the box centre, as a fraction of s (a triangle's mass is low).
SHAPE_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}
CENTROID_DROP = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "diamond": 0.0, "cross": 0.0}
# When no sharp template fits clearly (best IoU below CONFIDENT_FIT, or the runner-up
# within CLEAR_MARGIN), the templates are also tried blurred by these amounts (px).
CONFIDENT_FIT, CLEAR_MARGIN = 0.9, 0.08
TEMPLATE_BLURS = (1.0, 1.7)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian, radius ceil(2.5 sigma). Example: ``gaussian_kernel(1.0).sum() -> 1.0``"""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D array (zeros beyond the edge), one axis at a time."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = a.shape
    p = np.pad(a, ((r, r), (0, 0)))
    a = sum(k[i] * p[i:i + h] for i in range(len(k)))  # along y
    p = np.pad(a, ((0, 0), (r, r)))
    return sum(k[i] * p[:, i:i + w] for i in range(len(k)))  # along x


def _template(shape: str, px: np.ndarray, py: np.ndarray, place: tuple[float, float, float], samples: int = 1) -> np.ndarray:
    """Coverage (H, W) of ``shape`` in the box ``place = (cx, cy, side)`` at pixel centres ``px``, ``py``."""
    cx, cy, side = place
    offsets = (np.arange(samples) + 0.5) / samples - 0.5
    xs = (px[:, None] + offsets).ravel()
    ys = (py[:, None] + offsets).ravel()
    inside = inside_shape(shape, ((xs - cx) / (side / 2))[None, :], ((ys - cy) / (side / 2))[:, None])
    if samples == 1:
        return inside  # one test per pixel: a bool mask is its own coverage
    return inside.reshape(len(py), samples, len(px), samples).mean(axis=(1, 3))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    return inter / max(np.count_nonzero(a) + np.count_nonzero(b) - inter, 1)


def shape_scores(mask: np.ndarray) -> dict[str, float]:
    """How well each shape fits a binary object mask: its best IoU with the shape's template.

    Each shape's template is placed in two ways and the better one counts:

    1. in the mask's box (side = max(width, height); when the box is not square,
       for instance a triangle whose soft apex fell below threshold, also flush
       with either end of the long side);
    2. with the mask's *area* (side = sqrt(area / fill), fill = the shape's share
       of its box) at the mask's centroid. Blur and rounded corners shave the
       tips of a diamond or a cross, which shrinks the box, but they hardly
       change the area or the centroid, so this keeps a soft diamond a diamond.

    When no shape fits clearly, the image was probably blurred, so each
    template is also blurred (`TEMPLATE_BLURS`) and cut at 0.5 the way the
    image was: blur rounds a cross's outer corners *and* fills its inner ones,
    and a sharp template cannot show that.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    w, h = x1 - x0, y1 - y0
    side = max(w, h)
    area = len(xs)
    gx, gy = xs.mean() + 0.5, ys.mean() + 0.5  # centroid
    # A window around the mask, big enough for every placement and blur.
    pad = int(np.ceil(side * 0.5)) + 5
    wy0, wy1 = max(y0 - pad, 0), min(y1 + pad, mask.shape[0])
    wx0, wx1 = max(x0 - pad, 0), min(x1 + pad, mask.shape[1])
    window = mask[wy0:wy1, wx0:wx1]
    px = np.arange(wx0, wx1) + 0.5  # pixel centres
    py = np.arange(wy0, wy1) + 0.5
    cx_options = [(x0 + x1) / 2] if w == side else [x0 + side / 2, (x0 + x1) / 2, x1 - side / 2]
    cy_options = [(y0 + y1) / 2] if h == side else [y0 + side / 2, (y0 + y1) / 2, y1 - side / 2]
    places: dict[str, list[tuple[float, float, float]]] = {}  # shape -> [(cx, cy, side), ...]
    for shape in SHAPES:
        fitted = float(np.sqrt(area / SHAPE_FILL[shape]))
        places[shape] = [(cx, cy, float(side)) for cx, cy in itertools.product(cx_options, cy_options)]
        places[shape].append((gx, gy - CENTROID_DROP[shape] * fitted, fitted))

    scores = {s: max(_iou(_template(s, px, py, p) >= 0.5, window) for p in places[s]) for s in SHAPES}
    first, second = sorted(scores.values())[-1:-3:-1]
    if first >= CONFIDENT_FIT and first - second >= CLEAR_MARGIN:
        return scores
    for shape in SHAPES:
        for place in places[shape]:
            cov = _template(shape, px, py, place, samples=2)
            for sigma in TEMPLATE_BLURS:
                scores[shape] = max(scores[shape], _iou(blur(cov, sigma) >= 0.5, window))
    return scores


def detect_objects(image) -> list[DetectedObject]:
    """Find every object in an RGB image: colour, shape, box side and centre, area.

    Steps: resize to 64 x 64 -> label pixels with palette colours
    (`classify_pixels`) -> connected regions per colour -> merge specks and
    colour bleed into the object they touch -> drop objects whose colour is
    off the palette -> for each object, its box
    (centre = box centre, side = max(width, height)) and the shape whose
    template fits best. Two separate blobs of one colour are two objects.
    Sorted left to right (then top to bottom).
    """
    labels, _, off = classify_pixels(to_rgb_array(image))
    regions = connected_components(labels)
    found = []
    for top, members in _merge_fragments(regions, labels).items():
        mask = np.isin(regions, members)
        if np.median(off[mask]) > OFF_PALETTE_OBJECT:
            continue  # a blob of some other colour (grey, black, brown...): not a Shapes object
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        scores = shape_scores(mask)
        found.append(DetectedObject(
            color=COLORS[int(labels[regions == top][0])],
            shape=max(scores, key=scores.get),
            side=float(max(x1 - x0, y1 - y0)),
            cx=(x0 + x1) / 2,
            cy=(y0 + y1) / 2,
            area=int(mask.sum()),
            shape_scores=scores,
        ))
    return sorted(found, key=lambda o: (o.cx, o.cy))


CHECKS = ("count", "color", "shape", "size", "position", "relation")


def _checks(
    desc: Description, n_found: int, assigned: list[DetectedObject | None]
) -> tuple[dict[str, bool | None], int]:
    """Each check for one pairing of ``desc.objects`` with found objects, and how many facts hold.

    A check is None when the caption does not state that attribute.
    """
    pairs = list(zip(desc.objects, assigned))
    color = [o is not None and o.color == p.color for p, o in pairs]
    shape = [o is not None and o.shape == p.shape for p, o in pairs]
    size = [o is not None and o.size == p.size for p, o in pairs if p.size is not None]
    checks: dict[str, bool | None] = {
        "count": n_found == len(desc.objects),
        "color": all(color),
        "shape": all(shape),
        "size": all(size) if size else None,
        "position": None,
        "relation": None,
    }
    if desc.position is not None:
        o = assigned[0]
        checks["position"] = o is not None and o.cell == desc.position
    if desc.relation is not None:
        a, b = assigned
        checks["relation"] = a is not None and b is not None and relation_holds(
            desc.relation, (a.cx, a.cy), (b.cx, b.cy))
    score = sum(color) + sum(shape) + sum(size) + bool(checks["position"]) + bool(checks["relation"])
    return checks, score


def _describe(o: DetectedObject) -> str:
    return f"{article(o.size)} {o.size} {o.color} {o.shape} at ({o.cx:.1f}, {o.cy:.1f})"


def grade(image, caption: str) -> Grade:
    """Does ``image`` show what ``caption`` says? Never raises for a bad caption.

    The image matches when the grader finds exactly as many objects as the
    caption names and every stated attribute holds: colour, shape, size (box
    side vs 23 px), position cell (centre vs 24 / 40 px) and relation (centres
    along the relation's axis). When there are several ways to pair the
    caption's objects with the found ones, the pairing that makes the most
    checks hold is used. A caption outside the grammar gives ``gradable=False``.
    """
    try:
        desc = parse_caption(caption)
    except CaptionError as err:
        return Grade(False, False, f"the prompt is outside the Shapes grammar, so it cannot be graded ({err})",
                     {k: None for k in CHECKS}, [])
    found = detect_objects(image)
    named = desc.objects

    # Pair the caption's objects with found ones (unpaired ones get None) every
    # possible way, and keep the pairing under which the most checks hold.
    best: tuple[dict[str, bool | None], int] | None = None
    best_assigned: list[DetectedObject | None] = []
    k = min(len(named), len(found))
    for order in itertools.permutations(range(len(found)), k):
        assigned = [found[i] for i in order] + [None] * (len(named) - k)
        result = _checks(desc, len(found), assigned)
        if best is None or result[1] > best[1]:
            best, best_assigned = result, assigned
    checks = {name: None if v is None else bool(v) for name, v in best[0].items()}  # plain bools
    match = all(v is not False for v in checks.values())

    # A plain-language reason, one clause per failed check.
    if match:
        reason = "match: found " + "; ".join(_describe(o) for o in found)
        return Grade(True, True, reason, checks, found)
    problems = []
    if not checks["count"]:
        listing = "; ".join(_describe(o) for o in found) or "nothing"
        problems.append(f"count: the caption names {len(named)} object(s), found {len(found)} ({listing})")
    for p, o in zip(named, best_assigned):
        if o is None:
            continue
        if p.color != o.color:
            problems.append(f"color: expected {p.color}, found {o.color}")
        if p.shape != o.shape:
            problems.append(f"shape: expected {p.shape}, found {o.shape}")
        if p.size is not None and p.size != o.size:
            problems.append(f"size: expected {p.size}, found a box side of {o.side:.0f} px ({o.size})")
    if checks["position"] is False and best_assigned[0] is not None:
        o = best_assigned[0]
        problems.append(f"position: expected {POSITION_PHRASES[desc.position]!r}, found centre ({o.cx:.1f}, "
                        f"{o.cy:.1f}), which is {POSITION_PHRASES[o.cell]!r}")
    if checks["relation"] is False and None not in best_assigned:
        problems.append(f"relation: the {named[0].color} {named[0].shape} is not {desc.relation} the "
                        f"{named[1].color} {named[1].shape}")
    return Grade(False, True, "no match: " + "; ".join(problems), checks, found)
