"""Image conversions, grids and PNG files: one place for every form the course uses."""

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_mini_impl import images, shapes


def test_uint8_images_round_trip_exactly_through_floats():
    u8 = shapes.render_batch(shapes.make_scenes("test", 5, seed=0))  # (5, 64, 64, 3) uint8
    x = images.to_float_images(u8)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(images.to_uint8_images(x), u8)
    assert images.to_float_images(x) is not None and torch.equal(images.to_float_images(x), x)  # floats pass through
    assert torch.equal(images.to_float_images(torch.from_numpy(u8)), x)  # a uint8 tensor too


def test_to_uint8_accepts_every_layout_and_clips():
    x = torch.tensor([-0.5, 0.5, 2.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # below 0, middle, above 1
    assert images.to_uint8_images(x)[0, 0, 0].tolist() == [0, 128, 255]
    assert images.to_uint8_images(x).shape == (1, 2, 2, 3)
    assert images.to_uint8_images(x[0]).shape == (2, 2, 3)  # one (C, H, W) image -> (H, W, C)
    u8 = np.full((2, 8, 8, 3), 7, dtype=np.uint8)
    assert images.to_uint8_images(u8) is u8  # already uint8 (N, H, W, C)
    assert np.array_equal(images.to_uint8_images(torch.from_numpy(u8)), u8)  # a uint8 tensor is not rescaled


def test_image_grid_stacks_rows_of_either_layout():
    a = torch.zeros(4, 3, 8, 8)
    b = np.full((4, 8, 8, 3), 255, dtype=np.uint8)
    grid = images.image_grid([a, b])
    assert grid.shape == (16, 32, 3) and grid[:8].max() == 0 and grid[8:].min() == 255


@pytest.mark.parametrize("columns, shape", [(None, (8, 4 * 8 + 3 * 2, 3)), (2, (2 * 8 + 2, 2 * 8 + 2, 3)),
                                            (3, (2 * 8 + 2, 3 * 8 + 2 * 2, 3))])
def test_contact_sheet_layout_and_grey_gaps(columns, shape):
    four = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    sheet = images.contact_sheet(four, columns=columns)
    assert sheet.shape == shape
    assert (sheet == 160).any() and sheet[:8, :8].max() == 0  # grey gaps, images where they belong


def test_save_png_creates_the_folder_and_reads_back(tmp_path):
    image = shapes.render(shapes.make_scenes("test", 1, seed=2)[0])
    path = images.save_png(image, tmp_path / "a" / "b" / "x.png")
    assert np.array_equal(np.asarray(Image.open(path)), image)


def test_as_rgb8_scales_16_bit_grey_and_whitens_transparency():
    grey16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))  # mode I;16
    assert np.asarray(images.as_rgb8(grey16))[0, :, 0].tolist() == [0, 128, 255]
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255]]], dtype=np.uint8), "RGBA")
    assert np.asarray(images.as_rgb8(rgba)).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    assert images.as_rgb8(Image.new("L", (2, 2), 9)).mode == "RGB"


def test_a_16_bit_png_reads_the_same_everywhere(tmp_path):
    from dalle_mini_impl import cli, folder_data

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)).save(path)
    assert folder_data.load_image(path, 64).min() == 255  # white, not clipped noise
    assert cli._read_image(path).min() == 255


def test_to_uint8_images_converts_both_layouts_and_one_image():
    chw = torch.ones(2, 3, 8, 8) * 0.5
    out = images.to_uint8_images(chw)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8 and (out == 128).all()
    hwc = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert images.to_uint8_images(hwc) is hwc
    assert images.to_uint8_images(chw[0]).shape == (8, 8, 3)
