"""CLIP (lesson 4): one space for captions and images, learned by telling true pairs from false ones.

Scope. A scaled-down version of Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision" (§2.3–2.5, Fig. 3), for the
Shapes dataset, and the two uses the course makes of it:

* **reranking** (``rerank``): DALL·E draws many candidates for a prompt and
  keeps those CLIP finds most similar to it (Ramesh et al. 2021, §2.5);
* **zero-shot classification** (``zero_shot``) and **retrieval**
  (``retrieval_at_1``; ``retrieve`` shows a caption's k best images): how we
  measure that CLIP has learned colour, shape, size and position from captions
  alone, without a single label.

Letters used in shape comments:
    B   batch size (Bi images, Bt texts when they differ)
    T   text length (config.text_len)
    V   text vocabulary (config.text_vocab_size)
    C   image channels (3), H = W image side (64)
    G   grid side after the convolutional stem (8); P = G·G image tokens
    d   transformer width (config.d_model), nh heads, hs = d / nh head size
    E   width of the shared embedding space (config.embed_dim)
    K   candidate captions in zero-shot classification

The model::

    text   ids (B, T) ─▶ token + position embeddings ─▶ bidirectional blocks
                      ─▶ mean over non-pad tokens ─▶ W_t ─▶ ‖·‖₂ ─▶ t (B, E)
    image  (B, C, H, W) ─▶ 1 - x ─▶ conv stem ─▶ G×G tokens + position embeddings, [CLS]
                        ─▶ blocks ─▶ [CLS] ─▶ W_i ─▶ ‖·‖₂ ─▶ v (B, E)
    similarity: cos(v_i, t_j) = v_i · t_j ;   logits = s · v tᵀ,  s = exp(log_scale) <= 100

Choices, and why:

* **The text encoder is bidirectional**, and pools by the mean over the real
  (non-pad) tokens. CLIP's text tower is causal because it was meant to double
  as a language model and pools at the end-of-text token; ours only ever
  reads whole captions, so every word may look at every other ("red" can see
  that it belongs to the circle, not the square), and a mean over real tokens
  needs no end token (``encode_captions`` writes ``<bos>`` but no ``<eos>``).
  Word order still counts: each token carries its position embedding, so
  "a red circle above a blue square" and "a blue square above a red circle"
  differ.
* **The image encoder keeps "where"**: a convolutional stem turns 64×64 pixels
  into an 8×8 grid of tokens, each given a learned position embedding, and a
  small transformer reads them through a [CLS] token (as in ViT). A global
  average pool straight after the convolutions would blur "in the top left"
  and "in the bottom right" together; here position is part of every token
  before anything is pooled.
* **The image enters as "ink", 1 - x**: the white background becomes 0, so
  (with zero biases at the start) only the shapes produce a signal, and the
  start of training is not spent learning to ignore the background. The
  [CLS] token starts small for the same reason: whatever it reads from the
  image must outweigh it, or every image embedding starts out nearly the
  same and the loss sits at ln B for a long while.
* **The temperature is learned in log space** (the paper's
  parameterisation): ``log_scale`` starts at ln(1/0.07) and the scale
  s = exp(log_scale) is clamped to [1, 100], as in CLIP, so the logits can
  never blow up.

Duplicates and false negatives. The InfoNCE loss assumes that in a batch
caption j describes image j only. Shapes breaks this in two ways: (1) the same
caption can appear twice ("a purple diamond" is a short, common caption), and
(2) captions leave out attributes, so "a red circle" is also true of the image
captioned "a large red circle in the top left". Case (1) is handled exactly:
``contrastive_loss`` takes a ``positives`` mask, and the training loop marks
identical token sequences as positives of each other, so the target spreads
evenly over them instead of asking the model to tell identical captions apart.
Case (2) is accepted: such pairs remain negatives. A vague caption cannot
prefer its own image over another one it describes equally well, so the two
end up with equal scores and the loss keeps a floor above zero; an image, in
turn, learns to prefer its own, more specific caption over a vague one. Neither
harms ranking images for one prompt, and the zero-shot prompts always state
every attribute, which sidesteps the issue there.

Does not handle: images of another size than ``config.image_size`` (resize
first), captions longer than ``config.text_len`` tokens (truncated, with a
warning), data or model parallelism, the paper's larger towers, or
prompt ensembles outside the Shapes grammar.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import DATA_DIR, checkpoints, get_device, grader, shapes
from .images import to_float_images, to_uint8_images
from .transformer import encode_captions

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class CLIPConfig:
    """Everything that defines a CLIP model and its training.

    Use a preset: ``CLIPConfig.preset("cpu")`` (the default, ≈1.3 M parameters,
    trains on a 2-core CPU) or ``CLIPConfig.preset("gpu")`` (wider and deeper).
    """

    text_vocab_size: int = 515  # V: room for a 512-token BPE + 3 specials (the shipped one has 356)
    text_len: int = 16  # T: Shapes captions are at most 13 tokens with <bos>; longer prompts are truncated
    image_size: int = 64  # H = W
    channels: int = 3  # C
    stem_width: int = 32  # conv channels at 32×32, doubled at 16×16, then d_model at 8×8
    d_model: int = 128  # d, both towers
    n_heads: int = 4  # nh: hs = 32
    text_layers: int = 2
    image_layers: int = 1  # the conv stem does most of the seeing; one block mixes the tokens
    mlp_ratio: int = 4  # hidden width of the feed-forward block, in multiples of d_model
    embed_dim: int = 128  # E: the shared space
    init_temperature: float = 0.07  # the paper's τ at step 0: log_scale = ln(1 / 0.07)
    max_logit_scale: float = 100.0  # the paper's clamp on s = 1 / τ
    pad_id: int = 0  # the course tokenizer's <pad>
    lr: float = 1e-3  # peak AdamW learning rate (small model, fresh data every step)
    lr_end_frac: float = 0.05  # cosine decay of the lr down to lr * lr_end_frac
    warmup_frac: float = 0.05  # linear lr warm-up over this fraction of the steps
    weight_decay: float = 0.1  # on matrices only (the paper: 0.2 for far longer runs)
    hard_negatives: bool = False  # add one caption per pair with one stated attribute changed (``hard_negative``)
    #                               as an extra wrong answer for its image: not in the paper, whose random
    #                               batches rarely hold two captions that differ in one word only

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2× downsamplings), got {self.image_size}")
        if self.text_len < 2:
            raise ValueError(f"text_len must be at least 2 (<bos> and one token), got {self.text_len}")
        if not (self.init_temperature > 0 and 1.0 <= 1 / self.init_temperature <= self.max_logit_scale):
            raise ValueError(f"init_temperature must lie in [1 / max_logit_scale, 1] = [{1 / self.max_logit_scale:g}, 1], "
                             f"got {self.init_temperature!r}")

    @property
    def grid(self) -> int:
        """G = H / 8, the side of the token grid the stem produces."""
        return self.image_size // 8

    @classmethod
    def preset(cls, name: str = "cpu", **overrides) -> "CLIPConfig":
        """``cpu``: d = 128, 2 + 2 layers. ``gpu``: d = 256, 4 + 4 layers, for a GPU. Both train with hard negatives."""
        presets = {
            "cpu": dict(hard_negatives=True),
            "gpu": dict(stem_width=64, d_model=256, n_heads=8, text_layers=4, image_layers=4, embed_dim=256, lr=5e-4,
                        hard_negatives=True),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# building blocks: one transformer block serves both towers
# ---------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention; ``keep`` (B, S) says which keys may be attended to."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        B, S, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # 3 × (B, S, d)
        q, k, v = (t.view(B, S, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, S, hs)
        mask = keep[:, None, None, :] if keep is not None else None  # (B, 1, 1, S): True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, S, hs)
        y = y.transpose(1, 2).reshape(B, S, d)  # (B, S, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), keep)
        return x + self.mlp(self.ln2(x))


# ---------------------------------------------------------------------------
# the two towers
# ---------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """Token ids (B, T) -> features (B, d): bidirectional blocks, then the mean over non-pad tokens."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.pad_id = config.pad_id
        self.tok_emb = nn.Embedding(config.text_vocab_size, config.d_model)
        self.pos_emb = nn.Parameter(torch.zeros(config.text_len, config.d_model))
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.mlp_ratio) for _ in range(config.text_layers))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        keep = ids != self.pad_id  # (B, T): the real tokens
        x = self.tok_emb(ids) + self.pos_emb[:T]  # (B, T, d)
        for block in self.blocks:
            x = block(x, keep)
        x = self.ln_f(x)
        w = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * w).sum(1) / w.sum(1).clamp(min=1)  # (B, d): mean over real tokens


