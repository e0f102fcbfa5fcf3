"""Lesson 5's pictures (``notebooks/05_capstone.ipynb``): the whole pipeline, evaluated, and what breaks.

``plot_evaluation`` draws the reports of ``evaluate.evaluate_splits`` side by
side (a random candidate, CLIP's top-1 and any of the top K, per row), and
``draw_failure_gallery`` one row of examples per check that fails, with the
grader's own explanation (``grader.failure_counts`` and
``grader.failure_reason_lists``). The prompt playground draws with lesson 4's
``viz_clip.draw_generation``. Each returns ``(fig, axes)``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .grader import NO_OBJECT, failure_counts, failure_reason_lists
from .images import to_uint8_images
from .viz_common import BAD, frame

EVALUATION_COLORS = {"random": "#94a3b8", "top1": "#1d4ed8", "any_of_top_k": "#f59e0b"}


def plot_evaluation(reports: dict, title: str | None = None):
    """Evaluation reports side by side: per row (all, 1 and 2 objects, each check) the three rates as bars.

    ``reports``: ``{split name: report}`` (``evaluate.evaluate_splits``), or one
    report. Bars: a random candidate (grey), CLIP's top-1 (blue), any of the
    top K (amber). A row no caption counts towards is left empty.
    Returns ``(fig, axes)``, one axis per split.
    """
    if "overall" in reports:  # a single report
        reports = {reports["split"]: reports}
    fig, axes = plt.subplots(1, len(reports), figsize=(4.8 * len(reports), 3.3), squeeze=False, sharey=True)
    axes = axes[0]
    for ax, (split, report) in zip(axes, reports.items()):
        by_objects = {int(k): row for k, row in report["by_objects"].items()}
        rows = [("all", report["overall"])] + [(f"{k} obj.", by_objects[k]) for k in sorted(by_objects)]
        rows += list(report["by_attribute"].items())
        x = np.arange(len(rows))
        k = report["keep"]
        labels = {"random": "a random candidate",
                  "top1": "CLIP's top-1" if report["reranked"] else "the first sample",
                  "any_of_top_k": f"any of the top {k}" if report["reranked"] else f"any of the first {k}"}
        for j, key in enumerate(EVALUATION_COLORS):
            values = [np.nan if row[key] is None else row[key] for _, row in rows]
            ax.bar(x + (j - 1) * 0.27, values, 0.27, color=EVALUATION_COLORS[key], label=labels[key])
        ax.axvline(len(by_objects) + 0.5, color="#cbd5e1", linewidth=1)
        ax.set_xticks(x, [name for name, _ in rows], rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{split}: {report['n']} captions × {report['candidates']} candidates", fontsize=10, loc="left")
    axes[0].set_ylabel("graded match rate / check passes")
    axes[-1].legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, axes


def draw_failure_gallery(images, captions: Sequence[str], grades, per_check: int = 4, scale: float = 1.45):
    """What breaks: one row per check that failed, most frequent first, with examples.

    Left of each row, how many of the images fail that check (out of those
    whose caption states it); then up to ``per_check`` images that fail it,
    with their caption above and the grader's explanation for that check below
    (each object's reason on its own lines; a long one ends in "…" at a word).
    ``images``: one per caption (e.g. CLIP's top-1); ``grades``: their
    ``grader.grade``. ``scale``: an image's side in inches (four per row fit a
    ~1,000 px notebook column). Returns ``(fig, axes)``; a gallery without
    failures draws one line saying so.
    """
    imgs = to_uint8_images(images)
    if not (len(imgs) == len(captions) == len(grades)):
        raise ValueError(f"got {len(imgs)} images, {len(captions)} captions and {len(grades)} grades: one of each "
                         "per example")
    counts = {name: n for name, n in failure_counts(grades).items() if n > 0}
    if not counts:
        fig, ax = plt.subplots(figsize=(6, 0.6))
        ax.axis("off")
        ax.text(0, 0.5, f"no failures among {len(grades)} images", fontsize=10, va="center")
        return fig, np.array([[ax]])
    rows = len(counts)
    cap_h, why_h, gap = 0.5, 0.85, 0.08  # inches: 3 caption lines, up to 6 reason lines
    cell_w = scale + 0.6  # room for the text under an image to run wider than it
    chars = int(cell_w * 15)  # characters per line at 7.5 pt
    row_h = cap_h + scale + why_h + gap
    label_w = 1.3
    width = label_w + per_check * cell_w
    height = rows * row_h + 0.1
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((rows, per_check + 1), dtype=object)
    reasons = [failure_reason_lists(g) for g in grades]
    explained = [{k for k, v in why.items() if v != [NO_OBJECT]} for why in reasons]
    shown: set[int] = set()
    for r, (name, n) in enumerate(counts.items()):
        y0 = height - 0.05 - r * row_h - cap_h - scale
        stated = sum(g.gradable and g.checks[name] is not None for g in grades)
        ax = axes[r, 0] = fig.add_axes([0.05 / width, y0 / height, (label_w - 0.1) / width, scale / height])
        ax.axis("off")
        ax.text(0.0, 0.6, name, fontsize=12, weight="bold", va="center", color=BAD)
        ax.text(0.0, 0.35, f"fails in {n} of {stated}\nimages that\nstate it", fontsize=9, va="center")
        failing = [i for i, g in enumerate(grades) if g.gradable and g.checks[name] is False]
        # examples whose failure the grader explains for this very check first, then ones not shown yet
        failing.sort(key=lambda i: (name not in explained[i], i in shown))
        failing = failing[:per_check]
        shown.update(failing)
        for c in range(per_check):
            x0 = label_w + c * cell_w + (cell_w - scale) / 2
            ax = axes[r, 1 + c] = fig.add_axes([x0 / width, y0 / height, scale / width, scale / height])
            frame(ax)
            if c >= len(failing):
                ax.set_visible(False)
                continue
            i = failing[c]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.text(0.5, 1.03, textwrap.fill(captions[i], chars, max_lines=3, placeholder=" …"),
                    transform=ax.transAxes, ha="center", va="bottom", fontsize=8)
            parts = reasons[i].get(name, [""])  # one reason per failure (per object)
            per = 5 if len(parts) == 1 else 3
            why = "\n".join(textwrap.fill(part, chars, max_lines=per, placeholder=" …") for part in parts[:2])
            if len(parts) > 2:
                why += "\n…"
            ax.text(0.5, -0.03, why, transform=ax.transAxes, ha="center", va="top", fontsize=7.5, color=BAD)
    return fig, axes
