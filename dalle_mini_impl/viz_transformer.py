"""Lesson 3's pictures (``notebooks/03_sparse_attention_transformer.ipynb``): masks, attention, samples.

``draw_mask`` and ``plot_keys_per_query`` draw the sparse masks of
:mod:`dalle_mini_impl.attention`, ``draw_mask_explorer`` one query's row of a
mask (its key states come from ``attention.key_states``),
``draw_attention_map`` where one query of a trained model looks,
``plot_transformer_training`` a run's losses, ``draw_graded_samples`` samples
with the grader's verdict under each (``evaluate.graded_samples`` draws and
grades them), and ``draw_generation_strip`` a grid as it fills, code by code.
Each returns ``(fig, ax)`` or ``(fig, axes)``.

Letters in shape comments: Lt text positions, G grid side, N = G·G image codes,
S = Lt + N positions, T positions given to the model (<= S), nh heads, L layers.
A query "holds" the token at its position and predicts the next one: the query
at position Lt + i holds code i, at cell (i // G, i % G).
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from .attention import KEY_ALLOWED, KEY_SELF, build_mask, key_states, keys_per_query
from .bpe import visible
from .images import to_uint8_images
from .sampling import codes_to_images, partial_grids
from .viz_common import BAD, frame, verdict

# The colours of a key's states in the mask explorer, indexed by attention.KEY_BLOCKED, KEY_ALLOWED, KEY_SELF,
# KEY_FUTURE: earlier but masked out, may attend, the query itself, later (never visible).
KEY_COLORS = ["#f1f5f9", "#60a5fa", "#f97316", "#cbd5e1"]


def _as_numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def draw_mask(mask, text_len: int, title: str | None = None, ax: plt.Axes | None = None):
    """A boolean attention mask (S, S) as a matrix: row q is a query position, column k a key, blue = may attend.

    Red lines split the text and image blocks, as in the paper's Fig. 11. Returns ``(fig, ax)``.
    """
    m = _as_numpy(mask).astype(bool)  # (S, S)
    S = m.shape[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.4, 3.4))
    else:
        fig = ax.figure
    ax.imshow(m, cmap=ListedColormap(["#f8fafc", "#1d4ed8"]), vmin=0, vmax=1, interpolation="nearest")
    if S <= 48:  # a faint grid between the entries, when they are big enough to see
        ax.set_xticks(np.arange(-0.5, S, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, S, 1), minor=True)
        ax.grid(which="minor", color="#cbd5e1", linewidth=0.3)
        ax.tick_params(which="minor", length=0)
    ax.axhline(text_len - 0.5, color=BAD, linewidth=1)
    ax.axvline(text_len - 0.5, color=BAD, linewidth=1)
    ax.set_xticks([(text_len - 1) / 2, (text_len + S - 1) / 2], ["text keys", "image keys"], fontsize=8)
    ax.set_yticks([(text_len - 1) / 2, (text_len + S - 1) / 2], ["text q", "image q"], fontsize=8, rotation=90,
                  va="center")
    ax.tick_params(length=0)
    ax.set_title(title if title is not None else f"{int(m.sum())} of {S * S} entries allowed", fontsize=9)
    return fig, ax


def plot_keys_per_query(masks: dict, text_len: int, ax: plt.Axes | None = None):
    """How many keys (text + image) each image query may attend, one line per mask: ``masks`` is kind -> (S, S).

    The x axis is the code the query holds, in raster order. Returns ``(fig, ax)``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 2.6))
    else:
        fig = ax.figure
    colors = {"row": "#2563eb", "column": "#16a34a", "conv": "#ea580c", "causal": "#64748b"}
    counts = {kind: keys_per_query(torch.as_tensor(mask).bool())[text_len:].numpy() for kind, mask in masks.items()}
    for kind, n_keys in counts.items():  # (N,) keys per image query
        ax.plot(np.arange(len(n_keys)), n_keys, color=colors.get(kind), label=f"{kind} (mean {n_keys.mean():.1f})",
                linewidth=1.2, linestyle=":" if kind == "causal" else "-")
    ax.set_xlabel("image query: the code it holds (raster order)")
    ax.set_ylabel("keys it may attend")
    ax.set_ylim(0, 1.3 * max(int(n_keys.max()) for n_keys in counts.values()))
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig, ax


