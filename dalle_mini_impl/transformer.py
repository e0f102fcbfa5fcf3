"""The DALL·E transformer (lesson 3): text tokens and image codes in one sequence.

Scope. Stage two of Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"
(§2.2, Appendix B.1, Fig. 10), scaled down: a decoder-only transformer reads
``[text (Lt = 32 BPE ids, padded) | image codes (8×8 dVAE ids, raster order)]``
and predicts every next token. The image-to-image attention is sparse (row,
column and convolutional masks, see ``attention.py``); every image token sees
the whole caption in every layer.

Letters used in shape comments:
    B   batch size
    Lt  text length (config.text_len, 32)
    G   grid side (config.grid, 8); N = G·G image codes (64)
    S   Lt + N, the whole sequence; T positions in this call (S - 1 in training)
    n   image codes given to ``forward`` (N in training, fewer while sampling)
    d   model width, Vt text vocabulary, Vi image vocabulary (the dVAE codebook)

Embeddings (Fig. 10 and §2.2)::

    text  position i:  E_text[id]  + P_text[i]     with a *pad* at position i read as its own
                                                   id Vt + i: a learned pad per position
    image code j:      E_image[id] + R[j // G] + C[j % G]   (learned row and column embeddings)

The objective (§2.2): cross-entropy of every next token, text and image each
averaged over its own number of targets, then weighted 1 : 7::

    loss = 1/8 · mean_text CE(text logits, next text ids) + 7/8 · mean_image CE(image logits, codes)

Text targets include the padding. That is this course's choice: the paper
(§2.2) learns a pad embedding per text position but does not say whether pad
positions count in the text loss. Counting them, "the caption ends here" is
one more thing the model learns, and the text loss stays a mean over the same
Lt - 1 positions for every caption. Text logits cover only text ids (Vt) and image logits only image codes
(Vi): two output heads, so a text position can never predict an image code and
vice versa. Captions dropped to the empty caption ``[<bos>, <pad>, …]`` with
probability ≈ 0.2 (``drop_captions``) teach the same model p(image), which
sampling uses for the condition scale (see ``sampling.py``).

Does not handle: image prompts (priming with the first rows of codes), the
paper's per-resblock gradient scaling and fp16 tricks, weight sharing between
layers, or captions longer than ``text_len`` (truncated with a warning).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import DATA_DIR, checkpoints, get_device
from .attention import KVCache, MaskedSelfAttention, build_mask, layer_mask_kinds, MASK_KINDS

if TYPE_CHECKING:
    from .dvae import DVAE

PAD_ID, BOS_ID = 0, 1  # the course tokenizer's special tokens: <pad> 0, <bos> 1, <eos> 2


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    """Everything that defines the transformer and its objective.

    Use a preset: ``TransformerConfig.preset("cpu")`` (the default: ≈3.7 M
    parameters, trains on a laptop CPU) or ``TransformerConfig.preset("gpu")``.
    """

    text_vocab_size: int = 515  # Vt: room for a 512-token BPE + 3 specials; pass tokenizer.vocab_size
    image_vocab_size: int = 512  # Vi: the dVAE codebook size
    text_len: int = 32  # Lt: Shapes captions are ≈ 15 tokens; the paper uses 256
    grid: int = 8  # G: the dVAE's 64 / 8 grid (the paper: 32)
    d_model: int = 256
    n_layers: int = 4  # the paper's schedule on 4 layers: row, column, row, conv
    n_heads: int = 8  # hs = 32
    mlp_ratio: int = 4  # hidden width of the feed-forward block, in multiples of d_model
    dropout: float = 0.0  # on embeddings and residual branches; Shapes is unlimited data
    conv_kernel: int = 5  # 5×5 causal window (13 codes) on 8×8; the paper's 11×11 (61 codes) is on 32×32
    layer_masks: tuple[str, ...] | None = None  # None: the paper's schedule; or one of MASK_KINDS per layer
    attention: str = "auto"  # "auto" (flex on a GPU, else dense), "dense" or "flex"
    text_loss_weight: float = 1 / 8  # the paper's 1 : 7 text : image weighting
    caption_drop_prob: float = 0.2  # captions replaced by the empty one, for the condition scale
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    # training (as in DVAEConfig and CLIPConfig: a resumed run refuses other values)
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # linear lr warm-up over this fraction of the steps
    lr_end_frac: float = 0.1  # cosine decay of the lr down to lr * lr_end_frac
    weight_decay: float = 0.1  # on matrices and embeddings only (train_common.decay_groups)
    grad_clip: float = 1.0  # the gradient's norm is clipped to this; 0: no clipping

    @property
    def n_image(self) -> int:
        """N = G·G image codes."""
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        """S = Lt + N, the whole sequence (the model input is S - 1 long)."""
        return self.text_len + self.n_image

    @property
    def mask_kinds(self) -> list[str]:
        """The mask of each layer: ``layer_masks`` or the paper's schedule."""
        return list(self.layer_masks) if self.layer_masks is not None else layer_mask_kinds(self.n_layers)

    def __post_init__(self) -> None:
        if self.layer_masks is not None:
            self.layer_masks = tuple(self.layer_masks)  # a list read back from config.json
            if len(self.layer_masks) != self.n_layers:
                raise ValueError(f"layer_masks has {len(self.layer_masks)} entries for {self.n_layers} layers")
            unknown = [kind for kind in self.layer_masks if kind not in MASK_KINDS]
            if unknown:
                raise ValueError(f"unknown mask kinds {unknown}; choose from {MASK_KINDS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and positive, got {self.conv_kernel}")
        if self.text_len < 2:
            raise ValueError(f"text_len must be at least 2 (<bos> and one token), got {self.text_len}")
        if self.attention not in ("auto", "dense", "flex"):
            raise ValueError(f"attention must be 'auto', 'dense' or 'flex', got {self.attention!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be greater than 0, got {self.lr}")
        for name in ("warmup_frac", "lr_end_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be 0 or more, got {self.weight_decay}, {self.grad_clip}")

    @classmethod
    def preset(cls, name: str = "cpu", **overrides) -> "TransformerConfig":
        """``cpu``: ≈3.7 M parameters. ``gpu``: twice as wide and deep (≈26 M), for a GPU."""
        presets = {
            "cpu": dict(),
            "gpu": dict(d_model=512, n_layers=8, n_heads=8),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TransformerConfig":
        return cls(**values)


# ---------------------------------------------------------------------------
# captions in, captions dropped
# ---------------------------------------------------------------------------


def encode_captions(tokenizer, captions: str | Sequence[str], text_len: int = 32) -> torch.Tensor:
    """Captions -> LongTensor (B, text_len): ``[<bos>, ids…, <pad>, …]``.

    A caption longer than ``text_len - 1`` tokens is truncated, with a warning.
    Example (ids of "a red circle" = [97, 300, 412], text_len 6): [1, 97, 300, 412, 0, 0].
    """
    if isinstance(captions, str):
        captions = [captions]
    pad, bos = tokenizer.token_to_id("<pad>"), tokenizer.token_to_id("<bos>")
    if pad is None or bos is None:
        raise ValueError("the tokenizer has no <pad> or <bos> token; train it with special tokens "
                         "['<pad>', '<bos>', '<eos>']")
    rows, truncated = [], []
    for i, caption in enumerate(captions):
        ids = [bos] + list(tokenizer.encode(caption))
        if len(ids) > text_len:
            truncated.append(i)
            ids = ids[:text_len]
        rows.append(ids + [pad] * (text_len - len(ids)))
    if truncated:
        warnings.warn(f"{len(truncated)} caption(s) longer than text_len={text_len} tokens (with <bos>) "
                      f"were truncated (indices {truncated[:5]}{'…' if len(truncated) > 5 else ''}); "
                      "shorten them or raise text_len", stacklevel=2)
    return torch.tensor(rows, dtype=torch.long)


def empty_text(batch: int, config: TransformerConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The empty caption ``[<bos>, <pad>, …, <pad>]`` repeated: LongTensor (B, Lt)."""
    text = torch.full((batch, config.text_len), config.pad_id, dtype=torch.long, device=device)
    text[:, 0] = config.bos_id
    return text


def drop_captions(text: torch.Tensor, config: TransformerConfig, p: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each caption by the empty caption with probability p (default config.caption_drop_prob).

    Returns a new tensor; ``text`` is unchanged. Training on both teaches
    p(image | text) and p(image) in one model, which the condition scale needs.
    """
    p = config.caption_drop_prob if p is None else p
    drop = torch.rand(text.size(0), generator=generator, device=text.device) < p  # (B,)
    return torch.where(drop[:, None], empty_text(text.size(0), config, text.device), text)


# ---------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------


@dataclass
class LossOutput:
    loss: torch.Tensor  # what to backpropagate: the weighted sum
    text_loss: torch.Tensor  # mean cross-entropy per text target (nats), detached: for logging
    image_loss: torch.Tensor  # mean cross-entropy per image target (nats), detached: for logging


def next_token_loss(text_logits: torch.Tensor, image_logits: torch.Tensor, text: torch.Tensor,
                    codes: torch.Tensor, text_weight: float = 1 / 8) -> LossOutput:
    """The paper's objective from ``forward``'s logits::

        loss = w · CE_text + (1 - w) · CE_image,   w = 1/8

    text_logits  (B, Lt - 1, Vt): position i predicts text[:, i + 1] (pads included)
    image_logits (B, N, Vi):      position Lt - 1 + j predicts codes[:, j]
    Each cross-entropy is the mean over its own targets (B·(Lt-1) and B·N).
    """
    text_targets = text[:, 1:]  # (B, Lt - 1)
    text_loss = F.cross_entropy(text_logits.flatten(0, 1), text_targets.flatten())  # (B·(Lt-1), Vt) vs (B·(Lt-1),)
    image_loss = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())  # (B·N, Vi) vs (B·N,)
    loss = text_weight * text_loss + (1 - text_weight) * image_loss
    return LossOutput(loss, text_loss.detach(), image_loss.detach())


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    """FFN(x) = W₂ GELU(W₁ x): the position-wise feed-forward block."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TransformerConfig, mask: torch.Tensor):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = MaskedSelfAttention(config.d_model, config.n_heads, mask, config.dropout, config.attention)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


def attention_weights(attn: MaskedSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention probabilities of one layer, formed explicitly so that they can be looked at::

        A = softmax(Q Kᵀ / √hs + M),   M[q, k] = 0 if mask[q, k] else -∞

    ``x`` (B, T, d) is the layer's input (after the block's LayerNorm), T <= S.
    Returns (B, nh, T, T); row q sums to 1 over the keys its mask allows and is
    0 elsewhere, and ``attn(x)`` equals ``attn.proj(A V)`` with heads side by side.
    """
    B, T, d = x.shape
    hs = d // attn.n_heads
    q, k, _ = attn.qkv(x).split(d, dim=2)  # each (B, T, d)
    q = q.view(B, T, attn.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, attn.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    scores = scores.masked_fill(~attn.mask[:T, :T], float("-inf"))
    return scores.softmax(dim=-1)  # (B, nh, T, T)


class DalleTransformer(nn.Module):
    """Text and image tokens in one decoder-only transformer with DALL·E's sparse masks.

    ``forward(text, codes)`` returns next-token logits; ``loss(text, codes)``
    the paper's objective; ``sampling.sample(model, text)`` draws code grids.
    """

    def __init__(self, config: TransformerConfig | None = None):
        super().__init__()
        self.config = config = config or TransformerConfig()
        d, Lt, G = config.d_model, config.text_len, config.grid
        self.text_emb = nn.Embedding(config.text_vocab_size + Lt, d)  # ids, then one pad per position
        self.text_pos = nn.Embedding(Lt, d)
        self.image_emb = nn.Embedding(config.image_vocab_size, d)
        self.row_emb = nn.Embedding(G, d)
        self.col_emb = nn.Embedding(G, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, build_mask(kind, Lt, G, config.conv_kernel)) for kind in config.mask_kinds
        )
        self.ln_f = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, config.text_vocab_size)  # logits over text ids only
        self.image_head = nn.Linear(d, config.image_vocab_size)  # logits over image codes only
        self.register_buffer("positions", torch.arange(max(Lt, config.n_image)), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/√(2L)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- embeddings -------------------------------------------------------

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, Lt) ids -> (B, Lt, d). A pad at position i is looked up as id Vt + i (its own vector)."""
        Lt, Vt = self.config.text_len, self.config.text_vocab_size
        pos = self.positions[:Lt]  # (Lt,)
        ids = torch.where(text == self.config.pad_id, Vt + pos, text)  # (B, Lt)
        return self.text_emb(ids) + self.text_pos(pos)  # (B, Lt, d)

    def embed_image(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, n) codes with raster indices start … start + n - 1 -> (B, n, d): code + row + column."""
        j = self.positions[start:start + codes.size(1)]  # (n,) raster index of each code
        G = self.config.grid
        return self.image_emb(codes) + self.row_emb(j // G) + self.col_emb(j % G)  # (B, n, d)

    # --- the network ------------------------------------------------------

    def run_blocks(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Embeddings (B, T, d) -> final hidden states (B, T, d). With caches, x continues the cached positions."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x)

    def forward(self, text: torch.Tensor, codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits for ``[text | codes]``.

        text  (B, Lt) ids; codes (B, n) image codes, 0 <= n <= N (None = no codes).
        The input is [text | codes[:, :N-1]] (the last code is only a target).
        Returns text_logits (B, Lt - 1, Vt), position i predicting text[:, i + 1],
        and image_logits (B, min(n + 1, N), Vi), row j predicting code j.
        """
        Lt, N = self.config.text_len, self.config.n_image
        codes = text.new_zeros(text.size(0), 0) if codes is None else codes
        self._check_inputs(text, codes)
        x = torch.cat([self.embed_text(text), self.embed_image(codes[:, :N - 1])], dim=1)  # (B, T, d)
        h = self.run_blocks(x)  # (B, T, d)
        return self.text_head(h[:, :Lt - 1]), self.image_head(h[:, Lt - 1:])

    def loss(self, text: torch.Tensor, codes: torch.Tensor) -> LossOutput:
        """The training objective on full code grids: codes (B, N) or (B, G, G)."""
        codes = codes.flatten(1)  # (B, N)
        if codes.size(1) != self.config.n_image:
            raise ValueError(f"loss needs the full grid of {self.config.n_image} codes per image, got {codes.size(1)}")
        text_logits, image_logits = self(text, codes)
        return next_token_loss(text_logits, image_logits, text, codes, self.config.text_loss_weight)

    @torch.no_grad()
    def attention_maps(self, text: torch.Tensor, codes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's attention probabilities over ``[text | codes]``: L × (B, nh, T, T), T = Lt + n.

        Unlike ``forward``, all n <= N codes are positions here (the last one
        included), so query position Lt + i is the one that *holds* code i.
        """
        codes = text.new_zeros(text.size(0), 0) if codes is None else codes.flatten(1)  # (B, n)
        self._check_inputs(text, codes)
        x = self.drop(torch.cat([self.embed_text(text), self.embed_image(codes)], dim=1))  # (B, T, d)
        maps = []
        for block in self.blocks:
            maps.append(attention_weights(block.attn, block.ln_1(x)))  # (B, nh, T, T)
            x = block(x)
        return maps

    def new_caches(self, batch: int) -> list[KVCache]:
        """One empty KV cache per layer, on the model's device and dtype."""
        c, p = self.config, self.image_head.weight
        return [KVCache(batch, c.n_heads, c.seq_len, c.d_model // c.n_heads, p.device, p.dtype) for _ in self.blocks]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, text: torch.Tensor, codes: torch.Tensor) -> None:
        c = self.config
        if text.dim() != 2 or text.size(1) != c.text_len:
            raise ValueError(f"text must be (B, {c.text_len}) ids, got {tuple(text.shape)}; "
                             f"use encode_captions(tokenizer, captions, text_len={c.text_len})")
        if codes.dim() != 2 or codes.size(0) != text.size(0) or codes.size(1) > c.n_image:
            raise ValueError(f"codes must be (B, n) with B = {text.size(0)} and n <= {c.n_image}, "
                             f"got {tuple(codes.shape)}; flatten a (B, G, G) grid with codes.flatten(1)")
        if text.numel() and (text.min() < 0 or text.max() >= c.text_vocab_size):
            raise ValueError(f"text ids must lie in [0, {c.text_vocab_size}); set config.text_vocab_size "
                             "from tokenizer.vocab_size")
        if codes.numel() and (codes.min() < 0 or codes.max() >= c.image_vocab_size):
            raise ValueError(f"image codes must lie in [0, {c.image_vocab_size}); set config.image_vocab_size "
                             "from the dVAE's vocab_size")


# ---------------------------------------------------------------------------
# a trained transformer, and what it must fit
# ---------------------------------------------------------------------------

MODEL_TYPE = "transformer"


def load(model_dir: str | Path | None = None, device: str | None = None) -> DalleTransformer:
    """The transformer in ``model_dir`` (default: the shipped ``data/transformer``), in eval mode."""
    model_dir = model_dir if model_dir is not None else DATA_DIR / "transformer"
    return checkpoints.load_model(model_dir, DalleTransformer, TransformerConfig, MODEL_TYPE,
                                  device=device or get_device())


def compatibility_problems(config: TransformerConfig, tokenizer, dvae: DVAE) -> list[str]:
    """What stops a transformer with ``config`` from working with this tokenizer and dVAE ([] when nothing).

    Example: a config for a 512-code dVAE next to a 1024-code one ->
    ["the transformer predicts 512 image codes but the dVAE has 1024"].
    """
    problems = []
    if config.text_vocab_size != tokenizer.vocab_size:
        problems.append(f"the transformer reads {config.text_vocab_size} text ids but the tokenizer has "
                        f"{tokenizer.vocab_size}")
    if config.image_vocab_size != dvae.config.vocab_size:
        problems.append(f"the transformer predicts {config.image_vocab_size} image codes but the dVAE has "
                        f"{dvae.config.vocab_size}")
    if config.grid != dvae.config.grid_size:
        problems.append(f"the transformer draws a {config.grid}×{config.grid} grid but the dVAE encodes to "
                        f"{dvae.config.grid_size}×{dvae.config.grid_size}")
    return problems


def config_for(tokenizer, dvae: DVAE, preset: str = "cpu", **overrides) -> TransformerConfig:
    """``TransformerConfig.preset(preset)`` with the vocabularies and grid read off the tokenizer and the dVAE."""
    sizes = dict(text_vocab_size=tokenizer.vocab_size, image_vocab_size=dvae.config.vocab_size,
                 grid=dvae.config.grid_size)
    return TransformerConfig.preset(preset, **{**sizes, **overrides})
