"""The Shapes grader: does an image show what its caption says? Strictly, as a person would judge.

Scope. The last section of ``docs/shapes_dataset.md`` (spec v1), to the letter:

1. **Pixels -> colours.** Every pixel a Shapes object can produce lies on the
   line from white to its palette colour (an anti-aliased edge is a blend), so
   each pixel gets the colour whose line is nearest, when it is at least half
   way there (`classify_pixels`).
2. **Colours -> patches.** The 8-connected regions of one colour
   (`connected_components`). Every patch of `MIN_PATCH` = 20 pixels or more is
   an object, wherever it is: a speck inside another shape is an extra object.
   Smaller patches are too small to see as objects; one that touches an object
   is counted as part of its outline (a blended edge pixel), else ignored.
3. **Patch -> shape.** Each shape's template is placed at the patch's own
   centre and bounding-box size, then nudged to fit best, blurred as much as
   the patch's own edges are soft (`fit_shape`). A shape is *recognised* only
   when its template explains the patch almost everywhere: little mass left
   unexplained (`MAX_MISFIT` of the template's area), no clump of it anywhere
   (`MAX_CLUMP`: a rounded corner, a pinched arm, a teardrop's tip), and a
   clear margin over every other shape (`recognise`). Anything else is
   *unrecognised*, and a caption naming a shape does not match it.
4. **Patches -> verdict.** `grade` pairs the caption's objects with the found
   ones and checks count, colour, shape, size (fitted box side vs 23 px),
   position cell (centre vs 24 / 40 px) and relation (centres along the
   relation's axis). What failed comes back as data (`Failure`), and as one
   plain sentence.
5. **What failed, by check.** `failure_reasons` gives one grade's failed checks
   with their explanations, `failure_counts` how often each check fails among
   many grades; both read `Grade.checks` and `Grade.failures`, never the sentence.

Why so strict. A grader that accepts a rounded square as a square, or a
four-pointed star as a cross, scores a model for drawing blobs. This one is
checked (``tests/test_grader.py``) both ways: it reads clean, noisy, blurred,
half-resolution and JPEG renders, and it rejects a bank of near misses, each on
the right attribute.

Does not handle: overlapping or touching objects of one colour (one patch),
rotated shapes, outlines, textures, or backgrounds that are not near white.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from .shapes import (
    COLORS,
    IMAGE_SIZE,
    PALETTE,
    POSITION_HIGH,
    POSITION_LOW,
    POSITION_PHRASES,
    RELATION_AXIS,
    SHAPES,
    SIZE_THRESHOLD,
    CaptionError,
    Description,
    article,
    inside_shape,
    parse_caption,
)

# ---------------------------------------------------------------------------
# 1. Pixels -> colours
# ---------------------------------------------------------------------------

MIN_ALPHA = 0.5  # a pixel belongs to a colour when it is at least half way from white to it
OFF_PALETTE = 0.35  # ... and lies within 0.35 x its distance from white of that white->colour line
OFF_PALETTE_OBJECT = 0.2  # a patch whose median pixel is further off than this is not a palette colour
#                           (plain grey is 0.31 off green's line; JPEG or a decoder shifts single pixels more)

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (K, 3)
_TOWARDS = _PALETTE_RGB - 255.0  # (K, 3): from white to each colour
_TOWARDS_SQ = (_TOWARDS ** 2).sum(axis=1)  # (K,)


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

    Each pixel is projected onto the six lines from white to a palette colour:
    ``alpha`` says how far along, the residual how far off. It gets the colour
    whose line is nearest, if it is at least `MIN_ALPHA` of the way there and
    not too far off the line (grey, black and other off-palette pixels count
    as background). This reads anti-aliased edges right: a half-covered orange
    pixel is nearer yellow than orange, but it lies on the orange line.

    With ``d = pixel - white`` and ``t = colour - white``:
    ``alpha = max(d.t / |t|^2, 0)`` and ``residual^2 = |d|^2 - 2 alpha d.t + alpha^2 |t|^2``.

    Returns ``(labels, alpha, off)``: int (H, W) in -1..5, and float (H, W)
    each: how far along and how far off (as a fraction of the distance from
    white) the nearest line each pixel is (both 0 for pixels too near white
    to be half way to any colour: those are skipped).
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


# ---------------------------------------------------------------------------
# 2. Colours -> patches
# ---------------------------------------------------------------------------

MIN_PATCH = 20  # the spec: any patch of 20 px or more is an object (the smallest legal shape,
#                 a small triangle of side 16, covers 128 px)


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


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 8 neighbours (a 3 x 3 dilation)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])


def find_patches(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The objects of a label image: ``[(colour index, mask), ...]``, one per patch of `MIN_PATCH`+ pixels.

    A smaller patch that touches an object joins the outline of the largest
    one it touches (a blended edge pixel read as a neighbouring colour);
    an isolated one is ignored.
    """
    regions = connected_components(labels)
    areas = np.bincount(regions.ravel())
    big = [r for r in range(1, len(areas)) if areas[r] >= MIN_PATCH]
    masks = {r: regions == r for r in big}
    for r in range(1, len(areas)):
        if areas[r] >= MIN_PATCH:
            continue
        touching = [b for b in big if (masks[b] & _grow(regions == r)).any()]
        if touching:
            owner = max(touching, key=lambda b: areas[b])
            masks[owner] = masks[owner] | (regions == r)
    return [(int(labels[regions == r][0]), masks[r]) for r in big]