class ImageEncoder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> features (B, d): conv stem to a G×G grid, blocks, the [CLS] token.

    Stem: three stride-2 3×3 convs, each halving H and W, then one 3×3 conv at
    the grid's resolution, with GELUs:
    (C, 64, 64) -> (w, 32, 32) -> (2w, 16, 16) -> (d, 8, 8) -> (d, 8, 8).
    Convolutions see shape cheaply (a token's receptive field ends at 31 px,
    the largest object's side is 30 px); the blocks then mix the tokens, and
    the [CLS] token reads what is where.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        w, d = config.stem_width, config.d_model
        layers: list[nn.Module] = []
        for c_in, c_out in [(config.channels, w), (w, 2 * w), (2 * w, d)]:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
        layers += [nn.Conv2d(d, d, 3, padding=1), nn.GELU()]  # receptive field 15 -> 31 px: a whole large object
        self.stem = nn.Sequential(*layers)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_emb = nn.Parameter(torch.zeros(config.grid * config.grid, d))  # one per grid cell: "where"
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.mlp_ratio) for _ in range(config.image_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(1.0 - images)  # "ink": the white background is 0, only the shapes give a signal; (B, d, G, G)
        B, d, G, _ = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_emb  # (B, P, d), raster order
        x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # (B, 1 + P, d)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x[:, 0])  # (B, d): the [CLS] token


# ---------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
    positives: torch.Tensor | None = None, hard_texts: torch.Tensor | None = None,
    hard_positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP on B matching (image, text) pairs.

    ``image_emb`` v and ``text_emb`` t are (B, E), L2-normalised; ``logit_scale``
    is the multiplier s = 1/τ (already exponentiated). With logits
    ℓ_ij = s · v_i · t_j, each image must pick out its caption among the B, and
    each caption its image::

        L = ½ [ -1/B Σ_i log( exp ℓ_ii / Σ_j exp ℓ_ij )      (image -> text: softmax over a row)
              + -1/B Σ_j log( exp ℓ_jj / Σ_i exp ℓ_ij ) ]    (text -> image: softmax over a column)

    that is, the mean of two cross-entropies with the diagonal as the targets.

    ``positives`` (B, B) bool, symmetric with a true diagonal, marks further
    pairs that are equally right, e.g. identical captions. Row i's target is then
    uniform over its positives, q_ij = positives_ij / Σ_j positives_ij, and each
    cross-entropy becomes -1/B Σ_i Σ_j q_ij log softmax(ℓ)_ij. Without it,
    q = the identity, which is the formula above.

    ``hard_texts`` (K, E): more captions, each an extra column of the image ->
    text softmax only (they have no image of their own), e.g. ``hard_negative``
    captions; ``hard_positives`` (B, K) bool marks any that happen to be right
    for an image (default: none).

    Example: v = t = I₃ (three orthogonal pairs), s = 1: every row is
    softmax([1, 0, 0]), so L = -log(e / (e + 2)) ≈ 0.5514.
    """
    logits = logit_scale * image_emb @ text_emb.t()  # (B, B): row i = image i against every text
    B = logits.shape[0]
    if positives is None:
        positives = torch.eye(B, dtype=torch.bool, device=logits.device)
    q = positives.to(logits.dtype)
    q = q / q.sum(1, keepdim=True)  # (B, B): each row a distribution over its positives
    # positives is symmetric, so the column targets (text -> image) are the rows of q as well
    text_to_image = F.cross_entropy(logits.t(), q)
    if hard_texts is None:
        return 0.5 * (F.cross_entropy(logits, q) + text_to_image)
    rows = torch.cat([logits, logit_scale * image_emb @ hard_texts.t()], dim=1)  # (B, B + K)
    extra = hard_positives if hard_positives is not None else torch.zeros(B, len(hard_texts), dtype=torch.bool,
                                                                          device=logits.device)
    q_rows = torch.cat([positives, extra], dim=1).to(logits.dtype)
    q_rows = q_rows / q_rows.sum(1, keepdim=True)  # (B, B + K)
    return 0.5 * (F.cross_entropy(rows, q_rows) + text_to_image)


def same_caption(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, B) bool: True where two captions are identical (the diagonal included).

    Example: ids of ["a red circle", "a blue cross", "a red circle"] ->
    [[T, F, T], [F, T, F], [T, F, T]].
    """
    return (ids[:, None, :] == ids[None, :, :]).all(-1)  # (B, B)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class CLIP(nn.Module):
    """Two towers, two projections into one E-dimensional space, and a learned temperature."""

    def __init__(self, config: CLIPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CLIPConfig()
        self.text = TextEncoder(config)
        self.image = ImageEncoder(config)
        self.text_proj = nn.Linear(config.d_model, config.embed_dim, bias=False)  # W_t
        self.image_proj = nn.Linear(config.d_model, config.embed_dim, bias=False)  # W_i
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.apply(self._init_weights)
        # [CLS] starts small (not zero: a LayerNorm of an all-zero vector divides by sqrt(eps)), so what
        # it reads from the image outweighs it from step 0; a large or LayerNorm-ed [CLS] makes every image
        # embedding nearly the same at the start, and training first stalls at loss ≈ ln B
        for p in (self.text.pos_emb, self.image.pos_emb, self.image.cls):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # He init keeps the signal's size through the GELUs
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def logit_scale(self) -> torch.Tensor:
        """s = exp(log_scale), clamped to [1, max_logit_scale] as in CLIP (no gradient beyond the clamp)."""
        return self.log_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T') with T' <= T, as ``encode_captions`` writes them -> unit vectors (B, E)."""
        if ids.dim() != 2 or ids.shape[1] > self.config.text_len:
            raise ValueError(f"ids must be (B, T) with T <= text_len={self.config.text_len}, got {tuple(ids.shape)}; "
                             f"use encode_captions(tokenizer, captions, {self.config.text_len})")
        if ids.numel() and int(ids.max()) >= self.config.text_vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the model's vocabulary of "
                             f"{self.config.text_vocab_size}; was this model trained with this tokenizer?")
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (B, C, H, W) in [0, 1] -> unit vectors (B, E)."""
        c, s = self.config.channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images must be (B, {c}, {s}, {s}) floats in [0, 1], got {tuple(images.shape)}; "
                             "resize first, or convert uint8 (N, H, W, C) arrays with to_float_images")
        return F.normalize(self.image_proj(self.image(images)), dim=-1)

    def similarity(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every image with every text: (Bi, Bt), in [-1, 1] (not scaled)."""
        return self.encode_image(images) @ self.encode_text(ids).t()  # (Bi, E) @ (E, Bt)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, positives: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """B matching pairs -> (loss, logits (B, B) = s · v tᵀ). The loss is computed in float32."""
        v = self.encode_image(images).float()  # (B, E)
        t = self.encode_text(ids).float()  # (B, E)
        scale = self.logit_scale.float()
        return contrastive_loss(v, t, scale, positives), scale * v @ t.t()


# ---------------------------------------------------------------------------
# using a trained CLIP: images in, reranking, zero-shot, retrieval
# ---------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images_batched(model: CLIP, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Any images ``to_float_images`` accepts -> unit vectors (N, E) on the model's device."""
    x = to_float_images(images)
    dev = _device(model)
    return torch.cat([model.encode_image(x[i:i + batch_size].to(dev)).float() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer, captions: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    """Captions -> unit vectors (N, E) on the model's device (``encode_captions`` pads, truncates and warns)."""
    ids = encode_captions(tokenizer, list(captions), model.config.text_len).to(_device(model))  # (N, T)
    return torch.cat([model.encode_text(ids[i:i + batch_size]).float() for i in range(0, len(ids), batch_size)])


@torch.no_grad()
def rerank(model: CLIP, tokenizer, prompt: str, images: np.ndarray | torch.Tensor
           ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Sort candidate images by how well CLIP thinks they show ``prompt``, best first.

    ``images``: uint8 (N, 64, 64, 3) NumPy, or a float (N, 3, 64, 64) tensor in
    [0, 1] (a uint8 (N, 64, 64, 3) tensor works too). Returns
    ``(images_sorted, scores_sorted)`` of the same kind as the input: NumPy
    images and a float32 NumPy array of scores, or tensors on the input's
    device. The score is the plain cosine similarity v · t in [-1, 1] (not
    multiplied by the learned scale, so scores from differently trained
    models are on one scale). Ties keep their input order.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: give a caption such as 'a blue diamond at the top'")
    if len(images) == 0:
        raise ValueError("no images to rerank: pass at least one candidate")
    t = encode_texts(model, tokenizer, [prompt])  # (1, E)
    v = encode_images_batched(model, images)  # (N, E)
    scores = (v @ t[0]).cpu()  # (N,)
    order = torch.argsort(scores, descending=True, stable=True)  # (N,)
    if isinstance(images, np.ndarray):
        return images[order.numpy()], scores[order].numpy()
    return images[order.to(images.device)], scores[order].to(images.device)


# How much reranking helps, exactly. Draw M candidates for a prompt once, score
# and grade them all; then "rerank n of them" is the same as picking n of the M
# at random, so each rate below is the average over all C(M, n) subsets.


def expected_top1_match(scores: np.ndarray | Sequence, matches: np.ndarray | Sequence, n: int) -> float:
    """The graded match rate of the candidate CLIP ranks first among ``n`` drawn at random from the M given.

    ``scores``, ``matches``: (M,) for one prompt or (P, M) for P prompts (the
    rate is then the mean over prompts). Sort the candidates best first (ties
    keep their order, as ``rerank`` does); the candidate of rank r (0 = best)
    wins a random n-subset when it is in it and the other n - 1 come from the
    M - 1 - r ranked below it::

        P(rank r wins) = C(M - 1 - r, n - 1) / C(M, n),    E[match] = Σ_r P(rank r wins) · match_r

    n = 1 gives the plain mean of ``matches`` (no reranking); n = M gives the
    match of CLIP's top candidate. Example: scores [0.9, 0.5, 0.1], matches
    [False, True, True], n = 2: of the subsets {0, 1}, {0, 2}, {1, 2} only the
    last one's best is a match -> 1/3.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))  # (P, M)
    m = np.atleast_2d(np.asarray(matches, dtype=np.float64))  # (P, M)
    P, M = s.shape
    if m.shape != (P, M):
        raise ValueError(f"scores {s.shape} and matches {m.shape} must have the same shape: one per candidate")
    if not 1 <= n <= M:
        raise ValueError(f"n must be between 1 and the number of candidates ({M}), got {n}")
    wins = np.array([math.comb(M - 1 - r, n - 1) for r in range(M)], dtype=np.float64) / math.comb(M, n)  # (M,)
    order = np.argsort(-s, axis=1, kind="stable")  # (P, M): best first
    return float((np.take_along_axis(m, order, axis=1) @ wins).mean())


def expected_any_match(matches: np.ndarray | Sequence, n: int) -> float:
    """How often at least one of ``n`` candidates drawn at random from the M given matches: a perfect reranker.

    ``matches``: (M,) or (P, M). With j matches among M, a random n-subset
    misses them all with probability C(M - j, n) / C(M, n).
    Example: matches [False, True, True], n = 2 -> 1 (every pair holds a match).
    """
    m = np.atleast_2d(np.asarray(matches, dtype=bool))  # (P, M)
    M = m.shape[1]
    if not 1 <= n <= M:
        raise ValueError(f"n must be between 1 and the number of candidates ({M}), got {n}")
    miss = [math.comb(M - int(j), n) / math.comb(M, n) for j in m.sum(axis=1)]
    return float(1.0 - np.mean(miss))


# Zero-shot classification. Prompts stay inside the Shapes grammar: rather than
# out-of-grammar phrases such as "a red shape", every full one-object caption
# "a|an <size> <colour> <shape> <position>" (2 · 6 · 5 · 9 = 540 of them) is
# scored, the scores are turned into a distribution over the 540, and the
# probability of a value is the sum over the captions that say it:
#     p(colour = red | image) = Σ_{c says red} softmax_c(s · v · t_c)
# Every caption states every attribute, so a caption true of the image exists
# and no prompt is vaguer than another.

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")


def attribute_values(attribute: str) -> tuple[str, ...]:
    """The values one attribute can take. Example: ``attribute_values("size") -> ("small", "large")``"""
    values = {"color": shapes.COLORS, "shape": shapes.SHAPES, "size": tuple(shapes.SIZES),
              "position": tuple(shapes.POSITION_PHRASES.values())}
    if attribute not in values:
        raise ValueError(f"unknown attribute {attribute!r}: use one of {', '.join(ATTRIBUTES)}")
    return values[attribute]


def zero_shot_captions() -> list[tuple[str, dict[str, str]]]:
    """Every full one-object caption with the attribute values it states: K = 540 of them.

    Example: the first is ``("a small red circle in the top left",
    {"color": "red", "shape": "circle", "size": "small", "position": "in the top left"})``.
    """
    out = []
    for size, color, shape, cell in itertools.product(shapes.SIZES, shapes.COLORS, shapes.SHAPES, shapes.POSITION_PHRASES):
        desc = shapes.Description([shapes.ObjectPhrase(color, shape, size)], cell)
        values = {"color": color, "shape": shape, "size": size, "position": shapes.POSITION_PHRASES[cell]}
        out.append((shapes.format_caption(desc), values))
    return out


OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}


def hard_negative(caption: str, rng: np.random.Generator, split: str = "train") -> str:
    """A caption one stated attribute away from ``caption``: false for its image, and still of ``split``'s pairs.

    For two objects, half the time the relation (replaced by its opposite: the
    hardest difference to see, and the rarest in a random batch); otherwise an
    attribute drawn uniformly among those the caption states: each object's colour and shape
    (another one, keeping the colour-shape pair inside ``split`` and the two
    objects' colours apart), each stated size (flipped), the position (another
    cell). Example: "a red circle to the left of a blue square" -> "a red
    circle to the right of a blue square", or "a red circle to the left of a
    blue cross", ... A caption that states nothing else gets another colour or shape.
    """
    desc = shapes.parse_caption(caption)
    allowed = set(shapes.pairs_for_split(split))
    kinds = []
    kinds += [(kind, k) for k, o in enumerate(desc.objects) for kind in ("color", "shape", "size")
              if kind != "size" or o.size is not None]
    if desc.position is not None:
        kinds.append(("position", None))
    kind, k = ("relation", None) if desc.relation and rng.random() < 0.5 else kinds[rng.integers(len(kinds))]
    if kind == "relation":
        desc.relation = OPPOSITE[desc.relation]
    elif kind == "position":
        desc.position = [cell for cell in shapes.POSITION_PHRASES if cell != desc.position][rng.integers(8)]
    elif kind == "size":
        desc.objects[k].size = "large" if desc.objects[k].size == "small" else "small"
    else:
        o = desc.objects[k]
        taken = {p.color for j, p in enumerate(desc.objects) if j != k}
        if kind == "color":
            options = [c for c in shapes.COLORS if c != o.color and c not in taken and (c, o.shape) in allowed]
            o.color = options[rng.integers(len(options))]
        else:
            options = [s for s in shapes.SHAPES if s != o.shape and (o.color, s) in allowed]
            o.shape = options[rng.integers(len(options))]
    return shapes.format_caption(desc)


def one_object_scenes(split: str, n: int, seed: int = 0) -> list[shapes.Scene]:
    """``n`` one-object scenes of ``split`` (for zero-shot labels); a deterministic function of its arguments."""
    return [shapes.sample_scene(shapes.scene_rng(split, seed, i), split, n_objects=1) for i in range(n)]


def scene_attributes(scene: shapes.Scene) -> dict[str, str]:
    """What a one-object scene shows: its colour, shape, size word and position phrase."""
    if len(scene.objects) != 1:
        raise ValueError(f"zero-shot labels need a one-object scene, got {len(scene.objects)} objects")
    o = scene.objects[0]
    return {"color": o.color, "shape": o.shape, "size": o.size,
            "position": shapes.POSITION_PHRASES[grader.position_cell(o.cx, o.cy)]}


@torch.no_grad()
def zero_shot_probs(model: CLIP, tokenizer, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """For one-object images: attribute -> probabilities (N, n_values) over ``attribute_values(attribute)``."""
    captions = zero_shot_captions()
    t = encode_texts(model, tokenizer, [c for c, _ in captions])  # (K, E)
    v = encode_images_batched(model, images)  # (N, E)
    p = (model.logit_scale.float() * v @ t.t()).softmax(-1)  # (N, K): a distribution over the K captions
    out = {}
    for attribute in ATTRIBUTES:
        values = attribute_values(attribute)
        says = torch.zeros(len(captions), len(values), device=p.device)  # (K, n_values): caption k says value j
        for k, (_, stated) in enumerate(captions):
            says[k, values.index(stated[attribute])] = 1.0
        out[attribute] = (p @ says).cpu()  # (N, n_values): marginalise over the other attributes
    return out


def zero_shot(model: CLIP, tokenizer, images: np.ndarray | torch.Tensor, attribute: str,
              true_values: Sequence[str | tuple[int, int]]) -> float:
    """Zero-shot accuracy on one attribute of one-object images (see the prompts above).

    ``attribute``: "color", "shape", "size" or "position"; ``true_values``: one
    per image, a value of ``attribute_values(attribute)`` (a position may also be
    given as its (row, col) cell). Example: ``zero_shot(model, tok, images, "color", ["red", ...]) -> 0.97``
    """
    values = attribute_values(attribute)
    if len(true_values) != len(images):
        raise ValueError(f"{len(images)} images but {len(true_values)} true values")
    truth = [shapes.POSITION_PHRASES[v] if isinstance(v, tuple) else v for v in true_values]
    unknown = sorted({v for v in truth if v not in values})
    if unknown:
        raise ValueError(f"unknown {attribute} values {unknown}: use {', '.join(values)}")
    predicted = zero_shot_probs(model, tokenizer, images)[attribute].argmax(-1)  # (N,)
    target = torch.tensor([values.index(v) for v in truth])
    return (predicted == target).float().mean().item()


@torch.no_grad()
def retrieval_at_1(model: CLIP, tokenizer, images: np.ndarray | torch.Tensor, captions: Sequence[str],
                   count_equivalent: bool = True) -> float:
    """Text -> image recall@1: how often a caption's most similar image is its own.

    Shapes captions leave attributes out, so "a red circle" can be true of
    several images in the batch. With ``count_equivalent`` (the default) a
    caption's top image also counts as a hit when the grader says the caption
    describes it (``grader.grade``); with False, only its own image counts.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    sims = encode_images_batched(model, images) @ encode_texts(model, tokenizer, captions).t()  # (N, N): image i, text j
    top = sims.argmax(0).cpu()  # (N,): the best image for each caption
    pixels = None
    hits = 0
    for j, i in enumerate(top.tolist()):
        if i == j:
            hits += 1
        elif count_equivalent:
            if pixels is None:
                pixels = to_uint8_images(images)
            hits += bool(grader.grade(pixels[i], captions[j]).match)
    return hits / len(captions)


def retrieve(captions: Sequence[str], images: np.ndarray | torch.Tensor, sims,
             k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Text -> image retrieval, graded: for each caption its ``k`` most similar images, best first.

    ``sims``: (N, M) similarities of the N ``images`` with the M ``captions``
    (column j = caption j). Returns (image indices (M, k), matches (M, k)):
    ``matches[j, r]`` says whether the grader finds caption j in its r-th
    image, so a vague caption's several right answers all count. Ties keep the
    image order. Example: sims [[0.1, 0.9], [0.8, 0.2]], k = 1 -> indices [[1], [0]].
    """
    s = np.asarray(sims.detach().cpu().float() if hasattr(sims, "detach") else sims, dtype=np.float64)  # (N, M)
    if s.shape != (len(images), len(captions)):
        raise ValueError(f"sims must be (images, captions) = ({len(images)}, {len(captions)}), got {s.shape}")
    k = min(k, len(images))
    indices = np.argsort(-s, axis=0, kind="stable")[:k].T  # (M, k)
    pixels = to_uint8_images(images)  # (N, H, W, C)
    matches = np.array([[bool(grader.grade(pixels[i], caption).match) for i in row]
                        for caption, row in zip(captions, indices)], dtype=bool).reshape(len(captions), k)  # (M, k)
    return indices, matches


# ---------------------------------------------------------------------------
# a trained CLIP
# ---------------------------------------------------------------------------

MODEL_TYPE = "clip"


def load(model_dir: str | Path | None = None, device: str | None = None) -> CLIP:
    """The CLIP in ``model_dir`` (default: the shipped ``data/clip``), in eval mode."""
    model_dir = model_dir if model_dir is not None else DATA_DIR / "clip"
    return checkpoints.load_model(model_dir, CLIP, CLIPConfig, MODEL_TYPE, device=device or get_device())
