"""widgets: every live view builds with its controls, each control redraws, and every control can be used as is.

Used as is: each label shows in full, each text box holds its default prompt,
a slider over many values has a long track, and each slider starts on a value
its own steps reach (min + k·step), since the browser snaps a value that is
not and the first redraw then uses another one.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from _tiny_models import (
    CharTokenizer,
    tiny_captions,
    tiny_dvae,
    tiny_dvae_with_codes,
    tiny_models,
    tiny_transformer,
)
from ipywidgets import Dropdown, FloatSlider, IntSlider, Text

from dalle_mini_impl import widgets

PROMPT = "a small green square to the left of a large purple cross"  # the longest default prompt of the lessons


@pytest.fixture(autouse=True)
def _no_display(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda: plt.close("all"))


@pytest.fixture(scope="module")
def dvae_images_codes():
    return tiny_dvae_with_codes()


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def lesson3():
    """A tiny dVAE and transformer, a caption, a grid of codes and its attention maps."""
    dvae = tiny_dvae()
    G = dvae.config.grid_size
    model = tiny_transformer(grid=G, text_len=16, image_vocab_size=24, n_layers=2)
    text = tiny_captions(model.config, B=1)
    codes = torch.randint(0, 24, (1, G * G), generator=torch.Generator().manual_seed(0))
    return dvae, model, codes, model.attention_maps(text, codes)


@pytest.fixture(scope="module")
def views(dvae_images_codes, lesson3, models):
    """Every widget of the course, built as the lessons build them (and with their defaults)."""
    dvae_model, images, codes = dvae_images_codes
    dvae, model, grid_codes, maps = lesson3
    G = dvae.config.grid_size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt, "show", lambda: plt.close("all"))  # the views draw once as they are built
        return {
            "tokenizer_explorer": widgets.tokenizer_explorer(models.tokenizer, PROMPT),
            "merge_slider": widgets.merge_slider(models.tokenizer, PROMPT),
            "gumbel_softmax_slider": widgets.gumbel_softmax_slider(torch.tensor([0.0, 1.0]), tau=0.5),
            "codebook_explorer": widgets.codebook_explorer(images, codes, dvae_model.config.vocab_size),
            "code_editor": widgets.code_editor(dvae_model, codes[0]),
            "mask_explorer": widgets.mask_explorer(),
            "attention_explorer": widgets.attention_explorer(maps, 16, G, mask_kinds=model.config.mask_kinds),
            "sampling_playground": widgets.sampling_playground(model, dvae, CharTokenizer(), "a red circle", n=2),
            "sampling_playground, lesson 3": widgets.sampling_playground(model, dvae, CharTokenizer(), n=2,
                                                                         condition_scale=3.0),
            "generation_slider": widgets.generation_slider(dvae, grid_codes.view(G, G), fill_code=0),
            "reranking_viewer": widgets.reranking_viewer(models, candidates=2),
            "prompt_playground": widgets.prompt_playground(models, candidates=2, keep=1),
            "prompt_playground, lesson 5": widgets.prompt_playground(models, prompt=PROMPT, candidates=16, keep=8,
                                                                     temperature=0.9, top_k=None,
                                                                     condition_scale=1.25, seed=0),
        }


def controls(view, kinds=(IntSlider, FloatSlider, Text, Dropdown)):
    return [c for c in view.widget.children if isinstance(c, kinds)]


# --- each view builds and redraws ------------------------------------------------------------------


def test_lesson2_widgets_build_with_their_controls(dvae_images_codes):
    model, images, codes = dvae_images_codes
    for view in (widgets.gumbel_softmax_slider(torch.tensor([0.0, 1.0])),
                 widgets.codebook_explorer(images, codes, model.config.vocab_size),
                 widgets.code_editor(model, codes[0])):
        assert view.widget.children  # the controls and the output area
    options = widgets._usage_options(codes, model.config.vocab_size)
    counts = np.bincount(codes.flatten().numpy(), minlength=model.config.vocab_size)
    assert options[0][1] == int(counts.argmax()) and len(options) == int((counts > 0).sum())


def test_lesson3_widgets_build_and_redraw(lesson3):
    dvae, model, codes, maps = lesson3
    G = dvae.config.grid_size
    show = widgets.mask_explorer(text_len=6, grid=4, kernel=3)
    assert show.widget.children[1].max == 6 + 16 - 1
    show("conv", 12)

    show = widgets.attention_explorer(maps, 16, G, mask_kinds=model.config.mask_kinds)
    assert [o[1] for o in show.widget.children[1].options] == [-1, 0, 1, 2, 3]  # the mean, then each head
    show(1, 2, 4, 5)

    show = widgets.sampling_playground(model, dvae, CharTokenizer(), "a red circle", n=2)
    show("a blue square", 0.8, 5, 0.9, 2.0, 7)

    show = widgets.generation_slider(dvae, codes.view(G, G), fill_code=0)
    show(20)


def test_lesson1_widgets_build_and_redraw(models):
    show = widgets.tokenizer_explorer(models.tokenizer)
    show("a red circle")
    show = widgets.merge_slider(models.tokenizer)
    assert show.widget.children[0].max == len(models.tokenizer.merges)
    show(3)


def test_reranking_viewer_builds(models):
    view = widgets.reranking_viewer(models, candidates=2)
    assert view is not None


def test_prompt_playground_builds_and_redraws(models, capsys):
    show = widgets.prompt_playground(models, candidates=2, keep=1)
    assert show is not None
    show("a blue square", 2, 4, 0.9, 8, 1.25, 0)  # K > N: all N are shown
    assert "showing all 2" in capsys.readouterr().out


# --- each control can be used as is ----------------------------------------------------------------


def test_every_slider_starts_on_its_own_grid(views):
    for name, view in views.items():
        for slider in controls(view, (IntSlider, FloatSlider)):
            k = (slider.value - slider.min) / slider.step
            assert abs(k - round(k)) < 1e-6, (
                f"{name}: {slider.description} = {slider.value} is not min {slider.min} + k · step {slider.step}: "
                "the browser would show and draw another value")


def test_every_label_shows_in_full(views):
    for name, view in views.items():
        for control in controls(view):
            assert control.style.description_width == "initial", f"{name}: {control.description!r} may be cut"


def test_text_boxes_hold_the_longest_default_prompt(views):
    for name, view in views.items():
        for box in controls(view, (Text,)):
            width = int(box.layout.width.removesuffix("px"))
            assert width >= 100 + 8 * max(len(box.value), len(PROMPT)), f"{name}: {box.layout.width} cuts the prompt"


def test_sliders_over_many_values_get_a_long_track(views):
    for name, view in views.items():
        for slider in controls(view, (IntSlider, FloatSlider)):
            if (slider.max - slider.min) / slider.step > widgets.LONG_RANGE:
                assert slider.layout.width == widgets.WIDE, f"{name}: {slider.description} has a short track"