# ---------------------------------------------------------------------------
# 3. Patch -> shape
# ---------------------------------------------------------------------------

# The fit compares the patch's *soft* mask (how far each pixel is from white towards the
# patch's colour, 0..1) with the template's coverage, blurred by one of BLURS: an image may
# be soft all over (blur, a decoder, half resolution), and then a 90-degree corner is soft
# too, by an amount its straight edges reveal. A rounded corner on crisp edges is not blur.
BLURS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)  # px (Gaussian sigma); beyond 1.4
#                                                                      a small diamond is a blob to the eye
SLACK = 0.15  # per-pixel disagreement below this is noise (noise sigma 10 in RGB is ~0.04 here)
MAX_MISFIT = 0.012  # recognised: unexplained mass <= 1.2% of the template's area ...
MAX_CLUMP = 1.0  # ... and no 3 x 3 window holding more than 1 px of it (a rounded corner, a tip, a bulge)
MIN_MARGIN = 0.05  # ... and every other shape's fit error at least this much higher (noise adds the same to all)
SAMPLES = 4  # template coverage: 4 x 4 points per pixel
NUDGES = (0.5, 0.25, 0.125)  # the fit moves the centre and the side by these steps (px)
PAD = 4  # the fit's window: the patch's box and this many pixels around it
MAX_SIDE = 40.0  # the spec's largest shape is 30 px: a patch fitted much larger (a canvas of one colour) is no shape
SHAPE_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}  # area / side²


@dataclass(frozen=True)
class ShapeFit:
    """How well one shape's template explains a patch, at its best placement and blur."""

    shape: str
    cx: float  # fitted box centre and side, pixels
    cy: float
    side: float
    blur: float  # the fitted Gaussian sigma, px
    error: float  # the fit's objective, Σ |soft - blur(coverage)|, / template area
    misfit: float  # unexplained mass (beyond SLACK per pixel) / template area
    clump: float  # most unexplained mass in any 3 x 3 window, px

    @property
    def acceptable(self) -> bool:
        return self.misfit <= MAX_MISFIT and self.clump <= MAX_CLUMP


