"""images: the two layouts of the course (uint8 (N, H, W, C) and float (N, C, H, W)) and the way between them."""

import numpy as np
import torch

from dalle_mini_impl.images import to_uint8_images


def test_to_uint8_images_converts_both_layouts_and_one_image():
    chw = torch.ones(2, 3, 8, 8) * 0.5
    out = to_uint8_images(chw)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8 and (out == 128).all()
    hwc = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert to_uint8_images(hwc) is hwc
    assert to_uint8_images(chw[0]).shape == (8, 8, 3)
