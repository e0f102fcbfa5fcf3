"""Lesson 2's pictures (``notebooks/02_dvae_gumbel_softmax.ipynb``): images ⇄ 8×8 grids of codes.

``draw_code_grid`` draws an image under its grid of code ids;
``draw_gumbel_softmax`` the relaxation at one temperature; ``plot_pixel_losses``
the logit-Laplace loss against squared error; ``plot_training`` a run's loss and
its τ, β and learning-rate schedules; ``draw_reconstructions`` originals above
their round trips with the grader's verdict; ``plot_code_usage``,
``draw_code_patches`` and ``draw_codebook_explorer`` what the codebook holds;
``draw_code_edit`` one code changed and decoded. Each returns ``(fig, ax)`` or
``(fig, axes)``; what they draw is computed by :mod:`dalle_mini_impl.dvae`.

Letters in shape comments: N images, H = W = 64 pixels, h = w = 8 grid cells,
K codes in the codebook, C = 3 colour channels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .dvae import (
    code_locations,
    gumbel_softmax_samples,
    gumbel_softmax_sharpness,
    histogram_perplexity,
    kl_weight_at,
    logit_laplace_log_prob,
    lr_at,
    map_pixels,
    most_colourful_code,
    pixel_mean,
    tau_at,
)
from .images import to_uint8_images
from .viz_common import BAD, GOOD, frame, verdict


def draw_code_grid(image, codes=None, highlight=None, title: str | None = None, fontsize: float = 6.5,
                   ax: plt.Axes | None = None):
    """One image with the dVAE's grid drawn over it, and each cell's code id when ``codes`` (h, w) is given.

    ``highlight``: cells ``(row, col)`` to outline in red. Returns ``(fig, ax)``.
    """
    img = to_uint8_images(image)  # (H, W, 3)
    H = img.shape[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
    else:
        fig = ax.figure
    ax.imshow(img, interpolation="nearest")
    grid = np.asarray(codes).shape[0] if codes is not None else 8
    cell = H / grid
    for k in range(1, grid):
        ax.axhline(k * cell - 0.5, color="#64748b", linewidth=0.5, alpha=0.7)
        ax.axvline(k * cell - 0.5, color="#64748b", linewidth=0.5, alpha=0.7)
    if codes is not None:
        codes = np.asarray(codes)
        for r in range(grid):
            for c in range(grid):
                ax.text((c + 0.5) * cell - 0.5, (r + 0.5) * cell - 0.5, str(int(codes[r, c])), ha="center",
                        va="center", fontsize=fontsize, family="monospace", color="#111827",
                        bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.6})
    for r, c in highlight or []:
        ax.add_patch(plt.Rectangle((c * cell - 0.5, r * cell - 0.5), cell, cell, fill=False, edgecolor=BAD,
                                   linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return fig, ax


def draw_gumbel_softmax(logits, tau: float = 1.0, hard: bool = False, n_samples: int = 4, seed: int = 0,
                        taus=None):
    """Gumbel-softmax samples of ``softmax(logits)`` at temperature ``tau``, beside the distribution itself.

    The samples are ``dvae.gumbel_softmax_samples`` of ``seed``, so every
    ``tau`` shows the *same* samples: lowering ``tau`` sharpens each one
    towards the one-hot vector of its gumbel-max winner (drawn darker). The last
    panel is ``dvae.gumbel_softmax_sharpness``, the mean largest entry of a
    sample against ``tau`` (over 2,000 samples), with ``tau`` marked. Returns ``(fig, axes)``.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32).flatten()  # (K,)
    K = len(logits)
    y = gumbel_softmax_samples(logits, tau, n_samples, hard=hard, seed=seed)  # (n_samples, K)
    taus = np.geomspace(0.05, 5.0, 25) if taus is None else np.asarray(taus)
    sharpness = gumbel_softmax_sharpness(logits, taus, seed=seed + 1)

    fig, axes = plt.subplots(1, n_samples + 2, figsize=(1.6 * (n_samples + 2), 2.3),
                             gridspec_kw={"width_ratios": [1] * (n_samples + 1) + [1.3]})
    x = np.arange(K)
    axes[0].bar(x, logits.softmax(-1).numpy(), color="#94a3b8")
    axes[0].set_title("softmax(logits)", fontsize=9)
    for i in range(n_samples):
        ax = axes[i + 1]
        colors = ["#1d4ed8" if k == int(y[i].argmax()) else "#93c5fd" for k in range(K)]
        ax.bar(x, y[i].detach().numpy(), color=colors)
        ax.set_title(f"sample {i + 1}", fontsize=9)
    for ax in axes[:-1]:
        ax.set_ylim(0, 1.02)
        ax.set_xticks(x if K <= 10 else x[:: max(1, K // 5)])
        ax.tick_params(labelsize=7)
    for ax in axes[1:-1]:
        ax.set_yticklabels([])
    axes[0].set_xlabel("category", fontsize=8)
    ax = axes[-1]
    ax.plot(taus, sharpness, color="#1d4ed8")
    ax.axvline(tau, color=BAD, linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("τ", fontsize=8)
    ax.set_title("soft: mean max$_k$ y$_k$", fontsize=9)
    ax.tick_params(labelsize=7)
    mode = ", straight-through: the forward pass is one-hot" if hard else ""
    fig.suptitle(f"gumbel-softmax samples at τ = {tau:.2f}{mode}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, axes


def plot_pixel_losses(pixel: float = 1.0, eps: float = 0.1, log_bs=(-2.0, -1.0, 0.0),
                      zoom: tuple[float, float] | None = None, mark: float | None = None):
    """The loss of one pixel value as a function of the prediction: logit-Laplace (left) vs squared error.

    The decoder predicts μ (and ln b) in logit space; the picture it paints is
    x̂ = φ⁻¹(sigmoid(μ)), which ranges over (-ε/(1-2ε), 1 + ε/(1-2ε)) and is
    clamped to [0, 1] only for display. Left: -ln p(φ(pixel) | μ, b) against x̂
    for a few scales b; middle: (x̂ - pixel)². ``zoom=(lo, hi)`` adds a third
    panel over lo <= x̂ <= hi with each loss minus its own minimum, on one
    axis, and ``mark`` a prediction whose extra costs it labels.
    Returns ``(fig, axes)``.
    """
    mu = torch.linspace(-6, 6, 6001)  # (M,) predictions in logit space
    x_hat = pixel_mean(mu, eps)  # the predicted pixel, before clamping
    target = map_pixels(torch.tensor(float(pixel)), eps)
    colors = ["#1d4ed8", "#7c3aed", "#db2777", "#ea580c"]
    nlls = [-logit_laplace_log_prob(target.expand_as(mu), mu, torch.full_like(mu, log_b)) for log_b in log_bs]
    squared = (x_hat - pixel) ** 2
    fig, axes = plt.subplots(1, 3 if zoom else 2, figsize=(10.1, 3) if zoom else (9, 3))
    for nll, log_b, color in zip(nlls, log_bs, colors):
        axes[0].plot(x_hat.numpy(), nll.numpy(), color=color, label=f"b = {np.exp(log_b):.2f}")
    axes[0].set_ylabel("-ln p(x | μ, b)")
    axes[0].legend(fontsize=8)
    axes[1].plot(x_hat.numpy(), squared.numpy(), color="#0f766e")
    axes[1].set_ylabel("(x̂ - x)²")
    for ax, name in zip(axes[:2], ["logit-Laplace", "squared error"]):
        ax.axvline(pixel, color="#64748b", linestyle=":", linewidth=1)
        ax.axvspan(float(x_hat.min()), 0, color="#e5e7eb")
        ax.axvspan(1, float(x_hat.max()), color="#e5e7eb")
        ax.set_xlabel("predicted pixel x̂ = φ⁻¹(sigmoid(μ))")
        ax.set_title(f"{name}, true pixel x = {pixel:g}", fontsize=10, loc="left")
    if zoom:
        ax = axes[2]
        near = (x_hat >= zoom[0]) & (x_hat <= zoom[1])
        for nll, log_b, color in zip(nlls, log_bs, colors):
            ax.plot(x_hat[near].numpy(), (nll - nll.min())[near].numpy(), color=color, label=f"b = {np.exp(log_b):.2f}")
        ax.plot(x_hat[near].numpy(), (squared - squared.min())[near].numpy(), color="#0f766e", linewidth=2.5,
                label="squared error")
        ax.axvline(pixel, color="#64748b", linestyle=":", linewidth=1)
        if mark is not None:
            i = int((x_hat - mark).abs().argmin())
            extra = (nlls[0] - nlls[0].min())[i].item()
            ax.axvline(mark, color="#94a3b8", linewidth=1)
            ax.annotate(f"x̂ = {mark:g}: +{extra:.1f} nats (b = {np.exp(log_bs[0]):.2f})\n"
                        f"vs +{(squared - squared.min())[i].item():.4f} squared error",
                        (mark, extra), xytext=(6, 8), textcoords="offset points", fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
        ax.set_xlim(*zoom)
        ax.set_xlabel("predicted pixel x̂")
        ax.set_ylabel("loss − its minimum")
        ax.set_title("near the true value, one axis", fontsize=10, loc="left")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig, axes


def plot_training(history: dict | None, config, total_steps: int):
    """A dVAE run: the loss (if ``history`` has any) and the τ, β and learning-rate schedules over ``total_steps``.

    ``history``: ``{"loss": [...], "recon": [...]}``, one entry per step, and
    if given each weighted term of the loss, ``"beta_kl"`` (β·kl) and
    ``"diversity"`` (its weight times the usage KL), drawn on their own;
    ``None`` draws the schedules only.
    ``config`` is a :class:`dalle_mini_impl.dvae.DVAEConfig`. Returns ``(fig, axes)``.
    """
    steps = np.arange(total_steps + 1)
    has_loss = bool(history and history.get("loss"))
    fig, axes = plt.subplots(1, 3 if has_loss else 2, figsize=(9.6 if has_loss else 8.5, 2.8))
    axes = np.atleast_1d(axes)
    if has_loss:
        ax = axes[0]
        if history.get("recon"):
            ax.plot(history["recon"], color="#f59e0b", label="recon", linewidth=2.5, alpha=0.5)
        terms = [("beta_kl", "β·kl", "#ea580c"), ("diversity", "w·diversity", "#7c3aed")]
        terms = [t for t in terms if history.get(t[0])]
        for key, label, color in terms:
            ax.plot(history[key], color=color, label=label, linewidth=1)
        total = " + ".join(["recon"] + [label for _, label, _ in terms]) if terms else "recon + β·kl"
        ax.plot(history["loss"], color="#1d4ed8", label=f"loss = {total}", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("per pixel value")
        ax.legend(fontsize=8)
        ax.set_title("training loss", fontsize=10, loc="left")
    ax_tau = axes[-2]
    ax_tau.plot(steps, [tau_at(s, total_steps, config) for s in steps], color="#7c3aed")
    ax_tau.set_ylabel("τ", color="#7c3aed")
    ax_beta = ax_tau.twinx()
    ax_beta.plot(steps, [kl_weight_at(s, total_steps, config) for s in steps], color="#ea580c")
    ax_beta.set_ylabel("β (KL weight)", color="#ea580c")
    ax_tau.set_xlabel("step")
    ax_tau.set_title("temperature τ and KL weight β", fontsize=10, loc="left")
    ax_lr = axes[-1]
    lrs = np.array([lr_at(s, total_steps, config) for s in steps])
    power = int(np.floor(np.log10(lrs.max())))
    ax_lr.plot(steps, lrs / 10.0**power, color="#0f766e")
    ax_lr.set_xlabel("step")
    ax_lr.set_title(f"learning rate (× 1e{power})", fontsize=10, loc="left")
    fig.tight_layout()
    return fig, axes


def draw_snapshots(originals, snapshots: dict, captions: Sequence[str], grades: dict | None = None,
                   scale: float = 1.0):
    """Originals (captioned) above their reconstructions at several training steps, one row per step.

    ``snapshots``: ``{step: images}``, each N images like ``originals`` (uint8
    (N, H, W, 3) or float (N, 3, H, W)). ``grades``: ``{step: [Grade, ...]}``;
    under each reconstruction ✓, or ✗ with the checks that failed. Returns
    ``(fig, axes)`` with ``axes`` of shape (1 + len(snapshots), N).
    """
    top = to_uint8_images(originals)
    n, steps = len(top), sorted(snapshots)
    rows = [top] + [to_uint8_images(snapshots[step]) for step in steps]
    if any(len(row) != n for row in rows):
        raise ValueError("every snapshot needs one reconstruction per original")
    cap, mark, gap, margin = 0.52, (0.36 if grades is not None else 0.05), 0.05, 0.35
    heights = [cap + scale] + [scale + mark] * len(steps)
    width, height = margin + n * (scale + gap), sum(heights) + gap * len(rows)
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((len(rows), n), dtype=object)
    y = height
    for r, row in enumerate(rows):
        y -= (cap if r == 0 else 0) + scale + gap
        for c in range(n):
            ax = fig.add_axes([(margin + c * (scale + gap)) / width, y / height, scale / width, scale / height])
            ax.imshow(row[c], interpolation="nearest")
            frame(ax)
            axes[r, c] = ax
            if r == 0:
                ax.text(0.5, 1.03, "\n".join(textwrap.wrap(captions[c], 20)[:4]), transform=ax.transAxes,
                        ha="center", va="bottom", fontsize=7)
            elif grades is not None:
                text, color = verdict(grades[steps[r - 1]][c])
                ax.text(0.5, -0.03, "\n".join(textwrap.wrap(text, 22)[:3]), transform=ax.transAxes, ha="center",
                        va="top", fontsize=6.5, color=color)
        axes[r, 0].set_ylabel("original" if r == 0 else f"step {steps[r - 1]:,}", fontsize=8)
        y -= mark if r > 0 else 0
    return fig, axes


def draw_reconstructions(originals, reconstructions, captions: Sequence[str] | None = None,
                         matches: Sequence[bool] | None = None, cols: int = 8, scale: float = 1.18):
    """Originals above their reconstructions, the caption over each pair and the grader's verdict under it.

    ``matches[i]`` is True when the grader reads ``captions[i]`` back off the
    reconstruction (✓, green) and False when not (✗, red). Images: uint8
    (N, H, W, 3) or float (N, 3, H, W) in [0, 1]. Returns ``(fig, axes)`` with
    ``axes`` of shape (2 · blocks, cols): originals on even rows, reconstructions on odd rows.
    """
    top, bottom = to_uint8_images(originals), to_uint8_images(reconstructions)
    n = len(top)
    if len(bottom) != n:
        raise ValueError(f"got {n} originals but {len(bottom)} reconstructions: pass one reconstruction per original")
    cols = min(cols, n)
    blocks = (n + cols - 1) // cols
    # Lay out in inches: per block a caption band, two images and a verdict band.
    cap = 0.5 if captions is not None else 0.05  # three lines of caption
    mark = 0.25 if matches is not None else 0.05
    gap, margin = 0.05, 0.3
    block_h = cap + 2 * scale + gap + mark
    width, height = margin + cols * (scale + gap), blocks * block_h + 0.05
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((2 * blocks, cols), dtype=object)
    for b in range(blocks):
        for c in range(cols):
            x0 = margin + c * (scale + gap)
            y_top = height - b * block_h - cap - scale  # bottom edge of the original, in inches
            for k, y0 in enumerate([y_top, y_top - scale - gap]):
                ax = fig.add_axes([x0 / width, y0 / height, scale / width, scale / height])
                ax.axis("off")
                axes[2 * b + k, c] = ax
    for i in range(n):
        b, c = divmod(i, cols)
        ax_o, ax_r = axes[2 * b, c], axes[2 * b + 1, c]
        ax_o.imshow(top[i], interpolation="nearest")
        ax_r.imshow(bottom[i], interpolation="nearest")
        if captions is not None:
            ax_o.text(0.5, 1.02, "\n".join(textwrap.wrap(captions[i], 22)[:3]), transform=ax_o.transAxes,
                      ha="center", va="bottom", fontsize=7.5)
        if matches is not None:
            ok = bool(matches[i])
            ax_r.text(0.5, -0.02, "✓" if ok else "✗", transform=ax_r.transAxes, ha="center", va="top", fontsize=11,
                      color=GOOD if ok else BAD)
    for b in range(blocks):
        for k, label in enumerate(["original", "reconstruction"]):
            axes[2 * b + k, 0].text(-0.04, 0.5, label, transform=axes[2 * b + k, 0].transAxes, rotation=90,
                                    ha="right", va="center", fontsize=7)
    for ax in axes.flat:  # unused slots of the last block
        if ax is not None and not ax.images:
            ax.set_visible(False)
    return fig, axes


def plot_code_usage(histogram, title: str | None = None, ax: plt.Axes | None = None):
    """How often each code is used, most used first (log scale), with the codebook perplexity and dead codes.

    ``histogram``: counts per code, shape (K,) (``dvae.code_histogram``). Returns ``(fig, ax)``.
    """
    counts = np.asarray(histogram.cpu() if hasattr(histogram, "cpu") else histogram, dtype=np.float64)  # (K,)
    K = len(counts)
    order = np.sort(counts)[::-1]
    perplexity = histogram_perplexity(counts)
    dead = int((counts == 0).sum())
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 2.8))
    else:
        fig = ax.figure
    used = order[order > 0]
    ax.bar(np.arange(len(used)), used, width=1.0, color="#60a5fa")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, K - 0.5)
    ax.set_xlabel(f"codes, most used first (K = {K})")
    ax.set_ylabel("grid cells")
    if dead:
        ax.axvspan(len(used) - 0.5, K - 0.5, color="#fee2e2")
        ax.text((len(used) + K) / 2, ax.get_ylim()[1] ** 0.5, f"{dead} dead", ha="center", va="center",
                fontsize=9, color=BAD)
    ax.set_title(title if title is not None else
                 f"code usage: perplexity {perplexity:.1f}, {K - dead} of {K} codes used", fontsize=10, loc="left")
    fig.tight_layout()
    return fig, ax


def draw_code_patches(images, codes, code: int, max_patches: int = 24, context: int = 4, cols: int = 8,
                      axes=None):
    """The image patches that the encoder turns into ``code``: up to ``max_patches`` of them.

    Each patch is the cell (f × f pixels) plus ``context`` pixels around it,
    the cell outlined. ``images``: (N, H, W, 3) uint8 or (N, 3, H, W) float;
    ``codes``: (N, h, w). Returns ``(fig, axes)``.
    """
    imgs = to_uint8_images(images)  # (N, H, W, 3)
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)  # (N, h, w)
    H, h = imgs.shape[1], codes.shape[1]
    f = H // h
    where = code_locations(codes, code)
    shown = where[:max_patches]
    if axes is None:
        rows = max(1, (min(len(shown), max_patches) + cols - 1) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
    else:
        fig = np.asarray(axes).flat[0].figure
    axes = np.asarray(axes)
    padded = np.pad(imgs, ((0, 0), (context, context), (context, context), (0, 0)), constant_values=255)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (n, r, c) in zip(axes.flat, shown):
        y0, x0 = r * f, c * f  # the cell's corner; in the padded image the crop starts there
        ax.axis("on")
        frame(ax)
        ax.imshow(padded[n, y0: y0 + f + 2 * context, x0: x0 + f + 2 * context], interpolation="nearest")
        ax.add_patch(plt.Rectangle((context - 0.5, context - 0.5), f, f, fill=False, edgecolor=BAD, linewidth=1))
    n_images = len(np.unique(where[:, 0])) if len(where) else 0
    axes.flat[0].set_title(f"code {code}: {len(where)} cells in {n_images} images"
                           + (f" (the first {len(shown)})" if len(where) > len(shown) else ""), fontsize=9, loc="left")
    return fig, axes


def draw_codebook_explorer(images, codes, image_index: int = 0, code: int | None = None, max_patches: int = 24):
    """Left: one image with its h × w code map; right: the patches of all ``images`` that use ``code``.

    ``code`` defaults to the code that covers the most colour in the chosen image
    (``dvae.most_colourful_code``); the cells of the chosen image that use it are
    outlined. Returns ``(fig, axes)``.
    """
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)  # (N, h, w)
    grid = codes[image_index]  # (h, w)
    if code is None:
        code = most_colourful_code(images[image_index], grid)
    fig = plt.figure(figsize=(10, 4.2))
    cols = 6
    rows = max(1, (max_patches + cols - 1) // cols)
    spec = fig.add_gridspec(rows, 1 + cols, width_ratios=[cols * 0.9] + [1] * cols)
    ax_map = fig.add_subplot(spec[:, 0])
    cells = [tuple(rc) for rc in np.argwhere(grid == code)]
    draw_code_grid(images[image_index], grid, highlight=cells, ax=ax_map,
                   title=f"image {image_index}: its {grid.shape[0]}×{grid.shape[1]} codes")
    patch_axes = np.array([[fig.add_subplot(spec[r, 1 + c]) for c in range(cols)] for r in range(rows)])
    draw_code_patches(images, codes, code, max_patches=rows * cols, cols=cols, axes=patch_axes)
    fig.subplots_adjust(left=0.02, right=0.99, top=0.88, bottom=0.03, wspace=0.08, hspace=0.08)
    return fig, (ax_map, patch_axes)


def draw_code_edit(model, codes, row: int, col: int, new_code: int):
    """Change the code at ``(row, col)`` of one grid (h, w) and decode both: before, after, and what changed.

    ``model`` is a :class:`dalle_mini_impl.dvae.DVAE`. Returns ``(fig, axes)``.
    """
    codes = torch.as_tensor(codes).long().cpu()  # (h, w)
    edited = codes.clone()
    old = int(codes[row, col])
    edited[row, col] = new_code
    device = next(model.parameters()).device
    with torch.no_grad():
        before, after = model.decode(torch.stack([codes, edited]).to(device)).float().cpu()  # (C, H, W) each
    diff = (after - before).abs().amax(0).numpy()  # (H, W): the largest change over the colour channels
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    draw_code_grid(before, codes, highlight=[(row, col)], ax=axes[0], title=f"before: code {old} at ({row}, {col})")
    draw_code_grid(after, edited, highlight=[(row, col)], ax=axes[1], title=f"after: code {new_code}")
    im = axes[2].imshow(diff, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    cell = before.shape[-1] / codes.shape[1]
    axes[2].add_patch(plt.Rectangle((col * cell - 0.5, row * cell - 0.5), cell, cell, fill=False,
                                    edgecolor="#22d3ee", linewidth=1.5))
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"|after - before| (max {diff.max():.2f})", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig, axes