def template_samples(shape: str, place: tuple[float, float, float], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Which of `SAMPLES` x `SAMPLES` points per pixel (centres ``px``, ``py``) lie inside ``shape`` in box
    ``(cx, cy, side)``: float (H·n, W·n) of 0 and 1."""
    cx, cy, side = place
    offsets = (np.arange(SAMPLES) + 0.5) / SAMPLES - 0.5
    xs = (px[:, None] + offsets).ravel()  # (W·n,)
    ys = (py[:, None] + offsets).ravel()  # (H·n,)
    return inside_shape(shape, ((xs - cx) / (side / 2))[None, :], ((ys - cy) / (side / 2))[:, None]).astype(np.float32)


def template_coverage(shape: str, place: tuple[float, float, float], px: np.ndarray, py: np.ndarray,
                      blur: float = 0.0) -> np.ndarray:
    """The fraction of each pixel (centres ``px``, ``py``) that ``shape`` in box ``(cx, cy, side)``
    covers, then blurred by a Gaussian of sigma ``blur`` px: float (H, W).

    Averaging each pixel's samples and blurring are both linear, so together they are one
    matrix on each side: ``(K_y A_y) @ samples @ (K_x A_x)^T`` (`blur_average`).
    """
    inside = template_samples(shape, place, px, py)
    return blur_average(len(py), blur) @ inside @ blur_average(len(px), blur).T


@functools.lru_cache(maxsize=512)
def blur_average(n: int, sigma: float) -> np.ndarray:
    """(n, n·SAMPLES): average each pixel's SAMPLES entries, then blur along the axis (zeros beyond the edge)."""
    average = np.kron(np.eye(n, dtype=np.float32), np.full((1, SAMPLES), 1 / SAMPLES, dtype=np.float32))
    if sigma == 0:
        return average
    radius = np.ceil(2.5 * sigma)
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-d ** 2 / (2 * sigma ** 2)) * (np.abs(d) <= radius)
    t = np.arange(-radius, radius + 1)
    k = (k / np.exp(-t ** 2 / (2 * sigma ** 2)).sum()).astype(np.float32)
    return k @ average


