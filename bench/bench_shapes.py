"""How fast the Shapes renderer and grader run, side by side with a naive baseline.

Run: ``python bench/bench_shapes.py`` (about 20 s). Single-threaded, so the
figures are per core. Prints images per second for:

- `render_batch` vs a naive renderer that supersamples the *whole* canvas for
  every object (the same 16 samples per pixel, the same pictures);
- `grade` vs the same grader with a textbook pixel-by-pixel flood fill in place
  of the run-based connected-components labelling.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: no threaded BLAS under numpy
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
from collections import deque  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402

from dalle_mini_impl import grader, shapes  # noqa: E402


def naive_render(scene: shapes.Scene) -> np.ndarray:
    """The same picture, but every object tests all 64 x 64 x 16 sample points of the canvas."""
    canvas = np.full((shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), 255.0)
    ox, oy = shapes.sample_offsets()
    pixels = np.arange(shapes.IMAGE_SIZE)
    for obj in scene.objects:
        half = obj.side / 2
        u = (pixels[None, :, None] + ox - obj.cx) / half  # (1, 64, n)
        v = (pixels[:, None, None] + oy - obj.cy) / half  # (64, 1, n)
        cov = shapes.inside_shape(obj.shape, u, v).mean(axis=-1)  # (64, 64)
        canvas += cov[..., None] * (np.asarray(shapes.PALETTE[obj.color], float) - canvas)
    return np.rint(canvas).astype(np.uint8)


def flood_fill_components(labels: np.ndarray) -> np.ndarray:
    """Textbook labelling: visit every pixel, flood each new region breadth-first (8-connected)."""
    h, w = labels.shape
    out = np.zeros((h, w), dtype=np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if labels[y, x] < 0 or out[y, x]:
                continue
            n += 1
            out[y, x] = n
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = cy + dy, cx + dx
                        if 0 <= yy < h and 0 <= xx < w and not out[yy, xx] and labels[yy, xx] == labels[cy, cx]:
                            out[yy, xx] = n
                            queue.append((yy, xx))
    return out


@contextmanager
def labelling(fn):
    """Temporarily swap the grader's connected-components function."""
    original = grader.connected_components
    grader.connected_components = fn
    try:
        yield
    finally:
        grader.connected_components = original


def rate(fn, n_items: int, repeats: int = 3) -> float:
    """Items per second, best of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def main() -> None:
    scenes = shapes.make_scenes("train", 2000, seed=0)
    fast = rate(lambda: shapes.render_batch(scenes), len(scenes))
    few = scenes[:300]
    naive = rate(lambda: [naive_render(s) for s in few], len(few))
    same = all((naive_render(s) == shapes.render(s)).all() for s in few[:50])

    images = shapes.render_batch(few)
    captions = [s.caption for s in few]

    def grade_all() -> None:
        for image, caption in zip(images, captions):
            grader.grade(image, caption)

    graded = rate(grade_all, len(few))
    with labelling(flood_fill_components):
        graded_naive = rate(grade_all, len(few), repeats=1)

    print("Shapes benchmark (one core)")
    print(f"  render_batch          {fast:9.0f} images/s  ({fast * 60:,.0f} / min; target >= 20,000 / min)")
    print(f"  naive full-canvas     {naive:9.0f} images/s  -> render_batch is {fast / naive:.1f}x faster"
          f" (identical pictures: {same})")
    print(f"  grade                 {graded:9.0f} images/s  ({1000 / graded:.2f} ms per image)")
    print(f"  grade with flood fill {graded_naive:9.0f} images/s  -> run-based labelling is "
          f"{graded / graded_naive:.1f}x faster")


if __name__ == "__main__":
    main()
