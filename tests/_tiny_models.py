"""Shared by the tests of the pictures, the widgets, the checkers and the playgrounds: tiny untrained models.

Each builds in milliseconds and is seeded, so the wiring is under test, not the quality. Also a set of
graded images that fail their captions (``mismatched_grades``), for what the grader says about failures.
"""

import torch

from dalle_mini_impl import grader, pipeline, shapes
from dalle_mini_impl.bpe import load_tokenizer
from dalle_mini_impl.clip import CLIP, CLIPConfig
from dalle_mini_impl.dvae import DVAE, DVAEConfig
from dalle_mini_impl.transformer import DalleTransformer, TransformerConfig

TINY_DVAE = dict(enc_width=8, dec_width=8, codebook_dim=16, vocab_size=32)
TINY_TRANSFORMER = dict(image_vocab_size=32, text_len=24, grid=8, d_model=32, n_heads=4, n_layers=4)
TINY_CLIP = dict(d_model=32, n_heads=2, stem_width=8, embed_dim=16, text_layers=1, image_layers=1)


def tiny_transformer(seed: int = 0, **overrides) -> DalleTransformer:
    """A 4×4 grid after 8 text positions, 4 layers of 4 heads, a 3×3 conv mask."""
    torch.manual_seed(seed)
    values = {"text_vocab_size": 40, "image_vocab_size": 24, "text_len": 8, "grid": 4, "d_model": 32, "n_heads": 4,
              "n_layers": 4, "conv_kernel": 3}
    return DalleTransformer(TransformerConfig(**{**values, **overrides})).eval()


def tiny_captions(config: TransformerConfig, B: int = 2, seed: int = 1) -> torch.Tensor:
    """B random captions (B, Lt) for a transformer of ``config``, the last one padded after 4 tokens."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.text_vocab_size, (B, config.text_len), generator=g)
    text[:, 0] = config.bos_id
    text[-1, 4:] = config.pad_id
    return text


def tiny_dvae() -> DVAE:
    """A dVAE of 24 codes on the cpu preset's 8×8 grid."""
    torch.manual_seed(0)
    config = DVAEConfig.preset("cpu", vocab_size=24, enc_width=8, dec_width=8, codebook_dim=16,
                               blocks_per_group=1)
    return DVAE(config).eval()


def tiny_dvae_with_codes():
    """A dVAE of 32 codes, 6 Shapes images (uint8) and their codes (6, 8, 8)."""
    torch.manual_seed(0)
    model = DVAE(DVAEConfig(**TINY_DVAE)).eval()
    images = shapes.render_batch(shapes.make_scenes("test", 6, seed=0))  # (6, 64, 64, 3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return model, images, model.encode(x)


class CharTokenizer:
    """One id per letter: enough for encode_captions."""

    vocab_size = 40

    def encode(self, text: str) -> list[int]:
        return [3 + (ord(ch) % 37) for ch in text]

    def token_to_id(self, token: str):
        return {"<pad>": 0, "<bos>": 1, "<eos>": 2}.get(token)


def tiny_models() -> pipeline.Models:
    """Untrained tiny models with the course tokenizer: what the pipeline needs, in milliseconds."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    dvae = DVAE(DVAEConfig(**TINY_DVAE)).eval()
    transformer = DalleTransformer(TransformerConfig(text_vocab_size=tokenizer.vocab_size, **TINY_TRANSFORMER)).eval()
    clip_model = CLIP(CLIPConfig(**TINY_CLIP)).eval()
    return pipeline.Models(tokenizer, dvae, transformer, clip_model)


def mismatched_grades():
    """8 Shapes images, each graded against the next one's caption: (images, captions, grades)."""
    found = shapes.make_scenes("test", 8, seed=5)
    images = shapes.render_batch(found)
    captions = [found[(i + 1) % 8].caption for i in range(8)]  # every image against the next one's caption
    return images, captions, [grader.grade(im, c) for im, c in zip(images, captions)]