def _box_sum3(a: np.ndarray) -> np.ndarray:
    """The sum of every 3 x 3 window (zeros beyond the edge)."""
    p = np.pad(a, 1)
    h, w = a.shape
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def fit_shape(soft: np.ndarray, mask: np.ndarray, shape: str, others: np.ndarray | None = None,
              nudge: bool = True) -> ShapeFit:
    """Place ``shape``'s template on a patch: at the patch's box centre and size, nudged to fit best.

    ``soft``: float (H, W) in [0, 1], how much of the patch's colour each
    pixel holds; ``mask``: the patch's pixels; ``others``: pixels of other
    patches, left out of the comparison (a speck inside is its own object,
    counted as such, not a hole in this one). The fit minimises
    ``Σ |soft - blur(coverage)|`` over the box centre, the side (a pattern
    search: each moved by ±0.5, then ±0.25, then ±0.125 px while that helps)
    and the blur (one of `BLURS`). What it cannot explain, beyond `SLACK` per
    pixel, is the misfit. ``nudge=False``: the better starting box as it is, with its best blur.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # Two starting boxes: the patch's own, and the side its area implies (blur shaves a
    # diamond's tips off its box, not its area); the better one is nudged.
    starts = [[(x0 + x1) / 2, (y0 + y1) / 2, float(max(x1 - x0, y1 - y0))],  # cx, cy, side
              [(x0 + x1) / 2, (y0 + y1) / 2, float(np.sqrt(len(xs) / SHAPE_FILL[shape]))]]
    # The window: the patch's box and PAD pixels around it, the canvas padded with zeros.
    window = np.pad(soft.astype(np.float32), PAD)[y0:y1 + 2 * PAD, x0:x1 + 2 * PAD]
    canvas = np.pad(np.ones(soft.shape, np.float32), PAD)[y0:y1 + 2 * PAD, x0:x1 + 2 * PAD]
    weight = canvas.copy()
    if others is not None:
        weight *= ~np.pad(others, PAD)[y0:y1 + 2 * PAD, x0:x1 + 2 * PAD]
    spills = bool((canvas == 0).any())  # the window reaches beyond the canvas
    px, py = np.arange(x0 - PAD, x1 + PAD) + 0.5, np.arange(y0 - PAD, y1 + PAD) + 0.5  # pixel centres
    beyond = np.kron(1 - canvas, np.ones((SAMPLES, SAMPLES), np.float32))  # (H·n, W·n): samples off the canvas

    def blurred(inside: np.ndarray, b: float) -> np.ndarray:  # (H, W): coverage, blurred by b
        return blur_average(len(py), b) @ inside @ blur_average(len(px), b).T

    def residual(p, b) -> np.ndarray:
        """What the template at place ``p`` and blur ``b`` leaves unexplained, per pixel.

        On the canvas: |soft - blurred coverage|. Beyond it nothing can be seen, not even
        blur, so there only the sharp template counts: a shape that spills over the border
        is cut, and pays for every pixel it spills.
        """
        inside = template_samples(shape, p, px, py)
        out = weight * np.abs(window - blurred(inside, b))
        if spills:
            out += (1 - canvas) * blurred(inside, 0.0)
        return out

    def cost(p, blurs) -> tuple[float, float]:  # Σ residual for the best of ``blurs``; the spill from the samples
        inside = template_samples(shape, p, px, py)
        spill = float((inside * beyond).sum()) / SAMPLES ** 2 if spills else 0.0
        return min((float((weight * np.abs(window - blurred(inside, b))).sum()) + spill, b) for b in blurs)

    def nearby(blur: float) -> tuple[float, ...]:  # the blur found so far and its neighbours in BLURS
        i = BLURS.index(blur)
        return BLURS[max(i - 1, 0):i + 2]

    (best, blur), place = min((cost(p, BLURS), p) for p in starts)
    for step in NUDGES if nudge else ():
        # moves of the centre, of the side, and of one edge at a time (centre by step/2, side by step)
        moves = [(sign * step * a, sign * step * b, sign * step * c) for sign in (1, -1)
                 for a, b, c in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0, 1), (-0.5, 0, 1), (0, 0.5, 1), (0, -0.5, 1))]
        improved = True
        while improved:
            improved = False
            for move in moves:
                trial = [p + m for p, m in zip(place, move)]
                trial[2] = max(trial[2], 1.0)
                c, b = cost(trial, nearby(blur))
                if c < best - 1e-6:
                    best, blur, place, improved = c, b, trial, True
    unexplained = np.maximum(residual(place, blur) - SLACK, 0.0)
    area = max(float(template_coverage(shape, tuple(place), px, py).sum()), 1.0)
    return ShapeFit(shape, float(place[0]), float(place[1]), float(place[2]), blur, error=best / area,
                    misfit=float(unexplained.sum()) / area, clump=float(_box_sum3(unexplained).max()))


def recognise(soft: np.ndarray, mask: np.ndarray, others: np.ndarray | None = None) -> tuple[str | None, dict[str, ShapeFit]]:
    """The shape a patch is, or None when no shape fits well and clearly; and every shape's fit.

    Every shape is first tried at the patch's own box; the two that fit best there are then
    nudged into place (the others are far off, and nudging cannot bring them near).
    """
    fits = {s: fit_shape(soft, mask, s, others, nudge=False) for s in SHAPES}
    for shape in sorted(fits, key=lambda s: fits[s].error)[:2]:
        fits[shape] = fit_shape(soft, mask, shape, others)
    ranked = sorted(fits.values(), key=lambda f: f.error)
    best, runner_up = ranked[0], ranked[1]
    if best.acceptable and runner_up.error - best.error >= MIN_MARGIN and best.side <= MAX_SIDE:
        return best.shape, fits
    return None, fits


# ---------------------------------------------------------------------------
# 4. Objects and the verdict
# ---------------------------------------------------------------------------

CHECKS = ("count", "color", "shape", "size", "position", "relation")


@dataclass
class DetectedObject:
    """An object the grader found.

    ``shape`` is None when no template fits it well (a blob, a rounded square);
    ``nearest`` is then the shape whose template came closest. ``cx, cy, side``
    are the fitted box of ``shape`` (or of ``nearest``).
    """

    color: str
    shape: str | None
    nearest: str
    side: float
    cx: float
    cy: float
    area: int  # number of pixels
    fits: dict[str, ShapeFit] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> str:
        return size_of(self.side)

    @property
    def cell(self) -> tuple[int, int]:
        return position_cell(self.cx, self.cy)

    def describe(self) -> str:
        """Example: ``"a small red circle at (16.0, 30.5)"``, or ``"a large blue unrecognised shape (nearest: square) at ..."``."""
        what = self.shape or f"unrecognised shape (nearest: {self.nearest})"
        return f"{article(self.size)} {self.size} {self.color} {what} at ({self.cx:.1f}, {self.cy:.1f})"


@dataclass(frozen=True)
class Failure:
    """One check that failed: what the caption says, and what the image shows instead."""

    check: str  # one of CHECKS
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.check}: expected {self.expected}, found {self.found}"


@dataclass
class Grade:
    """Whether an image shows its caption. ``checks[attr]`` is None when the caption does not state it."""

    match: bool
    gradable: bool
    reason: str
    checks: dict[str, bool | None]
    found: list[DetectedObject]
    failures: list[Failure] = field(default_factory=list)


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


def soft_mask(rgb: np.ndarray, color: int) -> np.ndarray:
    """How much of palette colour ``color`` each pixel holds, 0..1: its ``alpha`` on the white->colour line."""
    alpha = (rgb.reshape(-1, 3) - 255.0) @ _TOWARDS[color] / _TOWARDS_SQ[color]
    return np.clip(alpha.reshape(rgb.shape[:2]), 0.0, 1.0)


def detect_objects(image) -> list[DetectedObject]:
    """Find every object in an RGB image: colour, shape (or None), fitted box, area.

    Steps: resize to 64 x 64 -> label pixels with palette colours
    (`classify_pixels`) -> patches (`find_patches`) -> drop patches whose
    colour is off the palette -> fit every shape's template (`recognise`).
    Sorted left to right (then top to bottom).
    """
    rgb = to_rgb_array(image)
    labels, _, off = classify_pixels(rgb)
    patches = find_patches(labels)
    taken = np.zeros(labels.shape, dtype=bool)
    for _, mask in patches:
        taken |= mask
    found = []
    for color, mask in patches:
        if np.median(off[mask]) > OFF_PALETTE_OBJECT:
            continue  # a patch of some other colour (grey, brown...): not a Shapes object
        shape, fits = recognise(soft_mask(rgb, color), mask, _grow(taken & ~mask) & ~mask)  # with their soft rims
        nearest = min(fits.values(), key=lambda f: f.error)
        fit = fits[shape] if shape else nearest
        found.append(DetectedObject(COLORS[color], shape, nearest.shape, fit.side, fit.cx, fit.cy,
                                    int(mask.sum()), fits))
    return sorted(found, key=lambda o: (o.cx, o.cy))


def _failures(desc: Description, found: list[DetectedObject], assigned: list[DetectedObject | None]) -> list[Failure]:
    """Every failed check for one pairing of the caption's objects with found ones (None = unpaired)."""
    out = []
    if len(found) != len(desc.objects):
        listing = "; ".join(o.describe() for o in found) or "nothing"
        out.append(Failure("count", f"{len(desc.objects)} object(s)", f"{len(found)} ({listing})"))
    for p, o in zip(desc.objects, assigned):
        if o is None:
            continue
        if p.color != o.color:
            out.append(Failure("color", p.color, o.color))
        if p.shape != o.shape:
            out.append(Failure("shape", p.shape, o.shape or f"an unrecognised shape (nearest: {o.nearest})"))
        if p.size is not None and p.size != o.size:
            out.append(Failure("size", p.size, f"a box side of {o.side:.1f} px ({o.size})"))
    if desc.position is not None and assigned[0] is not None:
        o = assigned[0]
        if o.cell != desc.position:
            out.append(Failure("position", repr(POSITION_PHRASES[desc.position]),
                               f"centre ({o.cx:.1f}, {o.cy:.1f}), which is {POSITION_PHRASES[o.cell]!r}"))
    if desc.relation is not None and None not in assigned:
        a, b = assigned
        if not relation_holds(desc.relation, (a.cx, a.cy), (b.cx, b.cy)):
            first, second = desc.objects
            out.append(Failure("relation", f"the {first.color} {first.shape} {desc.relation} the "
                               f"{second.color} {second.shape}", f"centres ({a.cx:.1f}, {a.cy:.1f}) and "
                               f"({b.cx:.1f}, {b.cy:.1f})"))
    return out


