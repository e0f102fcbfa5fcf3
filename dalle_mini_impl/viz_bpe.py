"""Lesson 1's pictures (``notebooks/01_bpe_tokenizer.ipynb``): text as tokens, and the merges that made them.

``draw_tokens`` draws text as coloured token boxes with their ids,
``plot_bars`` the pair counts and token frequencies of a corpus, and
``draw_merge_step`` the tokenizer after its first k merges (the merge slider of
:mod:`dalle_mini_impl.widgets`). Each returns ``(fig, ax)`` or ``(fig, axes)``;
the tokenizer is a :class:`dalle_mini_impl.bpe.ByteLevelBPE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

from .bpe import from_byte_chars, visible

# One colour per token, cycled: light enough to read black text on.
TOKEN_COLORS = ["#fde68a", "#a7f3d0", "#bfdbfe", "#fbcfe8", "#ddd6fe", "#fed7aa", "#c7f9cc", "#e9d5ff"]


def draw_tokens(
    pieces: Sequence[str],
    ids: Sequence[int] | None = None,
    title: str | None = None,
    line_chars: int = 48,
    ax: plt.Axes | None = None,
):
    """Draw text as coloured token boxes, each with its id underneath.

    ``pieces`` are the tokens as text (``tokenizer.tokens(text)``); boxes wrap
    to a new line after about ``line_chars`` characters. Returns ``(fig, ax)``.
    """
    if ids is not None and len(ids) != len(pieces):
        raise ValueError(f"got {len(pieces)} pieces but {len(ids)} ids: pass one id per piece")
    labels = [visible(p) for p in pieces]
    # Lay the boxes out on a character grid: x in characters, y in lines.
    layout = []  # (x, line, width)
    x, line = 0.0, 0
    for label in labels:
        width = max(len(label), len(str(ids[len(layout)])) if ids is not None else 1) + 0.6
        if x > 0 and x + width > line_chars:
            x, line = 0.0, line + 1
        layout.append((x, line, width))
        x += width + 0.3
    n_lines = line + 1
    line_height = 2.2 if ids is not None else 1.4
    if ax is None:
        fig, ax = plt.subplots(figsize=(line_chars * 0.16, 0.3 + n_lines * line_height * 0.3))
    else:
        fig = ax.figure
    for i, (label, (x, line, width)) in enumerate(zip(labels, layout)):
        y = -line * line_height
        box = FancyBboxPatch((x, y - 0.5), width, 1.0, boxstyle="round,pad=0.02,rounding_size=0.2",
                             facecolor=TOKEN_COLORS[i % len(TOKEN_COLORS)], edgecolor="#555555", linewidth=0.6)
        ax.add_patch(box)
        ax.text(x + width / 2, y, label, ha="center", va="center", family="monospace", fontsize=10)
        if ids is not None:
            ax.text(x + width / 2, y - 0.95, str(ids[i]), ha="center", va="center",
                    family="monospace", fontsize=7, color="#333333")
    ax.set_xlim(-0.5, line_chars + 0.5)
    ax.set_ylim(-(n_lines - 1) * line_height - (1.5 if ids is not None else 0.8), 0.8)
    ax.axis("off")
    ax.set_title(title if title is not None else f"{len(pieces)} tokens", fontsize=10, loc="left")
    return fig, ax


def plot_bars(labels: Sequence[str], values: Sequence[float], title: str = "", xlabel: str = "",
              ax: plt.Axes | None = None):
    """A horizontal bar chart, largest on top: for pair counts and token frequencies."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 0.8))
    else:
        fig = ax.figure
    order = np.arange(len(labels))[::-1]
    ax.barh(order, values, color="#60a5fa")
    ax.set_yticks(order, [visible(label) for label in labels], family="monospace")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig, ax


def readable(token: str) -> str:
    """A vocabulary entry in byte-level characters as the text it stands for: ``"Ġc"`` -> ``"·c"``."""
    return visible(from_byte_chars(token).decode("utf-8", errors="replace"))


def draw_merge_step(tokenizer, text: str, k: int, recent: int = 6):
    """The tokenizer after its first ``k`` merges: ``text`` re-tokenized, the newest merges, and the
    token count of ``text`` as merges are added (a marker at ``k``).

    ``tokenizer`` is a trained :class:`dalle_mini_impl.bpe.ByteLevelBPE`. Returns ``(fig, axes)``.
    """
    n_merges = len(tokenizer.merges)
    k = max(0, min(k, n_merges))
    fig = plt.figure(figsize=(9, 3.6))
    grid = fig.add_gridspec(2, 2, width_ratios=[2.2, 1], height_ratios=[1.2, 1])
    ax_tokens, ax_merges, ax_curve = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 1]), fig.add_subplot(grid[1, 0])

    pieces = tokenizer.tokens(text, max_merges=k)
    ids = tokenizer.encode(text, max_merges=k)
    draw_tokens(pieces, ids, title=f"after {k} of {n_merges} merges: {len(ids)} tokens "
                f"(vocabulary {tokenizer.vocab_size - n_merges + k})", ax=ax_tokens)

    lines = [f"{i + 1:>4}: {readable(a)} + {readable(b)}" for i, (a, b) in enumerate(tokenizer.merges[:k])][-recent:]
    ax_merges.text(0, 1, "newest merges\n" + ("\n".join(lines) if lines else "(none yet)"),
                   va="top", family="monospace", fontsize=8)
    ax_merges.axis("off")

    steps = np.unique(np.linspace(0, n_merges, num=min(n_merges + 1, 60)).astype(int))
    counts = [len(tokenizer.encode(text, max_merges=int(s))) for s in steps]
    ax_curve.plot(steps, counts, color="#2563eb")
    ax_curve.plot([k], [len(ids)], "o", color="#dc2626")
    ax_curve.set_xlabel("merges used")
    ax_curve.set_ylabel("tokens")
    fig.tight_layout()
    return fig, (ax_tokens, ax_curve, ax_merges)
