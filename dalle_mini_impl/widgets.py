"""Live views for the lessons, built on the drawing functions of the ``viz_*`` modules.

Each widget wraps one tested drawing function; a lesson calls that function once
with defaults (the static picture nbval compares and GitHub shows) and then the
widget here for live use. What a view samples or grades is computed by the
module of its idea (:mod:`dalle_mini_impl.evaluate`, :mod:`dalle_mini_impl.dvae`)
and only drawn here. Only widgets common to ipywidgets 7.7 and 8 are used.

Every control shows its label in full, every text box is wide enough for its
default prompt, a slider over many values gets a long track (a short one jumps
hundreds of values per drag), and every slider starts on a value it can reach
(min + k·step): the browser would otherwise snap it and draw something else.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from ipywidgets import Dropdown, FloatSlider, IntSlider, Layout, Text, interact, interact_manual

from . import evaluate, viz_bpe, viz_clip, viz_dvae, viz_transformer
from .attention import MASK_KINDS
from .dvae import most_colourful_code
from .sampling import CONDITION_SCALE, TEMPERATURE

FULL_LABEL = {"description_width": "initial"}  # "temperature", "codes drawn": never cut to "temperat…"
LONG_RANGE = 50  # a slider over more values than this gets the wide track
WIDE, NARROW = "95%", "420px"  # slider widths: label, track and value together


def _slider(kind, value, low, high, description: str, step=1, **kwargs):
    """An ``IntSlider`` or ``FloatSlider`` from ``low`` to ``high``: the label in full, a track as its range needs."""
    wide = (high - low) / step > LONG_RANGE
    return kind(value=value, min=low, max=high, step=step, description=description, style=FULL_LABEL,
                layout=Layout(width=WIDE if wide else NARROW), **kwargs)


def _text(value: str, description: str, **kwargs) -> Text:
    """A text box that shows ``value`` whole (about 8 px a character, and room to type more)."""
    return Text(value=value, description=description, style=FULL_LABEL,
                layout=Layout(width=f"{max(560, 120 + 8 * len(value))}px"), **kwargs)


def _dropdown(options, value, description: str) -> Dropdown:
    return Dropdown(options=options, value=value, description=description, style=FULL_LABEL)


# ---------------------------------------------------------------------------
# Lesson 1: BPE
# ---------------------------------------------------------------------------


def tokenizer_explorer(tokenizer, text: str = "a small green square to the left of a large purple cross"):
    """Type text, see its tokens as coloured boxes with their ids."""

    def show(text: str):
        viz_bpe.draw_tokens(tokenizer.tokens(text), tokenizer.encode(text))
        plt.show()

    return interact(show, text=_text(text, "text", continuous_update=False))


def merge_slider(tokenizer, text: str = "a small green square to the left of a large purple cross"):
    """Slide through the merges: the vocabulary grows and the text is re-tokenized."""

    def show(k: int):
        viz_bpe.draw_merge_step(tokenizer, text, k)
        plt.show()

    slider = _slider(IntSlider, len(tokenizer.merges) // 4, 0, len(tokenizer.merges), "merges",
                     continuous_update=False)
    return interact(show, k=slider)


# ---------------------------------------------------------------------------
# Lesson 2: the dVAE
# ---------------------------------------------------------------------------


def gumbel_softmax_slider(logits, tau: float = 1.0, n_samples: int = 4, seed: int = 0):
    """Slide the temperature τ: the same gumbel-softmax samples sharpen towards one-hot as τ falls.

    The dropdown switches to the straight-through (``hard``) forward pass, which
    is exactly one-hot at every τ.
    """

    def show(tau: float, hard: bool):
        viz_dvae.draw_gumbel_softmax(logits, tau=tau, hard=hard, n_samples=n_samples, seed=seed)
        plt.show()

    return interact(show, tau=_slider(FloatSlider, tau, 0.05, 3.0, "τ", step=0.05, continuous_update=False),
                    hard=_dropdown([("soft", False), ("straight-through", True)], False, "forward"))


def _usage_options(codes, vocab_size: int) -> list[tuple[str, int]]:
    """Dropdown entries for the used codes, most used first: ``("code 17 (523 cells)", 17)``."""
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")
    return [(f"code {k} ({counts[k]} cells)", int(k)) for k in order if counts[k] > 0]


def codebook_explorer(images, codes, vocab_size: int, image_index: int = 0, code: int | None = None):
    """Pick an image to see its code map; pick a code to see every patch of ``images`` that uses it.

    ``images``: (N, H, W, 3) uint8 or (N, 3, H, W) float; ``codes``: their
    (N, h, w) codes from ``model.encode``. The code list is sorted by usage.
    """
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    options = _usage_options(codes, vocab_size)
    if code is None:  # the code covering the most colour in the first image
        code = most_colourful_code(images[image_index], codes[image_index])

    def show(image_index: int, code: int):
        viz_dvae.draw_codebook_explorer(images, codes, image_index=image_index, code=code)
        plt.show()

    return interact(show,
                    image_index=_slider(IntSlider, image_index, 0, len(codes) - 1, "image", continuous_update=False),
                    code=_dropdown(options, code, "code"))


def code_editor(model, codes, row: int = 3, col: int = 3, new_code: int = 0):
    """Change one code of a grid (h, w) and watch the decoded image change where, and only where, it should."""
    h, w = codes.shape[-2:]

    def show(row: int, col: int, new_code: int):
        viz_dvae.draw_code_edit(model, codes, row, col, new_code)
        plt.show()

    return interact(show,
                    row=_slider(IntSlider, row, 0, h - 1, "row", continuous_update=False),
                    col=_slider(IntSlider, col, 0, w - 1, "column", continuous_update=False),
                    new_code=_slider(IntSlider, new_code, 0, model.config.vocab_size - 1, "new code",
                                     continuous_update=False))


# ---------------------------------------------------------------------------
# Lesson 3: sparse attention and the transformer
# ---------------------------------------------------------------------------


def mask_explorer(text_len: int = 32, grid: int = 8, kernel: int = 5, kind: str = "row", query: int | None = None):
    """Pick a mask and a query position: see which text and image keys it may attend."""
    query = text_len + 3 * grid + 4 if query is None else query

    def show(kind: str, query: int):
        viz_transformer.draw_mask_explorer(kind, query, text_len, grid, kernel)
        plt.show()

    return interact(show,
                    kind=_dropdown(list(MASK_KINDS), kind, "mask"),
                    query=_slider(IntSlider, query, 0, text_len + grid * grid - 1, "query", continuous_update=False))


def attention_explorer(maps, text_len: int, grid: int, image=None, text_labels=None, mask_kinds=None,
                       layer: int = 0, head: int | None = None, cell: tuple[int, int] = (3, 4)):
    """Pick a layer, a head (or their mean) and a query cell: see where that query looks, on the grid and in the caption.

    ``maps``: ``model.attention_maps(text, codes)`` for one example (computed once, outside).
    """
    n_heads = maps[0].shape[-3]
    heads = [("mean of the heads", -1)] + [(f"head {h}", h) for h in range(n_heads)]

    def show(layer: int, head: int, row: int, col: int):
        viz_transformer.draw_attention_map(maps, layer, None if head < 0 else head, (row, col), text_len, grid, image,
                                           text_labels, mask_kinds)
        plt.show()

    return interact(show,
                    layer=_slider(IntSlider, layer, 0, len(maps) - 1, "layer", continuous_update=False),
                    head=_dropdown(heads, -1 if head is None else head, "head"),
                    row=_slider(IntSlider, cell[0], 0, grid - 1, "row", continuous_update=False),
                    col=_slider(IntSlider, cell[1], 0, grid - 1, "column", continuous_update=False))


def sampling_playground(model, dvae, tokenizer, prompt: str = "a large red circle in the top left", n: int = 8,
                        temperature: float = TEMPERATURE, top_k: int = 0, top_p: float = 1.0,
                        condition_scale: float = CONDITION_SCALE, seed: int = 0):
    """Type a prompt, set the knobs, press the button: n samples, each graded ✓ / ✗ by ``grader.grade``.

    ``evaluate.graded_samples`` samples and grades; ``viz_transformer.draw_graded_samples`` draws.
    top-k 0 and top-p 1.0 mean "off". Sampling takes a few seconds on a CPU, hence the button.
    """

    def show(prompt: str, temperature: float, top_k: int, top_p: float, condition_scale: float, seed: int):
        images, grades = evaluate.graded_samples(model, dvae, tokenizer, prompt, n, temperature, top_k, top_p,
                                                 condition_scale, seed)
        knobs = f"T = {temperature:g}, top-k {top_k or 'off'}, top-p {top_p if top_p < 1 else 'off'}, " \
                f"condition scale {condition_scale:g}, seed {seed}"
        viz_transformer.draw_graded_samples(images, grades,
                                            title=viz_transformer.samples_title(prompt, grades) + f"\n{knobs}")
        plt.show()

    return interact_manual(
        show,
        prompt=_text(prompt, "prompt"),
        temperature=_slider(FloatSlider, temperature, 0.1, 2.0, "temperature", step=0.05),
        top_k=_slider(IntSlider, top_k, 0, model.config.image_vocab_size, "top-k"),
        top_p=_slider(FloatSlider, top_p, 0.05, 1.0, "top-p", step=0.05),
        condition_scale=_slider(FloatSlider, condition_scale, 0.0, 8.0, "cond. scale", step=0.25),
        seed=_slider(IntSlider, seed, 0, 999, "seed"),
    )


def generation_slider(dvae, codes, fill_code: int, step: int = 32):
    """Slide through a sampled grid as it was drawn: the first k codes decoded, the rest not drawn yet."""
    flat = codes.flatten()

    def show(k: int):
        viz_transformer.draw_generation_strip(dvae, [flat[:k]], fill_code, scale=3.0)
        plt.show()

    return interact(show, k=_slider(IntSlider, step, 0, len(flat), "codes drawn", continuous_update=False))


# ---------------------------------------------------------------------------
# Lesson 4: CLIP and reranking
# ---------------------------------------------------------------------------

CANDIDATE_COUNTS = (1, 2, 4, 8, 16, 32)  # N, the number of candidates, in powers of two as in the DALL·E paper


def reranking_viewer(models, prompt: str = "a large red circle in the top left", candidates: int = 16,
                     seed: int = 0):
    """Type a prompt, pick N and a seed: N candidates sampled, sorted by CLIP, each graded.

    ``models``: ``pipeline.load_models()``. ``evaluate.graded_candidates``
    samples, reranks and grades, ``viz_clip.draw_generation`` draws, so a
    (prompt, N, seed) triple always shows the same images.
    """

    def show(prompt: str, candidates: int, seed: int):
        if not prompt.strip():
            print("type a prompt, e.g. 'a small blue square at the bottom'")
            return
        c = evaluate.graded_candidates(models, prompt, candidates=candidates, seed=seed)
        viz_clip.draw_generation(c.prompt, c.images, c.scores, c.grades, seed=seed)
        plt.show()

    return interact(show, prompt=_text(prompt, "prompt", continuous_update=False),
                    candidates=_dropdown(list(CANDIDATE_COUNTS), candidates, "N"),
                    seed=_slider(IntSlider, seed, 0, 99, "seed", continuous_update=False))


# ---------------------------------------------------------------------------
# Capstone (lesson 5): the prompt playground
# ---------------------------------------------------------------------------

TOP_K_OPTIONS = [("off", 0), ("8", 8), ("32", 32), ("64", 64), ("128", 128), ("256", 256)]


def prompt_playground(models, prompt: str = "a small green square to the left of a large purple cross",
                      candidates: int = 16, keep: int = 4, temperature: float = TEMPERATURE, top_k: int | None = None,
                      condition_scale: float = CONDITION_SCALE, seed: int = 0):
    """Every knob of ``pipeline.generate``: prompt, N, K, temperature, top-k, condition scale and seed → the best K.

    Sampling takes a moment, so nothing runs until the button is pressed
    (``interact_manual``). ``evaluate.graded_candidates`` samples, reranks and
    grades; ``viz_clip.draw_generation`` draws each kept image with its CLIP
    score and the grader's verdict.
    """

    def show(prompt: str, candidates: int, keep: int, temperature: float, top_k: int, condition_scale: float,
             seed: int):
        if not prompt.strip():
            print("type a prompt, e.g. 'a large red circle in the top left'")
            return
        if keep > candidates:
            print(f"K = {keep} is more than N = {candidates}: showing all {candidates}")
            keep = candidates
        c = evaluate.graded_candidates(models, prompt, candidates=candidates, seed=seed, temperature=temperature,
                                       top_k=top_k or None, condition_scale=condition_scale)
        viz_clip.draw_generation(c.prompt, c.images, c.scores, c.grades, keep=keep, seed=seed, cols=min(keep, 8))
        plt.show()

    return interact_manual(
        show,
        prompt=_text(prompt, "prompt"),
        candidates=_dropdown(list(CANDIDATE_COUNTS), candidates, "N"),
        keep=_slider(IntSlider, keep, 1, 16, "K"),
        temperature=_slider(FloatSlider, temperature, 0.3, 2.0, "temperature", step=0.05),
        top_k=_dropdown(TOP_K_OPTIONS, top_k or 0, "top-k"),
        condition_scale=_slider(FloatSlider, condition_scale, 0.0, 8.0, "cond. scale", step=0.25),
        seed=_slider(IntSlider, seed, 0, 99, "seed"),
    )
