"""Images between the forms the course uses, and onto disk: one place for every conversion.

Two layouts meet in this package:

* **uint8 (N, H, W, C)**, values 0–255: what Shapes renders, what PNG files
  hold, what the grader and matplotlib read;
* **float (N, C, H, W)**, values in [0, 1]: what the networks read and write.

``to_float_images`` and ``to_uint8_images`` go between them (the second
rounds, so a round trip of uint8 images is exact); ``image_grid`` and
``contact_sheet`` tile images into one picture; ``save_png`` writes one.

``as_rgb8`` turns any picture a file may hold (16-bit greyscale, a palette,
transparency) into 8-bit RGB, the transparent parts white like the Shapes
background.

Does not handle: other value ranges ([-1, 1]), 16-bit colour images (Pillow
reads them as 8-bit), or colour spaces other than RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) (NumPy or torch) -> float (N, C, H, W) in [0, 1]; a float (N, C, H, W) tensor passes through.

    Example: a uint8 array of shape (2, 64, 64, 3) -> a float tensor of shape (2, 3, 64, 64).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float().div(255.0)  # (N, H, W, C) -> (N, C, H, W)
    return images.float()


def to_uint8_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] (tensor or array) -> uint8 (N, H, W, C), clipped and rounded.

    The inverse of ``to_float_images``. uint8 (N, H, W, C) passes through, and
    one image (C, H, W) or (H, W, C) gives one image (H, W, C).
    Example: a float tensor of shape (2, 3, 64, 64) -> a uint8 array of shape (2, 64, 64, 3).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = images.numpy() if images.dtype == torch.uint8 else images.float().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:  # one image
        return to_uint8_images(arr[None])[0]
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def image_grid(rows: list[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Rows of N images each (float (N, C, H, W) in [0, 1], or uint8 (N, H, W, C)) -> one uint8 (R·H, N·W, C) picture.

    Example: originals above their reconstructions, 8 of each at 64×64 -> a (128, 512, 3) picture.
    """
    return np.concatenate([np.concatenate(list(to_uint8_images(row)), axis=1) for row in rows], axis=0)


def contact_sheet(images: np.ndarray, columns: int | None = None, gap: int = 2, fill: int = 160) -> np.ndarray:
    """Images uint8 (K, H, W, C) -> one uint8 picture of them in a grid, ``gap`` grey pixels apart.

    ``columns`` defaults to all K in one row. Example: 4 images of 64×64 ->
    a (64, 4·64 + 3·2, 3) = (64, 262, 3) strip.
    """
    K, H, W, C = images.shape
    columns = min(columns or K, K)
    rows = -(-K // columns)  # ceil(K / columns)
    sheet = np.full((rows * H + (rows - 1) * gap, columns * W + (columns - 1) * gap, C), fill, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        sheet[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = image
    return sheet


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, C) array as a PNG, creating the folder; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def as_rgb8(image):
    """A PIL image of any mode -> an 8-bit RGB PIL image.

    16-bit greyscale ("I;16", or "I" with values above 255) is scaled by
    1/257 (a plain conversion would clip every value above 255 to white);
    transparent pixels become white, like the Shapes background.
    """
    from PIL import Image

    if image.mode.startswith("I"):
        grey = np.asarray(image).astype(np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or grey.max() > 255 else 1.0
        grey = np.clip(np.round(grey / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")
