"""Lesson 4's pictures (``notebooks/04_clip_reranking.ipynb``): what CLIP reads, and what reranking picks.

``plot_similarity_matrix`` draws a batch's image–caption similarities,
``plot_clip_training`` a run's InfoNCE loss and scale,
``plot_zero_shot_accuracy`` and ``draw_zero_shot_examples`` zero-shot
classification, ``draw_retrieval`` each caption's best images
(``clip.retrieve`` finds and grades them), ``draw_scored_images`` images with
their scores and the grader's verdict, ``draw_generation`` the candidates of one
prompt (``evaluate.graded_candidates`` samples, reranks and grades them; lesson
5's prompt playground draws with it too), and ``plot_fidelity_vs_n`` the graded
match rate against the number of candidates. Each returns ``(fig, ax)`` or
``(fig, axes)``.

Letters in shape comments: B pairs in a batch, N images, M captions,
k images shown per caption, P prompts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from .clip import attribute_values
from .images import to_uint8_images
from .viz_common import BAD, GOOD, frame, verdict

MIN_TITLED_WIDTH = 5.0  # inches: a figure with a title is at least this wide, so that a long title keeps to 2–3 lines


def _thumbnail(ax: plt.Axes, image, xy, zoom: float) -> None:
    """Place a small image centred at data point ``xy`` of ``ax`` (drawn outside the axes if need be)."""
    box = AnnotationBbox(OffsetImage(image, zoom=zoom, interpolation="nearest"), xy, frameon=False,
                         annotation_clip=False, box_alignment=(0.5, 0.5))
    ax.add_artist(box)


def plot_similarity_matrix(sims, images=None, captions=None, title: str | None = None, values: bool = True,
                           ax: plt.Axes | None = None):
    """The B × B cosine similarities of a batch: row i = image i, column j = caption j, the true pairs outlined.

    ``sims``: (B, B) array or tensor. ``images``: uint8 (B, H, W, 3) or float
    (B, 3, H, W), drawn left of their rows; ``captions``: B strings, written
    above their columns (numbered, and listed under the matrix when long).
    ``values`` writes each similarity in its cell. Returns ``(fig, ax)``.
    """
    s = np.asarray(sims.detach().cpu().float() if hasattr(sims, "detach") else sims, dtype=np.float64)  # (B, B)
    B = s.shape[0]
    if s.shape != (B, B):
        raise ValueError(f"sims must be square (B, B): one row per image, one column per caption; got {s.shape}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.55 * B + 2.2, 0.55 * B + 1.2))
    else:
        fig = ax.figure
    im = ax.imshow(s, cmap="viridis", interpolation="nearest")
    for i in range(B):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#f97316", linewidth=2))
    if values and B <= 16:
        mid = (s.max() + s.min()) / 2
        for i in range(B):
            for j in range(B):
                ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if s[i, j] < mid else "black")
    ax.set_xticks(range(B), [f"t{j}" for j in range(B)], fontsize=8)
    ax.xaxis.tick_top()
    if images is not None:
        imgs = to_uint8_images(images)
        ax.set_yticks([])
        for i in range(B):
            _thumbnail(ax, imgs[i], (-1.05, i), zoom=0.6 * 64 / imgs.shape[1] * min(1.0, 8 / B))
        ax.set_xlim(-0.5, B - 0.5)
    else:
        ax.set_yticks(range(B), [f"v{i}" for i in range(B)], fontsize=8)
    if images is None:
        ax.set_ylabel("images")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    if captions is not None:
        lines = [f"t{j}: {c}" for j, c in enumerate(captions)]
        ax.set_xlabel("\n".join(textwrap.shorten(line, 70) for line in lines), fontsize=7, loc="left",
                      family="monospace")
    ax.set_title(title if title is not None else "rows: images, columns: captions (true pairs outlined)",
                 fontsize=9, loc="left", pad=18)
    return fig, ax


def plot_clip_training(history: dict, batch_size: int | None = None, smooth: int = 10):
    """A CLIP run: the InfoNCE loss per step with its running mean and the chance level ln B, and the scale s = 1/τ.

    ``history``: ``{"loss": [...], "scale": [...]}``, one entry per step.
    ``batch_size`` B draws the loss of a model that cannot tell pairs apart
    (every row of the similarity matrix uniform): ln B. Returns ``(fig, axes)``.
    """
    loss = np.asarray(history["loss"], dtype=np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 2.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    ax.plot(loss, color="#93c5fd", linewidth=1, label="loss per batch")
    if len(loss) >= smooth > 1:
        running = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(smooth - 1, len(loss)), running, color="#1d4ed8", linewidth=2,
                label=f"mean of {smooth} steps")
    if batch_size:
        ax.axhline(np.log(batch_size), color="#94a3b8", linestyle="--", linewidth=1)
        ax.text(len(loss) - 1, np.log(batch_size), f"chance: ln {batch_size} = {np.log(batch_size):.2f}",
                ha="right", va="bottom", fontsize=8, color="#475569")
    top = max(float(loss.max()) if len(loss) else 1.0, np.log(batch_size) if batch_size else 0.0)
    ax.set_ylim(0, 1.12 * top)
    ax.set_xlabel("step")
    ax.set_ylabel("symmetric InfoNCE")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("training loss", fontsize=10, loc="left")
    ax = axes[1]
    if history.get("scale"):
        ax.plot(history["scale"], color="#7c3aed")
    ax.set_xlabel("step")
    ax.set_title("logit scale s = 1/τ", fontsize=10, loc="left")
    fig.tight_layout()
    return fig, axes


def plot_zero_shot_accuracy(accuracy: dict, title: str | None = None, ax: plt.Axes | None = None):
    """Zero-shot accuracy per attribute as grouped bars, one colour per split, chance marked for each attribute.

    ``accuracy``: ``{split: {attribute: accuracy}}`` (e.g. ``{"test": {"color":
    0.99, ...}, "compositional": {...}}``). Chance is 1 / the number of values
    the attribute can take (6 colours, 5 shapes, 2 sizes, 9 positions).
    Returns ``(fig, ax)``.
    """
    splits = list(accuracy)
    attributes = list(next(iter(accuracy.values())))
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 2.9))
    else:
        fig = ax.figure
    width = 0.8 / len(splits)
    colors = ["#2563eb", "#f59e0b", "#10b981", "#a855f7"]
    x = np.arange(len(attributes))
    for s, split in enumerate(splits):
        vals = [accuracy[split][a] for a in attributes]
        bars = ax.bar(x - 0.4 + width * (s + 0.5), vals, width, color=colors[s % len(colors)], label=split)
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=7)
    for i, a in enumerate(attributes):
        chance = 1 / len(attribute_values(a))
        ax.plot([i - 0.45, i + 0.45], [chance, chance], color="#111827", linestyle=":", linewidth=1.2,
                label="chance" if i == 0 else None)
    ax.set_xticks(x, attributes)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title if title is not None else "zero-shot accuracy on held-out one-object images",
                 fontsize=10, loc="left")
    fig.tight_layout()
    return fig, ax


def draw_zero_shot_examples(images, probs: dict, truths: Sequence[dict], top: int = 3, scale: float = 1.25):
    """Zero-shot at work: per image (a row), for each attribute CLIP's ``top`` most likely values.

    ``probs``: attribute -> (N, n_values) from ``clip.zero_shot_probs``;
    ``truths``: per image, attribute -> true value (``clip.scene_attributes``).
    The true value's bar is green, a wrong top-1 red, the others grey.
    Returns ``(fig, axes)`` with ``axes`` of shape (N, 1 + attributes).
    """
    imgs = to_uint8_images(images)
    attributes = list(probs)
    n = len(imgs)
    fig, axes = plt.subplots(n, 1 + len(attributes), figsize=(scale + 2.1 * len(attributes), n * scale * 0.85),
                             squeeze=False, gridspec_kw={"width_ratios": [0.62] + [1] * len(attributes)})
    for i in range(n):
        axes[i, 0].imshow(imgs[i], interpolation="nearest")
        axes[i, 0].axis("off")
        for a, attribute in enumerate(attributes):
            ax = axes[i, 1 + a]
            values = attribute_values(attribute)
            p = np.asarray(probs[attribute][i], dtype=np.float64)  # (n_values,)
            order = np.argsort(-p, kind="stable")[:top]
            truth = truths[i][attribute]
            colors = [GOOD if values[k] == truth else (BAD if r == 0 else "#cbd5e1") for r, k in enumerate(order)]
            ax.barh(np.arange(len(order))[::-1], p[order], color=colors, height=0.8)
            for r, k in enumerate(order):
                ax.text(0.02, len(order) - 1 - r, values[k], va="center", ha="left", fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(attribute, fontsize=9)
            if i < n - 1:
                ax.set_xticklabels([])
    fig.tight_layout()
    return fig, axes


def draw_scored_images(images, scores=None, grades=None, title: str | None = None, cols: int = 8,
                       scale: float = 1.15, labels: Sequence[str] | None = None):
    """Images in a grid, each with its label and score above and the grader's verdict below.

    ``scores``: one float per image (e.g. CLIP cosine similarity) or None;
    ``grades``: per image a :class:`dalle_mini_impl.grader.Grade` (✓, or ✗ with
    the failed checks, or ? for a prompt outside the grammar), a bool, or None;
    ``labels``: the text before each score (default ``#1``, ``#2``, …: the rank).
    A figure with a title is at least ``MIN_TITLED_WIDTH`` wide, so that one or
    two images do not squeeze a long title into a column. Returns ``(fig, axes)``.
    """
    imgs = to_uint8_images(images)
    n = len(imgs)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    # Lay out in inches: per row a label band, the images and a verdict band (two short lines).
    top, bottom = 0.2, (0.36 if grades is not None else 0.05)
    gap = 0.08
    width = max(cols * (scale + gap) + gap, MIN_TITLED_WIDTH if title else 0.0)
    title_lines = textwrap.wrap(title, max(20, int(width * 13))) if title else []  # about 13 characters per inch
    head = 0.12 + 0.17 * len(title_lines) if title else 0.05
    row_h = top + scale + bottom
    height = head + rows * row_h
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((rows, cols), dtype=object)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        x0, y0 = gap + c * (scale + gap), height - head - r * row_h - top - scale
        ax = axes[r, c] = fig.add_axes([x0 / width, y0 / height, scale / width, scale / height])
        frame(ax)
        if i >= n:
            ax.set_visible(False)
            continue
        ax.imshow(imgs[i], interpolation="nearest")
        label = labels[i] if labels is not None else f"#{i + 1}"
        ax.set_title(label + (f"  {float(scores[i]):.3f}" if scores is not None else ""), fontsize=7, pad=2)
        if grades is not None:
            text, color = verdict(grades[i])
            ax.text(0.5, -0.03, "\n".join(textwrap.wrap(text, 22)) or " ", transform=ax.transAxes, ha="center",
                    va="top", color=color, fontsize=9 if len(text) <= 2 else 6, linespacing=1.0)
    if title:
        fig.text(gap / width, 1 - 0.06 / height, "\n".join(title_lines), fontsize=9, ha="left", va="top")
    return fig, axes


def draw_retrieval(captions: Sequence[str], images, sims, indices, matches, scale: float = 1.05):
    """Text -> image retrieval: per caption (a row), its k most similar images, best first.

    ``sims``: (N, M) similarities of N images with M captions (column j =
    caption j); ``images``: the N images; ``indices``, ``matches``: (M, k)
    from ``clip.retrieve``, each caption's best images and whether the grader
    finds the caption in each. Above each retrieved image its score, under it
    ✓/✗, so a vague caption's several right answers all count.
    Returns ``(fig, axes)`` of shape (M, k + 1), the captions in the first column.
    """
    imgs = to_uint8_images(images)
    s = np.asarray(sims.detach().cpu().float() if hasattr(sims, "detach") else sims, dtype=np.float64)  # (N, M)
    M, k = np.shape(indices)
    fig, axes = plt.subplots(M, k + 1, figsize=(2.3 + k * scale, M * (scale + 0.3)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.3 / scale] + [1] * k})
    for j, caption in enumerate(captions):
        axes[j, 0].axis("off")
        axes[j, 0].text(1.0, 0.5, "\n".join(textwrap.wrap(caption, 26)), ha="right", va="center", fontsize=8,
                        transform=axes[j, 0].transAxes)
        for r, i in enumerate(indices[j]):
            ax = axes[j, 1 + r]
            ax.imshow(imgs[i], interpolation="nearest")
            frame(ax)
            ax.set_title(f"{s[i, j]:.3f}", fontsize=7, pad=2)
            text, color = verdict(bool(matches[j][r]))
            ax.set_xlabel(text, color=color, fontsize=9, labelpad=1)
    fig.text(0.99, 1 - 0.06 / fig.get_figheight(), f"for each caption, the {k} most similar of {len(imgs)} images, "
             "best first", fontsize=8,
             ha="right", va="top")
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.42 / height, bottom=0.18 / height, wspace=0.08,
                        hspace=0.3 / scale + 0.15)
    return fig, axes


def generation_title(prompt: str, grades, ranked: bool, keep: int | None = None, seed: int | None = None) -> str:
    """The headline of ``draw_generation``: what is shown, and how many candidates the grader accepts.

    Example: 16 ranked candidates of which 2 match, the best 4 shown, one of
    them a match -> ``“a red circle”: the best 4 of 16 candidates (seed 0) — 2 of 16 ✓, 1 of the 4 shown``.
    """
    candidates = len(grades)
    keep = candidates if keep is None else keep
    shown = (f"{candidates} candidates" if keep == candidates else f"the best {keep} of {candidates} candidates") \
        if ranked else f"{keep} of {candidates} candidates in sampling order (no CLIP model)"
    if seed is not None:
        shown += f" (seed {seed})"
    if ranked and keep == candidates:
        shown += ", best first by CLIP"
    if grades and not grades[0].gradable:
        outcome = "outside the Shapes grammar, so not graded (?)"
    else:
        outcome = f"{sum(g.match for g in grades)} of {candidates} ✓"
        if keep < candidates:
            outcome += f", {sum(g.match for g in grades[:keep])} of the {keep} shown"
        elif ranked:
            outcome += f"; the top one {'✓' if grades[0].match else '✗'}"
    return f"“{prompt}”: {shown} — {outcome}"


def draw_generation(prompt: str, images, scores, grades, keep: int | None = None, seed: int | None = None,
                    cols: int = 8):
    """The N candidates of one prompt, best first, and the grader's verdict on each: the first ``keep`` drawn.

    ``images``, ``scores``, ``grades``: all N candidates, best first, as
    ``evaluate.graded_candidates`` returns them (``scores`` None: no CLIP
    model, the images stay in sampling order). Each image is drawn with its
    rank, its CLIP score and its verdict (✓, ✗ with the failed checks, or ?
    when the prompt is outside the Shapes grammar); the title
    (``generation_title``) counts the ✓ among all candidates and among those
    shown. Returns ``(fig, axes)``.
    """
    keep = len(images) if keep is None else keep
    title = generation_title(prompt, grades, scores is not None, keep, seed)
    return draw_scored_images(images[:keep], None if scores is None else scores[:keep], grades[:keep], title=title,
                              cols=cols)


def plot_fidelity_vs_n(ns: Sequence[int], top1: Sequence[float], oracle: Sequence[float] | None = None,
                       subsets: Sequence[float] | None = None, n_prompts: int | None = None,
                       title: str | None = None, ax: plt.Axes | None = None):
    """Graded match rate of the image CLIP ranks first among N candidates, against N (log scale).

    ``top1[i]``: the rate at ``ns[i]``; ``oracle``: how often *some* of the N
    candidates matches (what a perfect reranker would reach); ``subsets``: the
    same top-1 rate estimated from seeded random subsets, drawn as dots. N = 1
    is no reranking at all. Returns ``(fig, ax)``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.4, 3.2))
    else:
        fig = ax.figure
    ns = np.asarray(ns)
    if oracle is not None:
        ax.plot(ns, oracle, color="#94a3b8", marker="s", markersize=4, linewidth=1.2,
                label="any of the N matches (a perfect reranker)")
    ax.plot(ns, top1, color="#1d4ed8", marker="o", linewidth=2, label="CLIP's top-1 of N")
    if subsets is not None:
        ax.plot(ns, subsets, linestyle="none", marker="x", color="#f97316", markersize=7,
                label="CLIP's top-1, seeded subsets")
    ax.axhline(top1[0], color="#64748b", linestyle=":", linewidth=1, label="no reranking (N = 1)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("N, candidates sampled per prompt")
    ax.set_ylabel("graded match rate")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    default = "fidelity vs the number of candidates" + (f" ({n_prompts} prompts)" if n_prompts else "")
    ax.set_title(title if title is not None else default, fontsize=10, loc="left")
    fig.tight_layout()
    return fig, ax
