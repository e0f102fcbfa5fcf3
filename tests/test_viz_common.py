"""viz_common: the grader's verdict under an image, and the plain grid of images every lesson can draw."""

import matplotlib.pyplot as plt
import numpy as np

from dalle_mini_impl import grader
from dalle_mini_impl.viz_common import BAD, GOOD, show_images, verdict


def test_verdict_names_the_failed_checks():
    grade = grader.grade(np.full((64, 64, 3), 255, np.uint8), "a red circle")
    text, color = verdict(grade)
    assert text.startswith("✗") and "count" in text and color == BAD
    assert verdict(True) == ("✓", GOOD)
    assert verdict(np.bool_(False)) == ("✗", BAD)
    assert verdict(grader.grade(np.zeros((64, 64, 3), np.uint8), "a cat"))[0] == "?"
    assert verdict(None)[0] == ""


def test_show_images_accepts_both_layouts():
    hwc = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    chw = np.ones((3, 3, 8, 8), dtype=np.float32)
    for images in (hwc, chw):
        fig, axes = show_images(images, titles=["x", "y", "z"], cols=2)
        assert axes.shape == (2, 2)
        assert axes.flat[0].images[0].get_array().shape == (8, 8, 3)
        plt.close(fig)
