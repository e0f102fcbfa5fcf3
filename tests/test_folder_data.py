"""Your own images: found recursively, resized and centre-cropped, a random caption per draw, bad files named."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from _tiny import write_image_folder
from PIL import Image

from dalle_mini_impl.folder_data import (
    FolderDataError,
    FolderDataset,
    find_pairs,
    load_image,
    pick_caption_rows,
    read_captions,
)

RED, BLUE = (220, 38, 38), (37, 99, 235)


def _stripes(widths_colours, height=64) -> Image.Image:
    """Vertical stripes, left to right: [(width, colour), ...]."""
    return Image.fromarray(np.concatenate([np.full((height, w, 3), c, np.uint8) for w, c in widths_colours], axis=1))


def test_pairs_are_found_recursively_in_every_format(tmp_path):
    write_image_folder(tmp_path, n=10)  # png, jpg, webp, PNG, jpeg in part0/ part1/ part2/ and part*/deeper/
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")  # no caption file
    (tmp_path / "notes.txt").write_text("a caption file without an image is not a pair\n")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden folders are not read\n")
    pairs, orphans = find_pairs(tmp_path)
    assert len(pairs) == 10 and orphans == [tmp_path / "lonely.png"]
    assert {p.suffix for p, _ in pairs} == {".png", ".jpg", ".webp", ".PNG", ".jpeg"}
    assert any("deeper" in p.parts for p, _ in pairs)
    assert all(t == p.with_suffix(".txt") for p, t in pairs) and pairs == sorted(pairs)


def test_read_captions_one_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a red circle\n\n  a circle, red \n🐱 猫\n", encoding="utf-8")
    assert read_captions(path) == ["a red circle", "a circle, red", "🐱 猫"]


def test_resize_and_centre_crop_known_answers(tmp_path):
    # 128×64: no resize needed, the centre 64 columns (32 … 95) are kept exactly
    _stripes([(32, RED), (64, BLUE), (32, RED)]).save(tmp_path / "wide.png")
    assert (load_image(tmp_path / "wide.png", 64) == BLUE).all()
    # 64×128 (tall): the centre rows
    Image.fromarray(np.asarray(_stripes([(32, RED), (64, BLUE), (32, RED)])).transpose(1, 0, 2).copy()).save(
        tmp_path / "tall.png")
    assert (load_image(tmp_path / "tall.png", 64) == BLUE).all()
    # 300×200 -> 96×64, columns 16 … 79 kept (source columns 50 … 249): the red edges are cropped away
    _stripes([(20, RED), (260, BLUE), (20, RED)], height=200).save(tmp_path / "big.png")
    image = load_image(tmp_path / "big.png", 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - BLUE).max() <= 2  # resampling may move a channel by a unit or two
    # greyscale -> RGB; fully transparent -> white
    Image.new("L", (64, 64), 128).save(tmp_path / "grey.png")
    assert (load_image(tmp_path / "grey.png", 64) == 128).all()
    Image.new("RGBA", (70, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png", 64) == 255).all()


def test_dataset_holds_every_usable_pair(tmp_path):
    write_image_folder(tmp_path, n=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder: not a single warning
        data = FolderDataset(tmp_path, image_size=32)
    assert len(data) == 12 and data.images.shape == (12, 32, 32, 3) and data.images.dtype == np.uint8
    assert [len(c) for c in data.captions] == [1, 2] * 6 and data.skipped == []
    caption, image = data[1]
    assert caption in data.captions[1] and image.shape == (3, 32, 32) and 0 <= image.min() <= image.max() <= 1
    flat, first, count = data.caption_table()
    assert len(flat) == 18 and first.tolist()[:3] == [0, 1, 3] and count.tolist()[:3] == [1, 2, 1]
    assert all(flat[first[i]:first[i] + count[i]] == data.captions[i] for i in range(12))


def test_a_random_caption_per_sample():
    first, count = torch.tensor([0, 1]), torch.tensor([1, 3])  # image 0: row 0; image 1: rows 1, 2, 3
    torch.manual_seed(0)
    rows = pick_caption_rows(torch.ones(3000, dtype=torch.long), first, count)
    share = torch.bincount(rows, minlength=4)[1:] / 3000
    assert rows.min() == 1 and rows.max() == 3 and (share - 1 / 3).abs().max() < 0.04, share
    assert pick_caption_rows(torch.zeros(5, dtype=torch.long), first, count).eq(0).all()
    state = torch.get_rng_state()  # one caption per image: nothing is drawn, the random stream stays as it was
    assert pick_caption_rows(torch.tensor([1, 0, 1]), torch.arange(2), torch.ones(2, dtype=torch.long)).tolist() == [1, 0, 1]
    assert torch.equal(torch.get_rng_state(), state)


def test_unreadable_files_are_skipped_with_a_warning_that_names_them(tmp_path):
    write_image_folder(tmp_path, n=6)
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    (tmp_path / "garbage.txt").write_text("a caption for a broken image\n")
    good = tmp_path / "part0" / "deeper" / "img0.png"
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:100])
    (tmp_path / "truncated.txt").write_text("half an image\n")
    shutil.copy(good, tmp_path / "blank.png")
    (tmp_path / "blank.txt").write_text("\n  \n")
    shutil.copy(good, tmp_path / "latin1.png")
    (tmp_path / "latin1.txt").write_bytes("un cercle ros\xe9\n".encode("latin-1"))
    shutil.copy(good, tmp_path / "nocaption.png")
    with pytest.warns(UserWarning) as record:
        data = FolderDataset(tmp_path)
    messages = [str(w.message) for w in record]
    for name, why in [("garbage.png", "cannot read it as an image"), ("truncated.png", "cannot read it as an image"),
                      ("blank.txt", "no caption"), ("latin1.txt", "UTF-8"), ("nocaption.png", "no caption file")]:
        assert any(str(tmp_path / name) in m and why in m for m in messages), (name, messages)
    assert len(data) == 6 and len(data.skipped) == 5 and "5 files skipped" in repr(data)


def test_a_folder_without_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(FolderDataError, match=r"no such folder; expected images \(.png, .jpg, .jpeg or .webp\)"):
        FolderDataset(tmp_path / "missing")
    with pytest.raises(FolderDataError, match=r"no usable image with a caption \(found no image\).*\.txt"):
        FolderDataset(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with pytest.warns(UserWarning, match="a.jpg"), pytest.raises(FolderDataError, match="1 image.* without captions"):
        FolderDataset(tmp_path)


def test_fingerprint_follows_the_content_not_the_place(tmp_path):
    write_image_folder(tmp_path / "a", n=4)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = FolderDataset(tmp_path / "a"), FolderDataset(tmp_path / "b")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    (tmp_path / "b" / "part1" / "img1.txt").write_text("another caption\n")
    assert FolderDataset(tmp_path / "b").fingerprint != a.fingerprint
