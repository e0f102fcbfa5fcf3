"""Shared by the tests of own data, train-all, torchrun and robustness: a tiny plan and a folder of captioned images."""

from pathlib import Path

import numpy as np
from PIL import Image

from dalle_mini_impl import shapes
from dalle_mini_impl.train_all import RunPlan

# every model a few thousand parameters, every stage a handful of steps: the wiring is under test, not quality
TINY_PLAN = RunPlan(
    dvae_steps=6, dvae_batch_size=8, transformer_steps=6, transformer_batch_size=8, clip_steps=6, clip_batch_size=8,
    checkpoint_every=2, sample_every=1000, eval_prompts=0,
    dvae_config=dict(image_size=32, downsample=4, enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32),  # 8×8 codes
    transformer_config=dict(d_model=32, n_heads=4, n_layers=4, text_len=24),
    clip_config=dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1),
)

FORMATS = ("png", "jpg", "webp", "PNG", "jpeg")


def write_image_folder(root: Path, n: int = 30, seed: int = 0) -> Path:
    """``n`` Shapes scenes as image files with caption files, in nested folders, in several formats and sizes.

    Image i is ``part<i % 3>/[deeper/]img<i>.<format>``, 80×64 (so it is
    centre-cropped); every odd image has a second caption line.
    """
    data = shapes.ShapesDataset("train", size=n, seed=seed)
    for i, (caption, image) in enumerate(zip(data.captions, data.images)):
        folder = root / f"part{i % 3}" / ("deeper" if i % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        wide = np.concatenate([np.full((64, 8, 3), 255, np.uint8), image, np.full((64, 8, 3), 255, np.uint8)], 1)
        Image.fromarray(wide).save(folder / f"img{i}.{FORMATS[i % len(FORMATS)]}")
        second = f"\nthe same picture, number {i}" if i % 2 else ""
        (folder / f"img{i}.txt").write_text(caption + second + "\n")
    return root
