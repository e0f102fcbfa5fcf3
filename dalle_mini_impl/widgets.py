"""Live views for the lessons, built on the drawing functions of :mod:`dalle_mini_impl.viz`.

Each widget wraps one tested drawing function; a lesson calls that function once
with defaults (the static picture nbval compares and GitHub shows) and then the
widget here for live use. Only widgets common to ipywidgets 7.7 and 8 are used.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from ipywidgets import Dropdown, FloatSlider, IntSlider, Text, interact

from . import viz


def tokenizer_explorer(tokenizer, text: str = "a small green square to the left of a large purple cross"):
    """Type text, see its tokens as coloured boxes with their ids."""

    def show(text: str):
        viz.draw_tokens(tokenizer.tokens(text), tokenizer.encode(text))
        plt.show()

    return interact(show, text=Text(value=text, description="text", continuous_update=False))


def merge_slider(tokenizer, text: str = "a small green square to the left of a large purple cross"):
    """Slide through the merges: the vocabulary grows and the text is re-tokenized."""

    def show(k: int):
        viz.draw_merge_step(tokenizer, text, k)
        plt.show()

    slider = IntSlider(value=len(tokenizer.merges) // 4, min=0, max=len(tokenizer.merges), step=1,
                       description="merges", continuous_update=False)
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
        viz.draw_gumbel_softmax(logits, tau=tau, hard=hard, n_samples=n_samples, seed=seed)
        plt.show()

    return interact(show, tau=FloatSlider(value=tau, min=0.05, max=3.0, step=0.05, description="τ",
                                          continuous_update=False),
                    hard=Dropdown(options=[("soft", False), ("straight-through", True)], value=False,
                                  description="forward"))


def _usage_options(codes, vocab_size: int) -> list[tuple[str, int]]:
    """Dropdown entries for the used codes, most used first: ``("code 17 (523 cells)", 17)``."""
    import numpy as np

    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")
    return [(f"code {k} ({counts[k]} cells)", int(k)) for k in order if counts[k] > 0]


def codebook_explorer(images, codes, vocab_size: int, image_index: int = 0, code: int | None = None):
    """Pick an image to see its code map; pick a code to see every patch of ``images`` that uses it.

    ``images``: (N, H, W, 3) uint8 or (N, 3, H, W) float; ``codes``: their
    (N, h, w) codes from ``model.encode``. The code list is sorted by usage.
    """
    import numpy as np

    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    options = _usage_options(codes, vocab_size)
    if code is None:  # the code covering the most colour in the first image
        code = viz.most_colourful_code(images[image_index], codes[image_index])

    def show(image_index: int, code: int):
        viz.draw_codebook_explorer(images, codes, image_index=image_index, code=code)
        plt.show()

    return interact(show,
                    image_index=IntSlider(value=image_index, min=0, max=len(codes) - 1, description="image",
                                          continuous_update=False),
                    code=Dropdown(options=options, value=code, description="code"))


def code_editor(model, codes, row: int = 3, col: int = 3, new_code: int = 0):
    """Change one code of a grid (h, w) and watch the decoded image change where, and only where, it should."""
    h, w = codes.shape[-2:]

    def show(row: int, col: int, new_code: int):
        viz.draw_code_edit(model, codes, row, col, new_code)
        plt.show()

    return interact(show,
                    row=IntSlider(value=row, min=0, max=h - 1, description="row", continuous_update=False),
                    col=IntSlider(value=col, min=0, max=w - 1, description="column", continuous_update=False),
                    new_code=IntSlider(value=new_code, min=0, max=model.config.vocab_size - 1,
                                       description="new code", continuous_update=False))
