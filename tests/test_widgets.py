"""widgets: every live view builds with its controls, and each control redraws."""

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

from dalle_mini_impl import widgets


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