def draw_mask_explorer(kind: str = "row", query: int | None = None, text_len: int = 32, grid: int = 8,
                       kernel: int = 5, text_labels=None):
    """One row of a layer's mask: which text and image keys query position ``query`` may attend.

    Top: the Lt text keys; left: the G × G image keys on the grid (blue =
    allowed, orange = the query's own cell, grey = later cells, which no mask
    shows); a ★ marks the cell this query predicts. Right: the whole S × S mask
    with the query's row outlined. ``query`` defaults to the position holding
    cell (3, 4). Returns ``(fig, (ax_text, ax_grid, ax_mask))``.
    """
    query = text_len + 3 * grid + 4 if query is None else query
    text_states, image_states = key_states(kind, query, text_len, grid, kernel)
    cmap = ListedColormap(KEY_COLORS)
    fig = plt.figure(figsize=(9.2, 4.9))
    spec = fig.add_gridspec(2, 2, width_ratios=[1.35, 1], height_ratios=[1, 7.5], hspace=0.35, wspace=0.15,
                            bottom=0.12, top=0.88)
    ax_text, ax_grid, ax_mask = fig.add_subplot(spec[0, 0]), fig.add_subplot(spec[1, 0]), fig.add_subplot(spec[:, 1])

    ax_text.imshow(text_states[None, :], cmap=cmap, vmin=0, vmax=3, interpolation="nearest", aspect="auto")
    for k in range(1, text_len):
        ax_text.axvline(k - 0.5, color="white", linewidth=1)
    ax_text.set_yticks([])
    if text_labels is not None:
        ax_text.set_xticks(np.arange(text_len), [visible(t) for t in text_labels], fontsize=6, rotation=90)
    else:
        ax_text.set_xticks(np.arange(0, text_len, 4))
        ax_text.tick_params(labelsize=7)
    ax_text.set_title(f"text keys: {int((text_states == KEY_ALLOWED).sum() + (text_states == KEY_SELF).sum())}"
                      f" of {text_len} visible", fontsize=9, loc="left")

    ax_grid.imshow(image_states, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
    for r in range(grid):
        for c in range(grid):
            ax_grid.text(c, r, str(r * grid + c), ha="center", va="center", fontsize=6.5, color="#334155")
    ax_grid.set_xticks(np.arange(-0.5, grid, 1), minor=True)
    ax_grid.set_yticks(np.arange(-0.5, grid, 1), minor=True)
    ax_grid.grid(which="minor", color="white", linewidth=1.5)
    ax_grid.tick_params(which="both", length=0)
    ax_grid.set_xticks(range(grid))
    ax_grid.set_yticks(range(grid))
    ax_grid.tick_params(labelsize=7)
    predicted = query + 1 - text_len  # the code this position predicts
    if 0 <= predicted < grid * grid:
        ax_grid.plot(predicted % grid + 0.27, predicted // grid - 0.27, marker="*", color="#b91c1c", markersize=9,
                     markeredgecolor="white", markeredgewidth=0.5)
    n_image = int(np.isin(image_states, [KEY_ALLOWED, KEY_SELF]).sum())
    if query >= text_len:
        i = query - text_len
        holds = f"holds code {i}, cell ({i // grid}, {i % grid})"
    else:
        holds = f"holds text token {query}"
    ax_grid.set_title(f"image keys: {n_image} visible", fontsize=9, loc="left")
    names = ["earlier, masked out", "may attend", "the query itself", "later: never visible"]
    fig.legend(handles=[Patch(facecolor=KEY_COLORS[k], edgecolor="#94a3b8", label=names[k]) for k in range(4)],
               loc="lower left", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.02, 0.0))

    mask = build_mask(kind, text_len, grid, kernel)
    draw_mask(mask, text_len, title=f"the {kind} mask, {text_len + grid * grid}×{text_len + grid * grid}",
              ax=ax_mask)
    ax_mask.add_patch(plt.Rectangle((-0.5, query - 0.5), mask.shape[1], 1, fill=False, edgecolor="#f97316",
                                    linewidth=1.5))
    fig.suptitle(f"{kind} mask, query position {query}: {holds}; ★ = the code it predicts", fontsize=10,
                 x=0.01, ha="left")
    return fig, (ax_text, ax_grid, ax_mask)


