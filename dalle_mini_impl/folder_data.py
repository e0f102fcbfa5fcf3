"""Your own images with captions: a folder in the layout text-to-image projects already use.

Scope. ``FolderDataset(root)`` reads every image ``name.png`` (or ``.jpg``,
``.jpeg``, ``.webp``, in any letter case) that has a caption file
``name.txt`` beside it, in ``root`` and in all its sub-folders::

    my_images/
        cat.jpg            cat.txt        a cat asleep on a red sofa
        trips/beach.png    trips/beach.txt
                                          a beach at sunset        (one caption per line:
                                          orange sky over the sea   a random one per sample)

* every image is resized so that its shorter side is ``image_size`` pixels,
  then centre-cropped to a square (``load_image``), and kept in memory as
  uint8 (N, H, W, C) RGB; transparent pixels become white;
* a caption file may hold several captions, one per line (blank lines are
  ignored); each time training draws an image it picks one of its captions at
  random (``pick_caption_rows``), from torch's generator, so a resumed run
  picks the same ones;
* a file that cannot be used — an image that cannot be decoded, an image
  without a caption file, a caption file that is empty or not UTF-8 text — is
  skipped with a warning that names it; a folder without a single usable pair
  is an error (``FolderDataError``) that says what was expected.

Hidden files and folders (names starting with ".") are not read. Two images
with the same name and different extensions share one caption file.

Does not handle: datasets larger than memory (a 64×64 image takes 12 KB: 100k
images take 1.2 GB), captions in other formats (JSON, CSV, EXIF), padding
instead of cropping, or data augmentation.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .images import as_rgb8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LAYOUT_HELP = ("expected images (.png, .jpg, .jpeg or .webp), each with a caption file of the same name "
               "ending in .txt beside it (one caption per line), in the folder or its sub-folders")


class FolderDataError(ValueError):
    """A folder that holds no usable (image, caption) pair, or is not a folder at all."""


# ---------------------------------------------------------------------------
# small pieces: find, read, resize
# ---------------------------------------------------------------------------


def find_pairs(root: str | Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(pairs, orphans)`` under ``root``: (image, caption file) pairs, and images with no caption file.

    Both sorted by path, so the order never depends on the file system.
    Example: {a.png, a.txt, b.jpg, notes.txt} -> ([(a.png, a.txt)], [b.jpg]).
    """
    root = Path(root)
    pairs, orphans = [], []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden: .git, .ipynb_checkpoints, ...
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        caption_file = path.with_suffix(".txt")
        if caption_file.is_file():
            pairs.append((path, caption_file))
        else:
            orphans.append(path)
    return pairs, orphans


def read_captions(path: str | Path) -> list[str]:
    """The captions of a caption file: one per non-blank line, surrounding spaces (and a leading BOM) removed.

    Example: "a red circle\\n\\n  a circle, red \\n" -> ["a red circle", "a circle, red"].
    """
    return [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file -> uint8 (size, size, 3) RGB: shorter side resized to ``size``, then the centre square.

    Example: a 128×64 picture at size 64 keeps columns 32 … 95 unchanged (no
    resize is needed); a 300×200 one is resized to 96×64 and keeps columns 16 … 79.
    """
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode now: a truncated or corrupt file fails here, not later
        image = as_rgb8(image)  # 16-bit greyscale scaled to 8 bits, transparent -> white like the Shapes background
    w, h = image.size
    if min(w, h) != size:
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def pick_caption_rows(idx: torch.Tensor, first: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """For images ``idx`` (B,), the row of one of each image's captions, drawn uniformly: (B,).

    Image i's captions are rows ``first[i] … first[i] + count[i] - 1`` of a
    flat caption list (``FolderDataset.caption_table``). When every image has
    one caption, nothing is drawn: the random stream is left as it was.
    Example: first = [0, 1], count = [1, 3], idx = [1, 0] -> [1 + u·3 rounded down, 0], u ~ U[0, 1).
    """
    if int(count.max()) == 1:
        return first[idx]
    return first[idx] + (torch.rand(len(idx)) * count[idx]).long().clamp(max=count[idx] - 1)


# ---------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------


class FolderDataset:
    """The usable (image, captions) pairs of a folder, loaded once.

    ``images``: uint8 (N, image_size, image_size, 3); ``captions``: N lists of
    captions; ``paths``: N image paths; ``skipped``: (path, reason) of every
    file left out (each was also warned about). ``dataset[i]`` ->
    ``(one of image i's captions at random, float image (3, H, W) in [0, 1])``.
    """

    def __init__(self, root: str | Path, image_size: int = 64, progress: bool = False, warn: bool = True) -> None:
        from tqdm.auto import tqdm

        self.root, self.image_size = Path(root), image_size
        if not self.root.is_dir():
            raise FolderDataError(f"{self.root}: no such folder; {LAYOUT_HELP}")
        pairs, orphans = find_pairs(self.root)
        self.skipped: list[tuple[Path, str]] = [(p, f"no caption file {p.with_suffix('.txt').name} beside it")
                                                for p in orphans]
        images, self.captions, self.paths = [], [], []
        for image_path, caption_path in tqdm(pairs, desc="reading images", disable=not progress):
            try:
                captions = read_captions(caption_path)
            except (OSError, UnicodeDecodeError) as err:
                self.skipped.append((caption_path, f"cannot read it as UTF-8 text ({err})"))
                continue
            if not captions:
                self.skipped.append((caption_path, "it holds no caption (empty)"))
                continue
            try:
                image = load_image(image_path, image_size)
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
                self.skipped.append((image_path, f"cannot read it as an image ({type(err).__name__}: {err})"))
                continue
            images.append(image)
            self.captions.append(captions)
            self.paths.append(image_path)
        if warn:
            for path, reason in self.skipped:
                warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
        if not images:
            found = f"found {len(pairs)} pair(s), none readable" if pairs else (
                f"found {len(orphans)} image(s) without captions" if orphans else "found no image")
            raise FolderDataError(f"{self.root}: no usable image with a caption ({found}); {LAYOUT_HELP}")
        self.images = np.stack(images)  # (N, H, W, C) uint8
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        captions = self.captions[i]
        caption = captions[int(torch.randint(len(captions), ()))]
        return caption, torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0  # (3, H, W)

    def __repr__(self) -> str:
        return (f"FolderDataset({str(self.root)!r}, {len(self)} images, {sum(map(len, self.captions))} captions, "
                f"{len(self.skipped)} files skipped)")

    def caption_table(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(flat, first, count)``: every caption in one list; image i's are ``flat[first[i]:first[i] + count[i]]``.

        Example: captions [["a", "b"], ["c"]] -> (["a", "b", "c"], [0, 2], [2, 1]).
        """
        count = torch.tensor([len(c) for c in self.captions])  # (N,)
        first = torch.cumsum(count, 0) - count  # (N,)
        return [c for captions in self.captions for c in captions], first, count

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the pixels and the captions: equal for equal data, whatever the file names."""
        if self._fingerprint is None:
            h = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
            h.update(json.dumps(self.captions, ensure_ascii=False).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
