"""What the lessons' pictures share: the grader's verdict under an image, its colours, a plain grid of images.

Lessons 2 to 5 grade images with :func:`dalle_mini_impl.grader.grade` and draw
the verdict the same way: ✓ in green when the image shows its caption, ✗ in
red (followed by the checks that failed, when the grade names them) when it
does not, ? in grey when the caption is outside the Shapes grammar and cannot
be graded. ``verdict`` says what to write and in which colour; ``frame`` gives
an image a thin grey edge (white Shapes images vanish on a white page);
``show_images`` is the plain grid any lesson can call.

Every drawing function of the ``viz_*`` modules returns ``(fig, ax)`` or
``(fig, axes)``: a lesson calls it once for the static picture (seen on GitHub
and compared by nbval) and :mod:`dalle_mini_impl.widgets` calls it again with
new arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .images import to_uint8_images

GOOD, BAD = "#15803d", "#dc2626"  # green ✓ and red ✗ under graded images
UNGRADABLE = "#64748b"  # grey "?" under an image whose prompt is outside the Shapes grammar
EDGE = "#cbd5e1"  # the thin frame around an image


def verdict(grade) -> tuple[str, str]:
    """What to write under a graded image, and in which colour.

    ``grade``: a :class:`dalle_mini_impl.grader.Grade`, a bool, or None (not graded: nothing is written).
    Example: a Grade whose shape and size checks failed -> ``("✗ shape, size", "#dc2626")``;
    True -> ``("✓", "#15803d")``; an ungradable prompt -> ``("?", "#64748b")``.
    """
    if grade is None:
        return "", UNGRADABLE
    if isinstance(grade, (bool, np.bool_)):
        return ("✓", GOOD) if grade else ("✗", BAD)
    if not grade.gradable:
        return "?", UNGRADABLE
    if grade.match:
        return "✓", GOOD
    failed = [name for name, ok in grade.checks.items() if ok is False]
    return ("✗ " + ", ".join(failed)).rstrip(), BAD


def frame(ax: plt.Axes) -> None:
    """No ticks, a thin grey frame: white Shapes images need an edge to be seen."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(EDGE)


def show_images(images, titles: Sequence[str] | None = None, cols: int = 8, scale: float = 1.4,
                suptitle: str | None = None):
    """A grid of images (uint8 ``[N, H, W, 3]`` or float ``[N, 3, H, W]`` in [0, 1]). Returns ``(fig, axes)``."""
    arr = to_uint8_images(images)  # (N, H, W, 3)
    n = len(arr)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * (scale + (0.35 if titles else 0))),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, wrap=True)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig, axes
