"""Live views for the lessons, built on the drawing functions of :mod:`dalle_mini_impl.viz`.

Each widget wraps one tested drawing function; a lesson calls that function once
with defaults (the static picture nbval compares and GitHub shows) and then the
widget here for live use. Only widgets common to ipywidgets 7.7 and 8 are used.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from ipywidgets import IntSlider, Text, interact

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