def _checks(desc: Description, failures: list[Failure], paired: int) -> dict[str, bool | None]:
    """Each check's outcome: None where the caption states nothing, False where a failure names it."""
    failed = {f.check for f in failures}
    stated = {
        "count": True, "color": True, "shape": True,
        "size": any(p.size is not None for p in desc.objects),
        "position": desc.position is not None,
        "relation": desc.relation is not None,
    }
    checks: dict[str, bool | None] = {}
    for name in CHECKS:
        if not stated[name]:
            checks[name] = None
        elif name in failed:
            checks[name] = False
        else:
            checks[name] = True
    if paired < len(desc.objects):  # an object with nothing paired to it cannot pass its own checks
        for name in ("color", "shape", "position", "relation"):
            if checks[name] is True:
                checks[name] = False
        if checks["size"] is True and any(p.size is not None for p in desc.objects[paired:]):
            checks["size"] = False
    return checks


def grade(image, caption: str) -> Grade:
    """Does ``image`` show what ``caption`` says? Never raises for a bad caption.

    The image matches when the grader finds exactly as many objects as the
    caption names, every one with a recognised shape, and every stated
    attribute holds. When there are several ways to pair the caption's
    objects with the found ones, the pairing that fails the fewest checks is
    used. A caption outside the grammar gives ``gradable=False``.
    """
    try:
        desc = parse_caption(caption)
    except CaptionError as err:
        return Grade(False, False, f"the prompt is outside the Shapes grammar, so it cannot be graded ({err})",
                     {k: None for k in CHECKS}, [])
    found = detect_objects(image)
    named = desc.objects
    k = min(len(named), len(found))
    best: list[Failure] | None = None
    for order in itertools.permutations(range(len(found)), k):
        assigned = [found[i] for i in order] + [None] * (len(named) - k)
        failures = _failures(desc, found, assigned)
        if best is None or len(failures) < len(best):
            best = failures
    assert best is not None
    checks = _checks(desc, best, k)
    match = not best and all(v is not False for v in checks.values())
    if match:
        return Grade(True, True, "match: found " + "; ".join(o.describe() for o in found), checks, found)
    return Grade(False, True, "no match: " + "; ".join(map(str, best)), checks, found, best)


