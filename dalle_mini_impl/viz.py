"""Static pictures for the lessons: every function draws with matplotlib and returns ``(fig, ax)``.

The same functions serve the static output a notebook stores (seen on GitHub
and compared by nbval) and the live widgets in :mod:`dalle_mini_impl.widgets`,
which only call them again with new arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from .sampling import CONDITION_SCALE, TEMPERATURE
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


# ---------------------------------------------------------------------------
# Lesson 2: the dVAE (images <-> 8×8 grids of codes)
# ---------------------------------------------------------------------------
# Letters in shape comments: N images, H = W = 64 pixels, h = w = 8 grid cells,
# K codes in the codebook, C = 3 colour channels.

GOOD, BAD = "#15803d", "#dc2626"  # green ✓ and red ✗ under graded images


def to_hwc_uint8(images) -> np.ndarray:
    """Images as uint8 ``(N, H, W, 3)``: accepts that already, or float ``(N, 3, H, W)`` in [0, 1] (tensor or array).

    Example: a float tensor of shape (2, 3, 64, 64) -> a uint8 array of shape (2, 64, 64, 3).
    """
    arr = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images)
    if arr.ndim == 3:  # one image
        return to_hwc_uint8(arr[None])[0]
    if arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def draw_code_grid(image, codes=None, highlight=None, title: str | None = None, fontsize: float = 6.5,
                   ax: plt.Axes | None = None):
    """One image with the dVAE's grid drawn over it, and each cell's code id when ``codes`` (h, w) is given.

    ``highlight``: cells ``(row, col)`` to outline in red. Returns ``(fig, ax)``.
    """
    img = to_hwc_uint8(image)  # (H, W, 3)
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

    The noise is drawn from ``seed`` (without touching the global random state), so
    every ``tau`` shows the *same* samples: lowering ``tau`` sharpens each one
    towards the one-hot vector of its gumbel-max winner (drawn darker). The last
    panel is the mean largest entry of a sample against ``tau`` (averaged over
    2,000 samples), with ``tau`` marked. Returns ``(fig, axes)``.
    """
    import torch

    from .dvae import gumbel_softmax

    logits = torch.as_tensor(logits, dtype=torch.float32).flatten()  # (K,)
    K = len(logits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = gumbel_softmax(logits.expand(n_samples, K), tau, hard=hard, dim=-1)  # (n_samples, K)
    taus = np.geomspace(0.05, 5.0, 25) if taus is None else np.asarray(taus)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        many = logits.expand(2000, K)
        sharpness = [float(gumbel_softmax(many, float(t), dim=-1).max(-1).values.mean()) for t in taus]

    fig, axes = plt.subplots(1, n_samples + 2, figsize=(2.0 * (n_samples + 2), 2.3),
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


def plot_pixel_losses(pixel: float = 1.0, eps: float = 0.1, log_bs=(-2.0, -1.0, 0.0)):
    """The loss of one pixel value as a function of the prediction: logit-Laplace (left) vs squared error (right).

    The decoder predicts μ (and ln b) in logit space; the picture it paints is
    x̂ = φ⁻¹(sigmoid(μ)), which ranges over (-ε/(1-2ε), 1 + ε/(1-2ε)) and is
    clamped to [0, 1] only for display. Left: -ln p(φ(pixel) | μ, b) against x̂
    for a few scales b; right: (x̂ - pixel)². Returns ``(fig, axes)``.
    """
    import torch

    from .dvae import logit_laplace_log_prob, map_pixels

    mu = torch.linspace(-6, 6, 601)  # (M,) predictions in logit space
    x_hat = (torch.sigmoid(mu) - eps) / (1 - 2 * eps)  # the predicted pixel, before clamping
    target = map_pixels(torch.tensor(float(pixel)), eps)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for log_b, color in zip(log_bs, ["#1d4ed8", "#7c3aed", "#db2777", "#ea580c"]):
        nll = -logit_laplace_log_prob(target.expand_as(mu), mu, torch.full_like(mu, log_b))
        axes[0].plot(x_hat.numpy(), nll.numpy(), color=color, label=f"b = {np.exp(log_b):.2f}")
    axes[0].set_ylabel("-ln p(x | μ, b)")
    axes[0].legend(fontsize=8)
    axes[1].plot(x_hat.numpy(), ((x_hat - pixel) ** 2).numpy(), color="#0f766e")
    axes[1].set_ylabel("(x̂ - x)²")
    for ax, name in zip(axes, ["logit-Laplace", "squared error"]):
        ax.axvline(pixel, color="#64748b", linestyle=":", linewidth=1)
        ax.axvspan(float(x_hat.min()), 0, color="#e5e7eb")
        ax.axvspan(1, float(x_hat.max()), color="#e5e7eb")
        ax.set_xlabel("predicted pixel x̂ = φ⁻¹(sigmoid(μ))")
        ax.set_title(f"{name}, true pixel x = {pixel:g}", fontsize=10, loc="left")
    fig.tight_layout()
    return fig, axes


def plot_training(history: dict | None, config, total_steps: int):
    """A dVAE run: the loss (if ``history`` has any) and the τ, β and learning-rate schedules over ``total_steps``.

    ``history``: ``{"loss": [...], "recon": [...], "kl": [...]}``, one entry per
    step (``kl`` is the unweighted KL term); ``None`` draws the schedules only.
    ``config`` is a :class:`dalle_mini_impl.dvae.DVAEConfig`. Returns ``(fig, axes)``.
    """
    from .dvae import kl_weight_at, lr_at, tau_at

    steps = np.arange(total_steps + 1)
    has_loss = bool(history and history.get("loss"))
    fig, axes = plt.subplots(1, 3 if has_loss else 2, figsize=(12 if has_loss else 8.5, 2.8))
    axes = np.atleast_1d(axes)
    if has_loss:
        ax = axes[0]
        if history.get("recon"):
            ax.plot(history["recon"], color="#f59e0b", label="recon", linewidth=2.5, alpha=0.5)
        ax.plot(history["loss"], color="#1d4ed8", label="loss = recon + β·kl", linewidth=1)
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


def draw_reconstructions(originals, reconstructions, captions: Sequence[str] | None = None,
                         matches: Sequence[bool] | None = None, cols: int = 8, scale: float = 1.3):
    """Originals above their reconstructions, the caption over each pair and the grader's verdict under it.

    ``matches[i]`` is True when the grader reads ``captions[i]`` back off the
    reconstruction (✓, green) and False when not (✗, red). Images: uint8
    (N, H, W, 3) or float (N, 3, H, W) in [0, 1]. Returns ``(fig, axes)`` with
    ``axes`` of shape (2 · blocks, cols): originals on even rows, reconstructions on odd rows.
    """
    import textwrap

    top, bottom = to_hwc_uint8(originals), to_hwc_uint8(reconstructions)
    n = len(top)
    if len(bottom) != n:
        raise ValueError(f"got {n} originals but {len(bottom)} reconstructions: pass one reconstruction per original")
    cols = min(cols, n)
    blocks = (n + cols - 1) // cols
    # Lay out in inches: per block a caption band, two images and a verdict band.
    cap = 0.32 if captions is not None else 0.05
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
            ax_o.text(0.5, 1.02, "\n".join(textwrap.wrap(captions[i], 24)), transform=ax_o.transAxes, ha="center",
                      va="bottom", fontsize=5.5)
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
    p = counts / max(counts.sum(), 1)
    perplexity = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
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


def code_locations(codes, code: int) -> np.ndarray:
    """Where ``code`` occurs in a stack of code grids (N, h, w): an array of ``(image, row, col)`` rows.

    Example: codes [[[1, 2], [2, 3]]], code 2 -> [[0, 0, 1], [0, 1, 0]].
    """
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    return np.argwhere(codes == code)


def draw_code_patches(images, codes, code: int, max_patches: int = 24, context: int = 4, cols: int = 8,
                      axes=None):
    """The image patches that the encoder turns into ``code``: up to ``max_patches`` of them.

    Each patch is the cell (f × f pixels) plus ``context`` pixels around it,
    the cell outlined. ``images``: (N, H, W, 3) uint8 or (N, 3, H, W) float;
    ``codes``: (N, h, w). Returns ``(fig, axes)``.
    """
    imgs = to_hwc_uint8(images)  # (N, H, W, 3)
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
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#cbd5e1")
        ax.imshow(padded[n, y0: y0 + f + 2 * context, x0: x0 + f + 2 * context], interpolation="nearest")
        ax.add_patch(plt.Rectangle((context - 0.5, context - 0.5), f, f, fill=False, edgecolor=BAD, linewidth=1))
    n_images = len(np.unique(where[:, 0])) if len(where) else 0
    axes.flat[0].set_title(f"code {code}: {len(where)} cells in {n_images} images"
                           + (f" (the first {len(shown)})" if len(where) > len(shown) else ""), fontsize=9, loc="left")
    return fig, axes


def most_colourful_code(image, grid) -> int:
    """The code of ``grid`` (h, w) whose cells hold the most colour (distance from white) in ``image``.

    A sensible first code to look at: on Shapes, the most frequent code of an
    image is usually plain background. Example: a white image with one red cell
    -> the code of that cell.
    """
    img = to_hwc_uint8(image).astype(np.float64)  # (H, W, 3)
    grid = np.asarray(grid.cpu() if hasattr(grid, "cpu") else grid)  # (h, w)
    h, w = grid.shape
    ink = (255.0 - img).sum(axis=-1)  # (H, W): 0 on white
    per_cell = ink.reshape(h, img.shape[0] // h, w, img.shape[1] // w).sum(axis=(1, 3))  # (h, w)
    totals: dict[int, float] = {}  # code -> colour in its cells
    for code, amount in zip(grid.flat, per_cell.flat):
        totals[int(code)] = totals.get(int(code), 0.0) + float(amount)
    return max(totals, key=lambda c: (totals[c], -c))


def draw_codebook_explorer(images, codes, image_index: int = 0, code: int | None = None, max_patches: int = 24):
    """Left: one image with its h × w code map; right: the patches of all ``images`` that use ``code``.

    ``code`` defaults to the code that covers the most colour in the chosen image
    (``most_colourful_code``); the cells of the chosen image that use it are
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
    import torch

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


# ---------------------------------------------------------------------------
# Lesson 3: sparse attention and the transformer
# ---------------------------------------------------------------------------
# Letters in shape comments: Lt text positions, G grid side, N = G·G image codes,
# S = Lt + N positions, T positions given to the model (<= S), nh heads, L layers.
# A query "holds" the token at its position and predicts the next one: the query
# at position Lt + i holds code i, at cell (i // G, i % G).

# The states of a key in the mask explorer, and their colours.
KEY_BLOCKED, KEY_ALLOWED, KEY_SELF, KEY_FUTURE = 0, 1, 2, 3
KEY_COLORS = ["#f1f5f9", "#60a5fa", "#f97316", "#cbd5e1"]


def _as_numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def draw_mask(mask, text_len: int, title: str | None = None, ax: plt.Axes | None = None):
    """A boolean attention mask (S, S) as a matrix: row q is a query position, column k a key, blue = may attend.

    Red lines split the text and image blocks, as in the paper's Fig. 11. Returns ``(fig, ax)``.
    """
    from matplotlib.colors import ListedColormap

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
    for kind, mask in masks.items():
        counts = _as_numpy(mask).astype(bool)[text_len:].sum(axis=1)  # (N,) keys per image query
        ax.plot(np.arange(len(counts)), counts, color=colors.get(kind), label=f"{kind} (mean {counts.mean():.1f})",
                linewidth=1.2, linestyle=":" if kind == "causal" else "-")
    ax.set_xlabel("image query: the code it holds (raster order)")
    ax.set_ylabel("keys it may attend")
    ax.set_ylim(0, 1.3 * max(int(_as_numpy(m).astype(bool)[text_len:].sum(axis=1).max()) for m in masks.values()))
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig, ax


def key_states(kind: str, query: int, text_len: int, grid: int, kernel: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """What query position ``query`` may attend under mask ``kind``: (text states (Lt,), image states (G, G)).

    Each key is ``KEY_ALLOWED``, ``KEY_SELF`` (the query's own position),
    ``KEY_FUTURE`` (a later position, never visible) or ``KEY_BLOCKED`` (earlier,
    but outside the mask). Example (row, 4×4 grid, query holding code 5):
    image states [[0, 1, 1, 1], [1, 2, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]].
    """
    from .attention import build_mask

    S = text_len + grid * grid
    if not 0 <= query < S:
        raise ValueError(f"query must be a position in [0, {S}), got {query}")
    allowed = build_mask(kind, text_len, grid, kernel)[query].numpy()  # (S,)
    positions = np.arange(S)
    states = np.where(allowed, KEY_ALLOWED, KEY_BLOCKED)
    states[positions > query] = KEY_FUTURE
    states[query] = KEY_SELF
    return states[:text_len], states[text_len:].reshape(grid, grid)


def draw_mask_explorer(kind: str = "row", query: int | None = None, text_len: int = 32, grid: int = 8,
                       kernel: int = 5, text_labels=None):
    """One row of a layer's mask: which text and image keys query position ``query`` may attend.

    Top: the Lt text keys; left: the G × G image keys on the grid (blue =
    allowed, orange = the query's own cell, grey = later cells, which no mask
    shows); a ★ marks the cell this query predicts. Right: the whole S × S mask
    with the query's row outlined. ``query`` defaults to the position holding
    cell (3, 4). Returns ``(fig, (ax_text, ax_grid, ax_mask))``.
    """
    from matplotlib.colors import ListedColormap

    from .attention import build_mask

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
    from matplotlib.patches import Patch

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
                       text_len: int = 32, grid: int = 8, image=None, text_labels=None, mask_kinds=None):
    """Where one query looks: the attention probabilities of the position holding ``cell``, in one layer.

    ``maps``: ``model.attention_maps(text, codes)`` for one example, a list of
    L tensors (1, nh, T, T) or (nh, T, T), T = Lt + N. ``head`` None averages
    the heads. Left: the weights on the image keys as a heat map over the grid
    (over ``image`` when given; later cells, which the query cannot see, stay
    clear), the query's cell outlined. Right: the weights on the caption's
    tokens (``text_labels``, one per text position). Returns ``(fig, (ax_grid, ax_text))``.
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
    vmax = max(float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0, 1e-6)
    if image is not None:
        img = to_hwc_uint8(image)  # (H, W, 3)
        H = img.shape[0]
        ax_grid.imshow(img.mean(axis=-1), cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # grey, under the heat
        im = ax_grid.imshow(heat, cmap="magma", vmin=0, vmax=vmax, alpha=0.7, extent=(-0.5, H - 0.5, H - 0.5, -0.5),
                            interpolation="nearest")
        cell_px = H / grid
    else:
        im = ax_grid.imshow(heat, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        cell_px = 1.0
    ax_grid.add_patch(plt.Rectangle((c * cell_px - 0.5, r * cell_px - 0.5), cell_px, cell_px, fill=False,
                                    edgecolor="#22d3ee", linewidth=2))
    ax_grid.set_xticks([])
    ax_grid.set_yticks([])
    fig.colorbar(im, ax=ax_grid, fraction=0.046, pad=0.03)
    kind = f" ({mask_kinds[layer]})" if mask_kinds is not None else ""
    who = "mean of the heads" if head is None else f"head {head}"
    ax_grid.set_title(f"layer {layer}{kind}, {who}\nimage keys: {np.nansum(image_part):.0%}", fontsize=9)

    x = np.arange(text_len)
    ax_text.bar(x, text_part, color="#60a5fa")
    labels = [visible(t) for t in text_labels] if text_labels is not None else [str(i) for i in x]
    ax_text.set_xticks(x, labels, rotation=90, fontsize=7)
    ax_text.set_xlim(-0.6, text_len - 0.4)
    ax_text.set_ylabel("attention")
    ax_text.set_title(f"query at cell ({r}, {c}): text keys {text_part.sum():.0%}", fontsize=9, loc="left")
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


def _frame(ax: plt.Axes) -> None:
    """No ticks, a thin grey frame: white Shapes images need an edge to be seen."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cbd5e1")


def _verdict(grade) -> tuple[str, str]:
    """A grade (``grader.Grade``, a bool, or None) -> (mark, colour): ✓ green, ✗ red, ? grey (not gradable)."""
    if grade is None or (hasattr(grade, "gradable") and not grade.gradable):
        return "?", "#64748b"
    ok = bool(grade.match if hasattr(grade, "match") else grade)
    return ("✓", GOOD) if ok else ("✗", BAD)


def draw_graded_samples(images, grades=None, title: str | None = None, cols: int = 8, scale: float = 1.3):
    """Images in a grid with the grader's verdict under each: ✓ (match), ✗ (no match) or ? (cannot be graded).

    ``grades``: one ``grader.Grade`` (or bool, or None) per image. Returns ``(fig, axes)``.
    """
    imgs = to_hwc_uint8(images)  # (n, H, W, 3)
    n = len(imgs)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * (scale + 0.3) + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        _frame(ax)
        if i >= n:
            ax.set_visible(False)
        else:
            ax.imshow(imgs[i], interpolation="nearest")
            if grades is not None:
                mark, color = _verdict(grades[i])
                ax.text(0.5, -0.04, mark, transform=ax.transAxes, ha="center", va="top", fontsize=12, color=color)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig, axes


def playground_samples(model, dvae, tokenizer, prompt: str, n: int = 8, temperature: float = TEMPERATURE, top_k: int = 0,
                       top_p: float = 1.0, condition_scale: float = CONDITION_SCALE, seed: int = 0):
    """Sample ``n`` images for ``prompt`` and grade each: returns (uint8 images (n, H, W, 3), list of ``grader.Grade``).

    ``top_k`` 0 and ``top_p`` 1.0 mean "off". The same (prompt, knobs, seed) always gives the same images.
    """
    import torch

    from . import grader
    from .sampling import sample_images
    from .transformer import encode_captions

    device = model.image_head.weight.device
    text = encode_captions(tokenizer, [prompt], model.config.text_len).repeat(n, 1)  # (n, Lt)
    generator = torch.Generator(device=device).manual_seed(seed)
    images, _ = sample_images(model, dvae, text, temperature=temperature, top_k=top_k or None,
                              top_p=top_p if top_p < 1.0 else None, condition_scale=condition_scale,
                              generator=generator)  # (n, H, W, 3)
    return images, [grader.grade(image, prompt) for image in images]


def samples_title(prompt: str, grades) -> str:
    """``'a red circle' — 3 of 8 match`` (or a note that the prompt cannot be graded)."""
    if grades and not grades[0].gradable:
        return f"{prompt!r}: outside the Shapes grammar, not graded"
    return f"{prompt!r}: {sum(g.match for g in grades)} of {len(grades)} match"


def draw_sampling_playground(model, dvae, tokenizer, prompt: str, n: int = 8, temperature: float = TEMPERATURE,
                             top_k: int = 0, top_p: float = 1.0, condition_scale: float = CONDITION_SCALE, seed: int = 0):
    """``playground_samples`` drawn: n samples for ``prompt`` with the knobs given, each graded ✓ / ✗.

    Returns ``(fig, axes)``.
    """
    images, grades = playground_samples(model, dvae, tokenizer, prompt, n, temperature, top_k, top_p,
                                        condition_scale, seed)
    knobs = f"T = {temperature:g}, top-k {top_k or 'off'}, top-p {top_p if top_p < 1 else 'off'}, " \
            f"condition scale {condition_scale:g}, seed {seed}"
    return draw_graded_samples(images, grades, title=samples_title(prompt, grades) + f"\n{knobs}")


def partial_grids(prefixes, grid: int, fill_code: int):
    """Code prefixes (each (k,), the first k codes in raster order) -> full grids (P, G, G), the rest ``fill_code``.

    Example (grid 2, fill 0): [[5], [5, 6, 7]] -> [[[5, 0], [0, 0]], [[5, 6], [7, 0]]].
    """
    import torch

    grids = torch.full((len(prefixes), grid * grid), int(fill_code), dtype=torch.long)  # (P, N)
    for p, prefix in enumerate(prefixes):
        prefix = torch.as_tensor(prefix).long().flatten()
        grids[p, :len(prefix)] = prefix
    return grids.view(len(prefixes), grid, grid)


def draw_generation_strip(dvae, prefixes, fill_code: int, scale: float = 1.25):
    """The grid as it fills: each prefix of codes decoded, cells not drawn yet filled with ``fill_code`` and greyed.

    ``prefixes``: code prefixes in raster order (e.g. what ``sample``'s
    callback saw after some steps). Returns ``(fig, axes)``.
    """
    import torch

    grid = dvae.config.grid_size
    grids = partial_grids(prefixes, grid, fill_code)  # (P, G, G)
    device = next(dvae.parameters()).device
    with torch.no_grad():
        images = to_hwc_uint8(dvae.decode(grids.to(device)).float().cpu())  # (P, H, W, 3)
    P, H = len(grids), images.shape[1]
    cell = H / grid
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
        _frame(ax)
    fig.tight_layout()
    return fig, axes


# ---------------------------------------------------------------------------
# Lesson 4: CLIP and reranking
# ---------------------------------------------------------------------------
# Letters in shape comments: B pairs in a batch, N images, M captions,
# k images shown per caption, P prompts.

UNGRADABLE = "#64748b"  # grey "?" under an image whose prompt is outside the Shapes grammar


def verdict_label(grade) -> tuple[str, str]:
    """What to write under a graded image, and in which colour.

    ``grade``: a :class:`dalle_mini_impl.grader.Grade`, a bool, or None (not graded).
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
    return "✗ " + ", ".join(failed), BAD


def _thumbnail(ax: plt.Axes, image, xy, zoom: float) -> None:
    """Place a small image centred at data point ``xy`` of ``ax`` (drawn outside the axes if need be)."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

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
    import textwrap

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
        imgs = to_hwc_uint8(images)
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
    from .clip import attribute_values

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
    from .clip import attribute_values

    imgs = to_hwc_uint8(images)
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
    Returns ``(fig, axes)``.
    """
    import textwrap

    imgs = to_hwc_uint8(images)
    n = len(imgs)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    # Lay out in inches: per row a label band, the images and a verdict band (two short lines).
    top, bottom = 0.2, (0.36 if grades is not None else 0.05)
    gap = 0.08
    width = cols * (scale + gap) + gap
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
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        for spine in ax.spines.values():  # a thin frame: a white image on a white page stays visible
            spine.set_color("#cbd5e1")
        ax.imshow(imgs[i], interpolation="nearest")
        label = labels[i] if labels is not None else f"#{i + 1}"
        ax.set_title(label + (f"  {float(scores[i]):.3f}" if scores is not None else ""), fontsize=7, pad=2)
        if grades is not None:
            text, color = verdict_label(grades[i])
            ax.text(0.5, -0.03, "\n".join(textwrap.wrap(text, 22)) or " ", transform=ax.transAxes, ha="center",
                    va="top", color=color, fontsize=9 if len(text) <= 2 else 6, linespacing=1.0)
    if title:
        fig.text(gap / width, 1 - 0.06 / height, "\n".join(title_lines), fontsize=9, ha="left", va="top")
    return fig, axes


def draw_retrieval(captions: Sequence[str], images, sims, k: int = 5, scale: float = 1.05):
    """Text -> image retrieval: per caption (a row), its ``k`` most similar images, best first.

    ``sims``: (N, M) similarities of N images with M captions (column j =
    caption j); ``images``: the N images. Above each retrieved image its score,
    under it whether the grader finds the caption in it (✓/✗), so a vague
    caption's several right answers all count. Returns ``(fig, axes)`` of shape (M, k).
    """
    import textwrap

    from . import grader

    imgs = to_hwc_uint8(images)
    s = np.asarray(sims.detach().cpu().float() if hasattr(sims, "detach") else sims, dtype=np.float64)  # (N, M)
    if s.shape != (len(imgs), len(captions)):
        raise ValueError(f"sims must be (images, captions) = ({len(imgs)}, {len(captions)}), got {s.shape}")
    k = min(k, len(imgs))
    M = len(captions)
    fig, axes = plt.subplots(M, k + 1, figsize=(2.3 + k * scale, M * (scale + 0.3)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.3 / scale] + [1] * k})
    for j, caption in enumerate(captions):
        axes[j, 0].axis("off")
        axes[j, 0].text(1.0, 0.5, "\n".join(textwrap.wrap(caption, 26)), ha="right", va="center", fontsize=8,
                        transform=axes[j, 0].transAxes)
        order = np.argsort(-s[:, j], kind="stable")[:k]
        for r, i in enumerate(order):
            ax = axes[j, 1 + r]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{s[i, j]:.3f}", fontsize=7, pad=2)
            text, color = verdict_label(grader.grade(imgs[i], caption).match)
            ax.set_xlabel(text, color=color, fontsize=9, labelpad=1)
            for spine in ax.spines.values():
                spine.set_color("#cbd5e1")
    fig.text(0.99, 1 - 0.06 / fig.get_figheight(), f"for each caption, the {k} most similar of {len(imgs)} images, "
             "best first", fontsize=8,
             ha="right", va="top")
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.42 / height, bottom=0.18 / height, wspace=0.08,
                        hspace=0.3 / scale + 0.15)
    return fig, axes


def draw_generation(models, prompt: str = "a large red circle in the top left", candidates: int = 16,
                    keep: int | None = None, seed: int = 0, temperature: float = TEMPERATURE, top_k: int | None = None,
                    top_p: float | None = None, condition_scale: float = CONDITION_SCALE, cols: int = 8,
                    device: str | None = None):
    """Sample ``candidates`` images for ``prompt``, rerank them with CLIP, and draw the best ``keep`` (all by default).

    ``models``: a :class:`dalle_mini_impl.pipeline.Models`
    (``pipeline.load_models()``). Each image is drawn with its rank, its CLIP
    score and the grader's verdict (✓, ✗ with the failed checks, or ? when the
    prompt is outside the Shapes grammar); without a CLIP model the images stay
    in sampling order. The title counts the ✓ among all candidates and among
    those shown. Returns ``(fig, axes)``.
    """
    from . import grader, pipeline

    keep = candidates if keep is None else keep
    result = pipeline.generate(prompt, models.transformer, models.dvae, models.tokenizer, candidates=candidates,
                               keep=candidates, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                               condition_scale=condition_scale, clip_model=models.clip, device=device)[0]
    grades = [grader.grade(image, prompt) for image in result.images]
    ranked = result.scores is not None
    shown = (f"{candidates} candidates" if keep == candidates else f"the best {keep} of {candidates} candidates") \
        if ranked else f"{keep} of {candidates} candidates in sampling order (no CLIP model)"
    shown += f" (seed {seed})" + (", best first by CLIP" if ranked and keep == candidates else "")
    if grades and not grades[0].gradable:
        verdict = "outside the Shapes grammar, so not graded (?)"
    else:
        verdict = f"{sum(g.match for g in grades)} of {candidates} ✓"
        if keep < candidates:
            verdict += f", {sum(g.match for g in grades[:keep])} of the {keep} shown"
        elif ranked:
            verdict += f"; the top one {'✓' if grades[0].match else '✗'}"
    scores = result.scores[:keep] if ranked else None
    title = f"“{prompt}”: {shown} — {verdict}"
    return draw_scored_images(result.images[:keep], scores, grades[:keep], title=title, cols=cols)


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


# ---------------------------------------------------------------------------
# Capstone (lesson 5): the whole pipeline, evaluated
# ---------------------------------------------------------------------------
# Reports are those of dalle_mini_impl.evaluate.evaluate_pipeline; grades are
# dalle_mini_impl.grader.Grade objects. The prompt playground draws with
# draw_generation (lesson 4).

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
    fig, axes = plt.subplots(1, len(reports), figsize=(5.4 * len(reports), 3.3), squeeze=False, sharey=True)
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


NO_OBJECT = "no object found to check it"  # a colour, shape, ... check that failed because an object is missing


def failure_reasons(grade) -> dict[str, str]:
    """The grader's failures by check: only the failed checks, each with its own explanation.

    Example: a grade that failed on colour and size ->
    ``{"color": "expected red, found orange", "size": "expected large, found a box side of 18 px (small)"}``.
    A check that failed because the caption's object was not found at all gets ``NO_OBJECT``.
    """
    if grade.match or not grade.gradable:
        return {}
    out: dict[str, str] = {}
    for failure in grade.failures:  # the grader's failures, as data
        text = f"expected {failure.expected}, found {failure.found}"
        out[failure.check] = f"{out[failure.check]}; {text}" if failure.check in out else text
    for name, ok in grade.checks.items():  # a failed check with no failure of its own: its object was not found
        if ok is False and name not in out:
            out[name] = NO_OBJECT
    return out


def failure_counts(grades) -> dict[str, int]:
    """How many of the (gradable) ``grades`` fail each check of ``grader.CHECKS``, most frequent first.

    An image can fail several checks at once. Example: grades with checks
    {color: False, shape: True, ...} and {color: False, shape: False, ...} ->
    {"color": 2, "shape": 1, "count": 0, ...}.
    """
    from . import grader

    counts = {name: sum(g.gradable and g.checks[name] is False for g in grades) for name in grader.CHECKS}
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def draw_failure_gallery(images, captions: Sequence[str], grades, per_check: int = 4, scale: float = 1.1):
    """What breaks: one row per check that failed, most frequent first, with examples.

    Left of each row, how many of the images fail that check (out of those
    whose caption states it); then up to ``per_check`` images that fail it,
    with their caption above and the grader's explanation for that check below.
    ``images``: one per caption (e.g. CLIP's top-1); ``grades``: their
    ``grader.grade``. Returns ``(fig, axes)``; a gallery without failures draws one line saying so.
    """
    import textwrap

    imgs = to_hwc_uint8(images)
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
    cap_h, why_h, gap = 0.42, 0.42, 0.1
    row_h = cap_h + scale + why_h + gap
    label_w = 1.5
    width = label_w + per_check * (scale + 0.35) + 0.1
    height = rows * row_h + 0.1
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((rows, per_check + 1), dtype=object)
    reasons = [failure_reasons(g) for g in grades]
    explained = [{k for k, v in why.items() if v != NO_OBJECT} for why in reasons]
    shown: set[int] = set()
    for r, (name, n) in enumerate(counts.items()):
        y0 = height - 0.05 - r * row_h - cap_h - scale
        stated = sum(g.gradable and g.checks[name] is not None for g in grades)
        ax = axes[r, 0] = fig.add_axes([0.05 / width, y0 / height, (label_w - 0.1) / width, scale / height])
        ax.axis("off")
        ax.text(0.0, 0.6, name, fontsize=11, weight="bold", va="center", color=BAD)
        ax.text(0.0, 0.35, f"fails in {n} of {stated}\nimages that state it", fontsize=7.5, va="center")
        failing = [i for i, g in enumerate(grades) if g.gradable and g.checks[name] is False]
        # examples whose failure the grader explains for this very check first, then ones not shown yet
        failing.sort(key=lambda i: (name not in explained[i], i in shown))
        failing = failing[:per_check]
        shown.update(failing)
        for c in range(per_check):
            x0 = label_w + c * (scale + 0.35)
            ax = axes[r, 1 + c] = fig.add_axes([x0 / width, y0 / height, scale / width, scale / height])
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(failing):
                ax.set_visible(False)
                continue
            i = failing[c]
            for spine in ax.spines.values():
                spine.set_color("#cbd5e1")
            ax.imshow(imgs[i], interpolation="nearest")
            ax.text(0.5, 1.03, "\n".join(textwrap.wrap(captions[i], 26)[:3]), transform=ax.transAxes, ha="center",
                    va="bottom", fontsize=5.5)
            why = reasons[i].get(name, "")
            ax.text(0.5, -0.03, "\n".join(textwrap.wrap(why, 30)[:3]), transform=ax.transAxes, ha="center",
                    va="top", fontsize=5.2, color=BAD)
    return fig, axes
