"""The Shapes dataset: a renderer, a caption grammar and seeded splits (the grader is ``grader.py``).

Every model in the course trains on small pictures of coloured shapes with a
caption that describes them, such as ``"a large red circle in the top left"``
or ``"a small green square to the left of a large purple cross"``. Because we
draw the pictures ourselves, we also know exactly what every caption means in
pixels, so a generated image can be *graded*: does it show what was asked?

This module follows ``docs/shapes_dataset.md`` (spec v1) to the letter. It
reads top to bottom in four parts:

1. **The spec as constants**: palette, shapes, sizes, grid, relations, splits.
2. **Scenes**: what is in a picture (`ShapeObject`, `Scene`) and how a random
   scene is sampled (`sample_scene`, `make_scenes`, `scene_for_caption`).
3. **Rendering**: a scene -> a 64 x 64 RGB image (`render`, `render_batch`),
   and `ShapesDataset`, the torch dataset the models train on.
4. **Captions**: the grammar both ways (`format_caption`, `parse_caption`).

Grading, the spec's last section, is ``grader.py``: it finds the objects in
any image and checks them against a caption.

Coordinates. ``x`` grows to the right and ``y`` grows *downwards*, as in an
image array ``image[y, x]``. Pixel ``(row i, column j)`` covers the square
``[j, j + 1) x [i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)`` and the
canvas centre is ``(32.0, 32.0)``. An object of side ``s`` centred at
``(cx, cy)`` fills the box ``[cx - s/2, cx + s/2] x [cy - s/2, cy + s/2]``.

Choices the spec leaves open (all module constants below): the probability of
a two-object scene (`P_TWO_OBJECTS`), of stating a size (`P_STATE_SIZE`) or a
position (`P_STATE_POSITION`), a minimum gap between two objects' boxes
(`MIN_BOX_GAP`) and the anti-aliasing (`SUPERSAMPLE`).

Does not handle:
- overlapping or touching objects (the spec never draws them),
- more than two objects in a caption, or colours and shapes outside the spec,
- captions with capitals, punctuation, synonyms or extra spaces:
  `parse_caption` is strict and its error says how to fix the caption,
- rotated shapes, outlines, textures, or backgrounds that are not near white.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# The dVAE never reads a caption, so it may train on images of all 30 pairs (the spec's
# `images_all` source); the transformer and CLIP never see a held-out pair.
IMAGES_ALL = "images_all"
_STREAMS: tuple[str, ...] = SPLITS + (IMAGES_ALL,)  # scene_rng's stream index; SPLITS keep theirs

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
    """The (colour, shape) pairs a split may use: 5 for ``compositional``, all 30 for
    ``images_all``, the other 25 otherwise.

    Example: ``pairs_for_split("compositional")[0] -> ("orange", "diamond")``
    """
    _check_split(split)
    every = [(c, s) for c in COLORS for s in SHAPES]
    if split == IMAGES_ALL:
        return tuple(every)
    if split == "compositional":
        return tuple(p for p in every if p in HELD_OUT_PAIRS)
    return tuple(p for p in every if p not in HELD_OUT_PAIRS)


def _check_split(split: str) -> None:
    if split not in _STREAMS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(_STREAMS)}")


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
    return np.random.default_rng([seed, _STREAMS.index(split), index])


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