# ---------------------------------------------------------------------------
# 5. What failed, by check
# ---------------------------------------------------------------------------

NO_OBJECT = "no object found to check it"  # a colour, shape, ... check that failed because an object is missing


def failure_reasons(grade: Grade) -> dict[str, str]:
    """The failed checks of ``grade``, each with its own explanation, from ``grade.failures``.

    Example: a grade that failed on colour and size ->
    ``{"color": "expected red, found orange", "size": "expected large, found a box side of 18 px (small)"}``.
    Two failures of one check (two objects) are joined by "; ". A check that failed
    because the caption's object was not found at all gets ``NO_OBJECT``.
    A match, or a caption that cannot be graded, gives ``{}``.
    """
    return {name: "; ".join(texts) for name, texts in failure_reason_lists(grade).items()}


def failure_reason_lists(grade: Grade) -> dict[str, list[str]]:
    """``failure_reasons`` with one explanation per failure (per object), not joined: ``{check: [text, ...]}``."""
    if grade.match or not grade.gradable:
        return {}
    out: dict[str, list[str]] = {}
    for failure in grade.failures:
        out.setdefault(failure.check, []).append(f"expected {failure.expected}, found {failure.found}")
    for name, ok in grade.checks.items():  # a failed check with no failure of its own: its object was not found
        if ok is False and name not in out:
            out[name] = [NO_OBJECT]
    return out


def failure_counts(grades: list[Grade]) -> dict[str, int]:
    """How many of the (gradable) ``grades`` fail each check of ``CHECKS``, most frequent first.

    An image can fail several checks at once. Example: grades with checks
    {color: False, shape: True, ...} and {color: False, shape: False, ...} ->
    {"color": 2, "shape": 1, "count": 0, ...}.
    """
    counts = {name: sum(g.gradable and g.checks[name] is False for g in grades) for name in CHECKS}
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
