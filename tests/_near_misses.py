"""Test images: mixed scenes of every split, and near misses (shapes a person would not name without hesitation).

Each maker takes box coordinates ``u, v`` in [-1, 1] (as `shapes.inside_shape`)
and a parameter, and says which points are inside. `draw` paints one on a
white canvas with 8 x 8 supersampled anti-aliasing, flat colour inside.
Independent of the grader: only the palette and the canvas come from the package.
"""

from __future__ import annotations

import numpy as np

from dalle_mini_impl import shapes as S


def rounded_square(u, v, r):
    """A square whose corners are quarter circles of radius ``r`` (as a fraction of the half side)."""
    du, dv = np.maximum(np.abs(u) - (1 - r), 0), np.maximum(np.abs(v) - (1 - r), 0)
    return (np.abs(u) <= 1) & (np.abs(v) <= 1) & (du ** 2 + dv ** 2 <= r ** 2)


def rounded_diamond(u, v, r):
    """A diamond with its tips rounded: the points within ``r`` of a diamond shrunk by ``r·√2``."""
    inner = 1 - r * np.sqrt(2)
    # distance from (u, v) to the shrunk diamond |u| + |v| <= inner, in the first quadrant
    a, b = np.abs(u), np.abs(v)
    excess = (a + b - inner) / np.sqrt(2)
    # beyond a tip, the nearest point of the shrunk diamond is the tip itself
    tip_u = np.hypot(a - inner, b) * (a - inner > b)
    tip_v = np.hypot(a, b - inner) * (b - inner > a)
    dist = np.where(a - inner > b, tip_u, np.where(b - inner > a, tip_v, np.maximum(excess, 0)))
    return dist <= r


def star(u, v, k):
    """A four-pointed star with tips at the box's edge midpoints, its inner corners at (±k, ±k)."""
    a, b = np.abs(u), np.abs(v)
    # inside the quadrant's two triangles (0,0)-(1,0)-(k,k) and (0,0)-(0,1)-(k,k)
    below = a >= b
    # edge from (1, 0) to (k, k): points on the origin side of it
    e1 = (k - 1) * b - k * (a - 1)  # > 0 on the origin side
    e2 = (k - 1) * a - k * (b - 1)
    return np.where(below, e1 * np.sign(k - 1 + 1e-9) <= 0, e2 * np.sign(k - 1 + 1e-9) <= 0) & (a <= 1) & (b <= 1)


def pinched_cross(u, v, r):
    """A cross whose inner corners are filled with fillets of radius ``r`` and arm ends tapered by ``r``."""
    a, b = np.abs(u), np.abs(v)
    bar = 1 / 3
    cross = (a <= 1) & (b <= 1) & ((a <= bar) | (b <= bar))
    # fillet: the region near an inner corner (bar, bar) outside a circle centred at (bar + r, bar + r)
    fillet = (a >= bar) & (b >= bar) & (a <= bar + r) & (b <= bar + r) & (
        (a - bar - r) ** 2 + (b - bar - r) ** 2 >= r ** 2)
    # taper: arm ends lose a triangle at each outer corner
    taper = ((a > 1 - r) & (b > bar - (a - (1 - r)))) | ((b > 1 - r) & (a > bar - (b - (1 - r))))
    return (cross | fillet) & ~taper


def teardrop(u, v, k):
    """A disc of radius 0.7 at the box's lower part with a point reaching the top edge (``k``: how sharp)."""
    r = 0.7
    cy = 1 - r
    disc = u ** 2 + (v - cy) ** 2 <= r ** 2
    # the tangent cone from the tip (0, -1) to the disc, shrunk sideways by k
    d = cy + 1  # tip to centre
    half_angle = np.arcsin(r / d)
    cone = (v >= -1) & (v <= cy) & (np.abs(u) <= (v + 1) * np.tan(half_angle) * k)
    return disc | cone


def draw(maker, param, side: float, cx: float, cy: float, color: str, canvas: np.ndarray | None = None) -> np.ndarray:
    """Paint ``maker(u, v, param)`` in box ``(cx, cy, side)`` onto a white 64 x 64 canvas (uint8 RGB)."""
    if canvas is None:
        canvas = np.full((64, 64, 3), 255, np.uint8)
    n = 8
    offs = (np.arange(n) + 0.5) / n
    px = (np.arange(64)[:, None] + offs).ravel()  # (64·n,)
    u = (px[None, :] - cx) / (side / 2)
    v = (px[:, None] - cy) / (side / 2)
    inside = maker(u, v, param)
    cov = inside.reshape(64, n, 64, n).mean(axis=(1, 3))[..., None]  # (64, 64, 1)
    out = canvas.astype(np.float32)
    out += cov * (np.array(S.PALETTE[color], np.float32) - out)
    return np.rint(out).astype(np.uint8)


def mixed_scenes(n: int, seed: int) -> list[S.Scene]:
    """``n`` scenes cycling through every split and through one and two objects."""
    scenes = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scenes.append(S.sample_scene(rng, S.SPLITS[i % 4], n_objects=1 + (i // 4) % 2))
    return scenes
