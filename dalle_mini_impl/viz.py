"""Static pictures for the lessons: every function draws with matplotlib and returns ``(fig, ax)``.

The same functions serve the static output a notebook stores (seen on GitHub
and compared by nbval) and the live widgets in :mod:`dalle_mini_impl.widgets`,
which only call them again with new arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

# One colour per token, cycled: light enough to read black text on.
TOKEN_COLORS = ["#fde68a", "#a7f3d0", "#bfdbfe", "#fbcfe8", "#ddd6fe", "#fed7aa", "#c7f9cc", "#e9d5ff"]


def visible(piece: str) -> str:
    """Make white space readable: ``" red\\n"`` -> ``"·red⏎"``."""
    return piece.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")


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


def show_images(images, titles: Sequence[str] | None = None, cols: int = 8, scale: float = 1.4,
                suptitle: str | None = None):
    """A grid of images (uint8 ``[N, H, W, 3]`` or float ``[N, 3, H, W]`` in [0, 1])."""
    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
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

    from .bpe import from_byte_chars

    def readable(token: str) -> str:  # "Ġc" -> "·c"
        return visible(from_byte_chars(token).decode("utf-8", errors="replace"))

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