def draw_attention_map(maps, layer: int = 0, head: int | None = None, cell: tuple[int, int] = (3, 4),
                       text_len: int = 32, grid: int = 8, image=None, text_labels=None, mask_kinds=None,
                       pad_label: str = "<pad>"):
    """Where one query looks: the attention probabilities of the position holding ``cell``, in one layer.

    ``maps``: ``model.attention_maps(text, codes)`` for one example, a list of
    L tensors (1, nh, T, T) or (nh, T, T), T = Lt + N. ``head`` None averages
    the heads. Left: the weights on the image keys as a heat map over the grid
    (light = little, dark = much), over ``image`` drawn faded when given; cells
    the query cannot see (later ones, or outside this layer's mask) stay clear,
    and the query's cell is outlined; the colour scale runs from 0 to the query's
    largest weight on any key, text included. Right: the weights on the caption's tokens
    (``text_labels``, one per text position), the words in blue and the pads
    (``pad_label``) in grey. Returns ``(fig, (ax_grid, ax_text))``.
    """
    weights = _as_numpy(maps[layer]).astype(np.float64)
    if weights.ndim == 4:
        weights = weights[0]  # (nh, T, T)
    weights = weights.mean(axis=0) if head is None else weights[head]  # (T, T)
    r, c = cell
    query = text_len + r * grid + c
    row = weights[query]  # (T,) this query's probabilities over the keys
    text_part = row[:text_len]  # (Lt,)
    image_part = np.full(grid * grid, np.nan)
    n = min(len(row) - text_len, grid * grid)
    image_part[:n] = row[text_len:text_len + n]
    image_part[r * grid + c + 1:] = np.nan  # later cells: never visible
    image_part[image_part == 0] = np.nan  # keys outside this layer's mask: weight exactly 0
    heat = image_part.reshape(grid, grid)  # (G, G)

    fig, (ax_grid, ax_text) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2.3]})
    # One scale for both panels (0 to this query's largest weight on any key), so that image weights of 1e-6
    # beside a word holding 0.98 stay light rather than filling the colour bar.
    vmax = max(float(row.max()), 1e-6)
    cmap = "Purples"  # 0 is near white, so the picture under a weak weight stays visible
    if image is not None:
        img = to_uint8_images(image).astype(np.float64)  # (H, W, 3)
        H = img.shape[0]
        ax_grid.imshow((255 - 0.45 * (255 - img)).astype(np.uint8), interpolation="nearest")  # faded, in colour
        im = ax_grid.imshow(heat, cmap=cmap, vmin=0, vmax=vmax, alpha=0.75, extent=(-0.5, H - 0.5, H - 0.5, -0.5),
                            interpolation="nearest")
        cell_px = H / grid
    else:
        im = ax_grid.imshow(heat, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        cell_px = 1.0
    ax_grid.add_patch(plt.Rectangle((c * cell_px - 0.5, r * cell_px - 0.5), cell_px, cell_px, fill=False,
                                    edgecolor="#f97316", linewidth=2))
    ax_grid.set_xticks([])
    ax_grid.set_yticks([])
    fig.colorbar(im, ax=ax_grid, fraction=0.046, pad=0.03)
    kind = f" ({mask_kinds[layer]})" if mask_kinds is not None else ""
    who = "mean of the heads" if head is None else f"head {head}"
    ax_grid.set_title(f"layer {layer}{kind}, {who}\nimage keys: {np.nansum(image_part):.0%}", fontsize=9)

    x = np.arange(text_len)
    labels = [visible(t) for t in text_labels] if text_labels is not None else [str(i) for i in x]
    is_pad = np.array([t == pad_label for t in text_labels] if text_labels is not None else [False] * text_len)
    ax_text.bar(x, text_part, color=np.where(is_pad, "#cbd5e1", "#2563eb"))
    ax_text.set_xticks(x, labels, rotation=90, fontsize=7)
    ax_text.set_xlim(-0.6, text_len - 0.4)
    ax_text.set_ylabel("attention")
    split = f" (words {text_part[~is_pad].sum():.0%}, pads {text_part[is_pad].sum():.0%})" if is_pad.any() else ""
    ax_text.set_title(f"query at cell ({r}, {c}): text keys {text_part.sum():.0%}{split}", fontsize=9, loc="left")
    fig.tight_layout()
    return fig, (ax_grid, ax_text)


def plot_transformer_training(history: dict, image_vocab: int | None = None, ax: plt.Axes | None = None):
    """A transformer run: the total loss and its text and image parts per step (nats per token).

    ``history``: ``{"loss": [...], "text": [...], "image": [...]}``. With
    ``image_vocab``, a dotted line at ln Vi, the loss of a uniform guess. Returns ``(fig, ax)``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 2.8))
    else:
        fig = ax.figure
    styles = {"image": ("#ea580c", "image (weight 7/8)"), "text": ("#16a34a", "text (weight 1/8)"),
              "loss": ("#1d4ed8", "loss = text/8 + 7·image/8")}
    for key, (color, label) in styles.items():
        if history.get(key):
            ax.plot(history[key], color=color, label=label, linewidth=1.8 if key == "loss" else 1.0)
    if image_vocab:
        ax.axhline(np.log(image_vocab), color="#94a3b8", linestyle=":", linewidth=1,
                   label=f"ln {image_vocab}: a uniform guess")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def samples_title(prompt: str, grades) -> str:
    """``'a red circle': 3 of 8 match`` (or a note that the prompt cannot be graded)."""
    if grades and not grades[0].gradable:
        return f"{prompt!r}: outside the Shapes grammar, not graded"
    return f"{prompt!r}: {sum(g.match for g in grades)} of {len(grades)} match"


def draw_graded_samples(images, grades=None, title: str | None = None, cols: int = 8, scale: float = 1.2):
    """Images in a grid with the grader's verdict under each (``viz_common.verdict``).

    ✓ (match), ✗ and the checks that failed (no match) or ? (cannot be graded).
    ``grades``: one ``grader.Grade`` (or bool, or None: not graded) per image.
    Returns ``(fig, axes)``.
    """
    imgs = to_uint8_images(images)  # (n, H, W, 3)
    n = len(imgs)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * (scale + 0.3) + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        frame(ax)
        if i >= n:
            ax.set_visible(False)
        else:
            ax.imshow(imgs[i], interpolation="nearest")
            if grades is not None:
                text, color = verdict(grades[i])
                ax.text(0.5, -0.04, "\n".join(textwrap.wrap(text, 20)), transform=ax.transAxes, ha="center",
                        va="top", fontsize=12 if len(text) <= 2 else 7, color=color, linespacing=1.0)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, axes


def draw_generation_strip(dvae, prefixes, fill_code: int, scale: float | None = None):
    """The grid as it fills: each prefix of codes decoded, cells not drawn yet filled with ``fill_code`` and greyed.

    ``prefixes``: code prefixes in raster order (e.g. what ``sample``'s
    callback saw after some steps), completed by ``sampling.partial_grids`` and
    decoded by ``sampling.codes_to_images``. Returns ``(fig, axes)``.
    """
    grid = dvae.config.grid_size
    images = codes_to_images(dvae, partial_grids(prefixes, grid, fill_code))  # (P, H, W, 3)
    P, H = len(images), images.shape[1]
    cell = H / grid
    scale = scale or min(1.25, 9.6 / P)  # inches per frame: the strip fits a ~1,000 px column
    fig, axes = plt.subplots(1, P, figsize=(P * scale, scale + 0.35), squeeze=False)
    axes = axes[0]
    for ax, image, prefix in zip(axes, images, prefixes):
        k = len(torch.as_tensor(prefix).flatten())
        ax.imshow(image, interpolation="nearest")
        for j in range(k, grid * grid):  # not drawn yet
            r, c = divmod(j, grid)
            ax.add_patch(plt.Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, facecolor="#94a3b8",
                                       alpha=0.55, edgecolor="none"))
        ax.set_title(f"{k}/{grid * grid}", fontsize=8)
        frame(ax)
    fig.tight_layout()
    return fig, axes
